"""Who is asking: the admin token, members' bearer tokens, constant-time checks.

A member token is `<member>~<secret>`: the member part says which stored hash to compare
against (member names never contain '~'), the secret is 32 random bytes. Only SHA-256 of the
whole token is stored: the secret has 256 bits of entropy, so a fast hash is enough (a slow KDF
protects low-entropy passwords, not random tokens). Every comparison goes through
`hmac.compare_digest` on equal-length digests, so timing says nothing about the token.
"""
import hashlib
import hmac
import os
import re
import secrets

from host_tools.api import store
from host_tools.api.errors import forbidden, unauthorized, unavailable

ADMIN = "admin"
MEMBER = "member"

_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
_MEMBER_TOKEN = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})~([A-Za-z0-9_-]{43})")
_TOKEN_FILE_BYTES_MAX = 1024


class Principal:
    """The authenticated caller: `kind` is ADMIN, MEMBER or None (anonymous)."""

    __slots__ = ("kind", "member")

    def __init__(self, kind=None, member=None):
        self.kind = kind
        self.member = member

    def __repr__(self):
        return f"Principal({self.kind}, {self.member})"


ANONYMOUS = Principal()


def hash_token(token):
    return hashlib.sha256(token.encode()).hexdigest()


def new_member_token(member):
    return f"{member}~{secrets.token_urlsafe(32)}"


def issue_member_token(db, member, at_ms):
    """Create (or rotate) a member's token; returns it — the only time it is ever visible."""
    token = new_member_token(member)
    store.set_token_hash(db, member, hash_token(token), at_ms)
    return token


def load_or_create_admin_token(path):
    """The admin token in `path` (created with a random token, mode 0600, if missing)."""
    if not os.path.exists(path):
        token = secrets.token_urlsafe(32)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            raise ValueError(f"cannot create admin token file {path}: {exc.strerror}") from None
        return token
    try:
        with open(path, "rb") as handle:
            data = handle.read(_TOKEN_FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ValueError(f"cannot read admin token file {path}: {exc.strerror}") from None
    token = data.decode("ascii", "replace").strip()
    if len(data) > _TOKEN_FILE_BYTES_MAX or not _TOKEN.fullmatch(token) or len(token) < 32:
        raise ValueError(f"admin token file {path} must hold one token of 32-256 URL-safe "
                         "characters")
    return token


def _bearer(header):
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


class Authenticator:
    """Turns an Authorization header into a `Principal`, reading member hashes from the DB.

    `member_tokens` ({member: token}) adds tokens the service loaded from elsewhere (for
    example a provisioning file); they are hashed at start and never kept in clear.
    """

    def __init__(self, admin_token=None, member_tokens=None):
        if admin_token is not None and (not isinstance(admin_token, str)
                                        or not _TOKEN.fullmatch(admin_token)
                                        or len(admin_token) < 32):
            raise ValueError("admin_token must be 32-256 URL-safe characters")
        self._admin_sha256 = None if admin_token is None else hash_token(admin_token)
        self._extra = {}
        if member_tokens is not None and not isinstance(member_tokens, dict):
            raise ValueError("member_tokens must map member names to tokens")
        for member, token in (member_tokens or {}).items():
            if not isinstance(token, str) or not _TOKEN.fullmatch(token):
                raise ValueError(f"member token of {member!r} must be 16-256 URL-safe characters")
            self._extra[member] = hash_token(token)

    @property
    def has_admin(self):
        return self._admin_sha256 is not None

    def identify(self, header, db):
        """ANONYMOUS without a header; 401 for a token that matches nobody."""
        token = _bearer(header)
        if token is None:
            return ANONYMOUS
        digest = hash_token(token)
        if self._admin_sha256 is not None and hmac.compare_digest(digest, self._admin_sha256):
            return Principal(ADMIN)
        match = _MEMBER_TOKEN.fullmatch(token)
        candidates = []
        if match:
            stored = store.token_hash(db, match.group(1))
            if stored is not None:
                candidates.append((match.group(1), stored))
        candidates.extend(self._extra.items())
        found = None
        for member, stored in candidates:
            # Compare against every candidate so the time does not depend on which matched.
            if hmac.compare_digest(digest, stored) and found is None:
                found = member
        if found is None:
            raise unauthorized("the bearer token is not valid")
        return Principal(MEMBER, found)

    def require(self, principal, level, member=None):
        """Enforce a route's level: 'public', 'admin', 'member' or 'member_or_admin'.

        `member` is the member the route is about (its path), when it has one.
        """
        if level == "public":
            return
        if level == "admin" and not self.has_admin:
            raise unavailable("not_configured", "this service has no admin token configured")
        if principal.kind is None:
            raise unauthorized("this endpoint needs a bearer token")
        if principal.kind == ADMIN:
            if level in ("admin", "member_or_admin"):
                return
            raise forbidden("this endpoint is for the member's own token")
        if level == "admin":
            raise forbidden("this endpoint needs the admin token")
        if member is not None and principal.member != member:
            raise forbidden("a member token gives access to that member's data only")
