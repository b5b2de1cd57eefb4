"""Broker credentials and access rules, shared by every broker Energo runs with.

Why one module: the embedded amqtt broker, the generated Mosquitto files and the
settlement service's HTTP enrollment must agree on three things, so each is
defined here once:

- the broker secret (32 random bytes in a file only its owner can read);
- passwords derived from it: ``derive_password(secret, username)``, so the
  broker never stores a per-device password and enrollment can hand one out
  without a round trip to the broker;
- the access rules, as data (`Rule`): a device may publish only under its own
  id, the "settlement" user reads every device's uplink and writes the
  downlink.  `permits` evaluates them for the embedded broker;
  `render_acl` writes the same rules in Mosquitto's ``acl_file`` syntax.

Untrusted text (usernames from CONNECT, topics from PUBLISH/SUBSCRIBE, ids read
back from the registry) is checked here before it reaches a rule or a file, so
a crafted id can never widen a rule or inject a line into a broker config.
"""
import base64
import dataclasses
import hashlib
import hmac
import os
import re
import stat
import tempfile

SETTLEMENT_USER = "settlement"
TOPIC_ROOT = "energo/v1"
SECRET_SIZE = 32
PASSWORD_LENGTH = 32
# A device uplink / downlink topic is <root>/<community>/<device>/<suffix>.
DEVICE_PUBLISH_SUFFIXES = ("rec", "hello", "state", "ev")
DEVICE_SUBSCRIBE_SUFFIXES = ("ack", "ev/reply")
PRICE_SUFFIX = "price"
# Roles that speak MQTT; vehicles talk to chargers, never to the broker.
BROKER_ROLES = ("meter", "charger")

# Mosquitto 2.x password_file entries: user:$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>.
MOSQUITTO_HASH_ID = "7"
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_SIZE = 12
MOSQUITTO_HASH_SIZE = 64

_DEVICE_ID = re.compile(r"^[mc]-[0-9a-f]{12}$")
_COMMUNITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SHARE_GROUP = re.compile(r"^[^/+#]{1,64}$")
_TOPIC_LENGTH_MAX = 256
_SECRET_FILE_SIZE_MAX = 4096


class BrokerAuthError(ValueError):
    """Bad secret file, community name, username or topic; nothing was changed."""

    code = "broker_auth"

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


# --- the secret and derived passwords ---------------------------------------------------------

def load_or_create_secret(path):
    """Return the broker secret at `path`, creating it (32 random bytes, mode 0600) if missing.

    Creation is atomic (written to a temporary file, then hard-linked into
    place), so two processes starting at once end up with the same secret
    instead of one overwriting the other's.  An existing file readable by
    group or others is refused: every broker password can be derived from it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".secret-", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, os.urandom(SECRET_SIZE))
            os.fsync(fd)
            os.close(fd)
            fd = None
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won the race: use its secret
        finally:
            if fd is not None:
                os.close(fd)
            os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path):
    try:
        info = os.stat(path)
    except OSError as exc:
        raise BrokerAuthError(f"cannot read broker secret {path}: {exc.strerror}", "bad_secret") from None
    if not stat.S_ISREG(info.st_mode):
        raise BrokerAuthError(f"broker secret {path} is not a regular file", "bad_secret")
    if info.st_mode & 0o077:
        raise BrokerAuthError(
            f"broker secret {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "run chmod 600 on it", "bad_secret")
    if info.st_size > _SECRET_FILE_SIZE_MAX:
        raise BrokerAuthError(f"broker secret {path} is too large to be a secret", "bad_secret")
    with open(path, "rb") as handle:
        secret = handle.read(_SECRET_FILE_SIZE_MAX + 1)
    if len(secret) != SECRET_SIZE:
        raise BrokerAuthError(
            f"broker secret {path} must hold exactly {SECRET_SIZE} bytes, found {len(secret)}",
            "bad_secret")
    return secret


def derive_password(secret, username):
    """The broker password of `username`: base64url(HMAC-SHA256(secret, username)), 32 chars.

    32 base64url characters are exactly the first 24 bytes (192 bits) of the
    MAC, so there is no padding to strip and the password is safe in URLs,
    config files and JSON.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_SIZE:
        raise BrokerAuthError(f"broker secret must be {SECRET_SIZE} bytes", "bad_secret")
    if not isinstance(username, str) or not username:
        raise BrokerAuthError("username must be a non-empty string", "bad_username")
    mac = hmac.new(bytes(secret), username.encode("utf-8"), hashlib.sha256).digest()
    password = base64.urlsafe_b64encode(mac[:24]).decode("ascii")
    assert len(password) == PASSWORD_LENGTH  # 24 bytes encode to 32 chars, no '='
    return password


def check_password(secret, username, password):
    """True when `password` is the derived password of `username` (constant-time compare)."""
    if not isinstance(password, str) or len(password) != PASSWORD_LENGTH:
        return False
    return hmac.compare_digest(derive_password(secret, username), password)


# --- names ------------------------------------------------------------------------------------

def validate_community(name):
    """A community name is one topic level: 1-63 of letters, digits, '.', '_' or '-'."""
    if not isinstance(name, str) or not _COMMUNITY.fullmatch(name):
        raise BrokerAuthError(
            f"invalid community name {name!r}: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit", "bad_community")
    return name


def is_device_id(username):
    """True for a meter or charger id ('m-'/'c-' + 12 lower-case hex digits)."""
    return isinstance(username, str) and bool(_DEVICE_ID.fullmatch(username))


def validate_device(device_id, role):
    """Check a (device id, role) pair read from the registry before it gets credentials."""
    if role not in BROKER_ROLES:
        raise BrokerAuthError(f"role {role!r} has no broker access", "bad_role")
    if not is_device_id(device_id) or device_id[0] != role[0]:
        raise BrokerAuthError(f"invalid {role} id {device_id!r}", "bad_device_id")
    return device_id


# --- access rules as data ---------------------------------------------------------------------

READ, WRITE = "read", "write"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One grant: `access` ("read" = subscribe and receive, "write" = publish) on `pattern`.

    `pattern` is a topic filter that may contain '+' and '#' and the
    placeholder '%u', replaced by the client's username (as in Mosquitto's
    ``pattern`` lines).  `user` is the one username the rule is for, or None
    for every device.
    """

    access: str
    pattern: str
    user: str | None = None


def rules(community):
    """Every grant for `community`: per-device patterns first, then the settlement user's."""
    validate_community(community)
    base = f"{TOPIC_ROOT}/{community}"
    grants = [Rule(WRITE, f"{base}/%u/{suffix}") for suffix in DEVICE_PUBLISH_SUFFIXES]
    grants += [Rule(READ, f"{base}/%u/{suffix}") for suffix in DEVICE_SUBSCRIBE_SUFFIXES]
    grants.append(Rule(READ, f"{base}/{PRICE_SUFFIX}"))
    grants += [Rule(READ, f"{base}/+/{suffix}", SETTLEMENT_USER)
               for suffix in DEVICE_PUBLISH_SUFFIXES]
    grants += [Rule(WRITE, f"{base}/+/{suffix}", SETTLEMENT_USER)
               for suffix in DEVICE_SUBSCRIBE_SUFFIXES]
    grants.append(Rule(WRITE, f"{base}/{PRICE_SUFFIX}", SETTLEMENT_USER))
    return tuple(grants)


def strip_shared(topic_filter):
    """`$share/<group>/<filter>` -> `<filter>`; other filters unchanged.

    Shared subscriptions are checked against the filter they share, so the
    settlement workers' ``$share/ingest/...`` needs no rules of its own.
    """
    if not topic_filter.startswith("$share/"):
        return topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) != 3 or not _SHARE_GROUP.fullmatch(parts[1]) or not parts[2]:
        raise BrokerAuthError(f"malformed shared subscription {topic_filter!r}", "bad_topic")
    return parts[2]


def _covered(topic_filter, pattern):
    """True when every topic `topic_filter` can match is matched by `pattern`."""
    wanted = topic_filter.split("/")
    allowed = pattern.split("/")
    for index, level in enumerate(allowed):
        if level == "#":
            return True
        if index >= len(wanted):
            return False
        if level == "+":
            if wanted[index] == "#":
                return False
            continue
        if wanted[index] != level:
            return False
    return len(wanted) == len(allowed)


def permits(grants, username, topic, access):
    """May `username` (a device id or the settlement user) `access` `topic`?

    For READ, `topic` may be a subscription filter (with wildcards or a
    `$share/` prefix); the filter is allowed only if a rule covers all of it.
    For WRITE, `topic` must be a plain topic.  Unknown users get nothing.
    """
    if access not in (READ, WRITE):
        raise BrokerAuthError(f"unknown access {access!r}", "bad_access")
    if not isinstance(topic, str) or not topic or len(topic) > _TOPIC_LENGTH_MAX:
        return False
    if username != SETTLEMENT_USER and not is_device_id(username):
        return False
    try:
        topic = strip_shared(topic) if access == READ else topic
    except BrokerAuthError:
        return False
    if access == WRITE and ("+" in topic or "#" in topic or topic.startswith("$")):
        return False
    for grant in grants:
        if grant.access != access:
            continue
        if grant.user is not None and grant.user != username:
            continue
        if grant.user is None and username == SETTLEMENT_USER:
            continue  # device patterns are for devices; the service has its own grants
        if _covered(topic, grant.pattern.replace("%u", username)):
            return True
    return False


# --- Mosquitto files --------------------------------------------------------------------------

def mosquitto_hash(password, salt=None, iterations=MOSQUITTO_ITERATIONS):
    """A Mosquitto 2.x password_file hash: ``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``."""
    salt = os.urandom(MOSQUITTO_SALT_SIZE) if salt is None else salt
    if len(salt) != MOSQUITTO_SALT_SIZE:
        raise BrokerAuthError(f"salt must be {MOSQUITTO_SALT_SIZE} bytes", "bad_salt")
    derived = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "${}${}${}${}".format(MOSQUITTO_HASH_ID, iterations,
                                 base64.b64encode(salt).decode("ascii"),
                                 base64.b64encode(derived).decode("ascii"))


def mosquitto_hash_matches(entry_hash, password):
    """Check `password` against a ``$7$`` entry (what Mosquitto does at CONNECT)."""
    parts = entry_hash.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != MOSQUITTO_HASH_ID or not parts[2].isdigit():
        raise BrokerAuthError("not a Mosquitto $7$ password hash", "bad_hash")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        raise BrokerAuthError("Mosquitto password hash is not base64", "bad_hash") from None
    derived = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]))
    return hmac.compare_digest(derived, expected)


def render_passwd(secret, usernames):
    """The password_file text: one hashed entry per username, sorted for stable diffs."""
    lines = []
    for username in sorted(set(usernames)):
        if username != SETTLEMENT_USER and not is_device_id(username):
            raise BrokerAuthError(f"refusing to write credentials for {username!r}",
                                  "bad_username")
        lines.append(f"{username}:{mosquitto_hash(derive_password(secret, username))}\n")
    return "".join(lines)


def render_acl(community):
    """The acl_file text for `community`, from the same `rules` the embedded broker enforces.

    Device grants become ``pattern`` lines (``%u`` is the username, which is
    the device id); the settlement user's grants follow its ``user`` line.
    No ``topic`` line precedes a ``user`` line, so anonymous clients get nothing.
    """
    grants = rules(community)
    out = [f"# Energo broker ACL for community {community}; generated by `energo broker`.\n",
           "# Devices: publish only under their own id (%u is the MQTT username = device id).\n"]
    for grant in grants:
        if grant.user is None:
            out.append(f"pattern {grant.access} {grant.pattern}\n")
    users = sorted({grant.user for grant in grants if grant.user is not None})
    for user in users:
        out.append(f"\nuser {user}\n")
        for grant in grants:
            if grant.user == user:
                out.append(f"topic {grant.access} {grant.pattern}\n")
    return "".join(out)


def render_conf(directory, port, bind=None):
    """mosquitto.conf pointing at the passwd and acl files in `directory` (absolute paths)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BrokerAuthError(f"port must be 1-65535, got {port!r}", "bad_port")
    if bind is not None and (not bind or any(c.isspace() for c in bind)):
        raise BrokerAuthError(f"invalid bind address {bind!r}", "bad_bind")
    directory = os.path.abspath(directory)
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    return (
        "# Mosquitto 2.x config for an Energo community; generated by `energo broker`.\n"
        "# Regenerate after enrolling devices, then reload Mosquitto (SIGHUP re-reads\n"
        "# the password and ACL files).\n"
        "per_listener_settings false\n"
        f"{listener}\n"
        "allow_anonymous false\n"
        f"password_file {os.path.join(directory, 'passwd')}\n"
        f"acl_file {os.path.join(directory, 'acl')}\n"
        "persistence true\n"
        f"persistence_location {os.path.join(directory, 'data')}\n"
        "max_inflight_messages 20\n"
        "max_queued_messages 10000\n"
        "max_packet_size 65536\n"
    )


def write_mosquitto_config(directory, community, secret, device_ids, port=1883, bind=None):
    """Write mosquitto.conf, passwd and acl into `directory`; return their paths.

    Everything is rendered and validated before the first file is touched,
    and each file is replaced atomically, so a bad id leaves the old
    configuration in place.  `device_ids` are the enrolled meters and chargers.
    """
    validate_community(community)
    for device_id in device_ids:
        if not is_device_id(device_id):
            raise BrokerAuthError(f"invalid device id {device_id!r}", "bad_device_id")
    texts = {
        "passwd": render_passwd(secret, [SETTLEMENT_USER, *device_ids]),
        "acl": render_acl(community),
        "mosquitto.conf": render_conf(directory, port, bind),
    }
    data_dir = os.path.join(directory, "data")
    os.makedirs(data_dir, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        paths[name] = os.path.join(directory, name)
        _write_atomic(paths[name], text, 0o640 if name == "passwd" else 0o644)
    _hand_to_daemon_user(paths["passwd"], data_dir)
    return paths


def _hand_to_daemon_user(passwd_path, data_dir):
    """Let a root-started Mosquitto read the hashes after it drops to its `mosquitto` user.

    Mosquitto started as root switches to the `mosquitto` user before it opens
    the password file and the persistence directory; without this the broker
    refuses to start.  Run as any other user, the files stay that user's.
    """
    if os.geteuid() != 0:
        return
    import pwd

    try:
        daemon = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    os.chown(passwd_path, 0, daemon.pw_gid)
    os.chown(data_dir, daemon.pw_uid, daemon.pw_gid)


def _write_atomic(path, text, mode):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
