# ECDSA over NIST P-256 with SHA-256, in pure Python that runs on MicroPython.
#
# Why pure Python: the ESP32 port has no ECDSA, and the device key must never
# leave the board, so signing happens here. Points use Jacobian coordinates
# (no inversion per addition); k*G uses a fixed-base comb table built once on
# first use; nonces are deterministic (RFC 6979), so a weak os.urandom at run
# time cannot leak the key through a repeated nonce.
#
# Public API: generate_private_key, public_key, sign, sign_digest, verify,
# verify_digest, verify_raw, encode_signature, decode_signature, decode_raw_signature,
# spki_encode, spki_decode, parse_public_key; sign_steps and verify_steps do the same work as
# generators that yield between slices (a task can let the event loop run in between; `finish`
# runs one to its end); comb_module_source writes the precomputed table for a ROMFS image. Malformed keys raise ValueError; a malformed or wrong
# signature makes verify() return False.
import hashlib

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

# Curve constants (SEC 2 / FIPS 186-4).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# k*G uses a comb: row j holds 2^(j*cols) * G, entry i the sum of the rows whose bit is set in
# i (2^rows - 1 affine points, 64 bytes each). Its size trades RAM (or flash) kept for garbage
# churned and time per signature (MicroPython 1.29, garbage per signature / table bytes):
# 6 rows 212 KB / 4 KB, 7 rows 179 KB / 8 KB, 8 rows 158 KB / 16 KB. Built on the board it
# has 7 rows and lives in the heap; a board flashed with a ROMFS image gets a precomputed
# table with more rows in energo/p256comb.mpy (comb_module_source), whose bytes constant the
# board reads in place from flash: no heap at all, and a faster signature.
_COMB_ROWS = const(7)  # the table built on the board
ROM_COMB_ROWS = 8  # the precomputed table
# Work between two yields of the stepwise generators (sign_steps, verify_steps): comb columns
# for k*G (~4.8 KB of garbage each on MicroPython), bits for k*Q (~2.4 KB each); building
# k*Q's table yields after each of its point operations. A slice's garbage bounds what a pass
# adds to the heap (MicroPython's WebAssembly port collects only between passes, and a pass may
# run two slices when other tasks fill the pause); each slice boundary costs its caller a pause
# (Meter.slice_pause_ms): ~34 per signature, ~170 per verification.
STEP_COLUMNS = 1
STEP_BITS = 2

# DER SubjectPublicKeyInfo prefix for an uncompressed P-256 key (id-ecPublicKey, prime256v1).
SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")

_comb = None  # (rows, cols, table): table is affine x||y of comb indices 1.., 64 bytes each
comb_problem = None  # why a precomputed table was refused (then one is built on the board)


# --- field and group arithmetic -------------------------------------------------------------
# A point is a tuple (X, Y, Z) in Jacobian coordinates, x = X/Z^2, y = Y/Z^3; Z == 0 is the
# point at infinity. Affine table points are (x, y) tuples.


def _double(pt):
    x1, y1, z1 = pt
    if not z1 or not y1:
        return (1, 1, 0)
    p = P
    # dbl-2001-b, a = -3; every operation on a 256-bit int makes a new ~80-byte object, so
    # 4*beta is kept (not 8*beta rebuilt) and Z3 = 2*Y1*Z1 (not (Y1+Z1)^2 - gamma - delta).
    delta = z1 * z1 % p
    gamma = y1 * y1 % p
    beta4 = (x1 * gamma % p) << 2
    alpha = 3 * (x1 - delta) * (x1 + delta) % p
    x3 = (alpha * alpha - (beta4 << 1)) % p
    y3 = (alpha * (beta4 - x3) - (gamma * gamma << 3)) % p
    return (x3, y3, (y1 * z1 << 1) % p)


def _add_affine(pt, x2, y2):
    """pt + (x2, y2) with (x2, y2) affine and not infinity."""
    x1, y1, z1 = pt
    if not z1:
        return (x2, y2, 1)
    p = P
    z1z1 = z1 * z1 % p
    h = (x2 * z1z1 - x1) % p
    r = (y2 * z1 * z1z1 - y1) % p
    if not h:
        if not r:
            return _double(pt)
        return (1, 1, 0)
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - y1 * hhh) % p
    return (x3, y3, z1 * h % p)


def _add(pt1, pt2):
    """Jacobian + Jacobian, complete for all inputs."""
    x1, y1, z1 = pt1
    x2, y2, z2 = pt2
    if not z1:
        return pt2
    if not z2:
        return pt1
    p = P
    z1z1 = z1 * z1 % p
    z2z2 = z2 * z2 % p
    u1 = x1 * z2z2 % p
    s1 = y1 * z2 * z2z2 % p
    h = (x2 * z1z1 - u1) % p
    r = (y2 * z1 * z1z1 - s1) % p
    if not h:
        if not r:
            return _double(pt1)
        return (1, 1, 0)
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - s1 * hhh) % p
    return (x3, y3, z1 * z2 * h % p)


def _inverse(a, m):
    # Fermat: m is prime. MicroPython has three-argument pow but not pow(a, -1, m).
    return pow(a, m - 2, m)


def _to_affine(pt):
    x, y, z = pt
    if not z:
        return None
    zi = _inverse(z, P)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def _batch_to_affine(points):
    """Affine form of many non-infinity points with one inversion (Montgomery's trick)."""
    count = len(points)
    prefix = [1] * (count + 1)
    for i in range(count):
        prefix[i + 1] = prefix[i] * points[i][2] % P
    inv = _inverse(prefix[count], P)
    out = [None] * count
    for i in range(count - 1, -1, -1):
        zi = inv * prefix[i] % P
        inv = inv * points[i][2] % P
        zi2 = zi * zi % P
        x, y, _ = points[i]
        out[i] = (_trim(x * zi2 % P), _trim(y * zi2 * zi % P))
    return out


def _trim(v):
    """v (0 <= v < 2^256) as a right-sized int. Why: on MicroPython a remainder keeps its
    dividend's digit array, two to three times what the value needs, and a table made here
    is kept across many slices."""
    return int.from_bytes(v.to_bytes(32, "big"), "big")


def _build_comb(rows):
    """The comb table for `rows` rows as bytes: affine x||y of entries 1 .. 2^rows - 1."""
    cols = (256 + rows - 1) // rows
    lines = [(GX, GY, 1)]
    for _ in range(rows - 1):
        pt = lines[-1]
        for _ in range(cols):
            pt = _double(pt)
        lines.append(pt)
    table = [None] * (1 << rows)
    table[0] = (1, 1, 0)
    for i in range(1, 1 << rows):
        low = i & -i
        j = 0
        while (1 << j) != low:
            j += 1
        table[i] = _add(table[i ^ low], lines[j])
    # Packed as x||y, 64 bytes per entry 1..: as tuples of ints the same points took ~4 times
    # the RAM (an int's digits are over-allocated after a modular reduction).
    packed = bytearray(64 * ((1 << rows) - 1))
    at = 0
    for x, y in _batch_to_affine(table[1:]):
        packed[at : at + 32] = _bytes32(x)
        packed[at + 32 : at + 64] = _bytes32(y)
        at += 64
    return bytes(packed)


def comb_module_source(rows=ROM_COMB_ROWS):
    """Python source of the module energo.p256comb: a precomputed comb table and its SHA-256.

    Written into a ROMFS image at flash time (the table is public: multiples of G). The hash
    lets the board refuse a table flash has damaged rather than sign with it.
    """
    if not 2 <= rows <= 10:
        raise ValueError("comb rows must be 2..10")
    table = _build_comb(rows)
    return ("# Generated by energo.p256.comb_module_source(): P-256 comb table, %d rows.\n"
            "ROWS = %d\nSHA256 = %r\nTABLE = %r\n"
            % (rows, rows, hashlib.sha256(table).digest(), table))


def use_comb(rows, table, sha256):
    """Sign with this precomputed comb table (see comb_module_source) from now on.

    False, with the reason in comb_problem, when it is not one: then the table in use stays.
    """
    global _comb, comb_problem
    if (not isinstance(rows, int) or not 2 <= rows <= 10
            or not isinstance(table, (bytes, bytearray, memoryview))
            or len(table) != 64 * ((1 << rows) - 1)
            or hashlib.sha256(table).digest() != sha256):
        comb_problem = "the precomputed comb table is damaged; one is built in RAM instead"
        return False
    _comb = (rows, (256 + rows - 1) // rows, memoryview(table))
    return True


def _load_comb():
    """The precomputed table when one is installed and intact, else one built here."""
    global _comb
    try:
        from energo import p256comb
    except ImportError:
        p256comb = None
    if p256comb is not None and use_comb(getattr(p256comb, "ROWS", None),
                                         getattr(p256comb, "TABLE", None),
                                         getattr(p256comb, "SHA256", None)):
        return
    _comb = (_COMB_ROWS, (256 + _COMB_ROWS - 1) // _COMB_ROWS,
             memoryview(_build_comb(_COMB_ROWS)))


def _mul_base_steps(k):
    """Generator computing k*G (0 < k < N) with the comb; yields every STEP_COLUMNS columns
    and returns the Jacobian point. A constant number of additions."""
    if _comb is None:
        _load_comb()
    rows, cols, comb = _comb
    mask = (1 << cols) - 1
    parts = [(k >> (j * cols)) & mask for j in range(rows)]
    acc = (1, 1, 0)
    dummy = (1, 1, 0)
    gx, gy = GX, GY
    step = STEP_COLUMNS
    for col in range(cols - 1, -1, -1):
        acc = _double(acc)
        idx = 0
        for j in range(rows - 1, -1, -1):
            idx = (idx << 1) | ((parts[j] >> col) & 1)
        if idx:
            at = (idx - 1) << 6
            acc = _add_affine(acc, _int(comb[at : at + 32]), _int(comb[at + 32 : at + 64]))
        else:
            # Same work for a zero digit, so timing says less about the key.
            dummy = _add_affine(dummy, gx, gy)
        if col % step == 0:
            yield
    return acc


def _wnaf(k):
    """Width-4 NAF of 0 <= k < 2^256, least significant digit first: a bytearray of digit + 8
    (digits 0 or odd in -7..7, nonzero ones at least 4 apart). Worked on k's bytes with small
    ints only: shifting k itself would make two new 256-bit ints per bit."""
    kb = k.to_bytes(33, "little")
    out = bytearray(b"\x08" * 257)
    i = 0
    carry = 0
    while i < 257:
        at = i >> 3
        nibble = ((kb[at] | (kb[at + 1] << 8 if at < 32 else 0)) >> (i & 7)) & 15
        x = nibble + carry
        if x & 1:
            d = x if x < 8 else x - 16
            carry = 1 if d < 0 else 0
            out[i] = d + 8
            i += 4  # x - d is 0 or 16: the next three digits are 0
        else:  # x even: bit i equals the carry, which moves on unchanged
            i += 1
    return out


def _mul_steps(pt, k):
    """Generator computing k*pt (0 <= k < N) for a variable affine point pt = (x, y): width-4
    NAF over the odd multiples pt, 3pt, 5pt, 7pt made affine (each addition then a mixed one,
    and the table ~0.4 KB). Yields after each step of the table and every STEP_BITS bits;
    returns the Jacobian point. For verification only: its timing depends on k, which is public
    there."""
    x1, y1 = pt
    twice = _double((x1, y1, 1))
    yield
    odd = [_add_affine(twice, x1, y1)]  # 3pt
    yield
    odd.append(_add(odd[0], twice))  # 5pt
    yield
    odd.append(_add(odd[1], twice))  # 7pt
    yield
    table = [pt] + _batch_to_affine(odd)
    twice = odd = None  # a generator keeps its locals to its end: ~1 KB of Jacobian points
    digits = _wnaf(k)
    yield
    acc = (1, 1, 0)
    p = P
    step = STEP_BITS
    for i in range(256, -1, -1):
        acc = _double(acc)
        d = digits[i] - 8
        if d > 0:
            x, y = table[d >> 1]
            acc = _add_affine(acc, x, y)
        elif d < 0:
            x, y = table[(-d) >> 1]
            acc = _add_affine(acc, x, p - y)
        if i % step == 0:
            yield
    return acc


def finish(steps):
    """Run a stepwise generator (sign_steps, verify_steps, ...) to its end; its result."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


async def sliced(steps, pause_ms=1):
    """Run a stepwise generator to its end from an asyncio task, pausing pause_ms before each
    slice so the other tasks run; its result. The pause is never 0: MicroPython's WebAssembly
    port would then run the next slice in the same loop pass, where no garbage is collected."""
    import asyncio

    while True:
        await asyncio.sleep_ms(pause_ms)
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _mul_base(k):
    """k*G for 0 < k < N, in one go."""
    return finish(_mul_base_steps(k))


# --- keys ------------------------------------------------------------------------------------


def _int(data):
    return int.from_bytes(data, "big")


def _bytes32(value):
    return value.to_bytes(32, "big")


def _on_curve(x, y):
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


def generate_private_key(urandom=None):
    """32 random bytes, rejection-sampled into [1, N-1]."""
    if urandom is None:
        import os

        urandom = os.urandom
    while True:
        candidate = urandom(32)
        if len(candidate) != 32:
            raise ValueError("random source returned %d bytes, want 32" % len(candidate))
        d = _int(candidate)
        if 0 < d < N:
            return candidate


def _private_scalar(priv):
    if not isinstance(priv, (bytes, bytearray)) or len(priv) != 32:
        raise ValueError("private key must be 32 bytes")
    d = _int(priv)
    if not 0 < d < N:
        raise ValueError("private key out of range")
    return d


def public_key(priv):
    """The 65-byte uncompressed public key 04||X||Y of a private key."""
    x, y = _to_affine(_mul_base(_private_scalar(priv)))
    return b"\x04" + _bytes32(x) + _bytes32(y)


def parse_public_key(pub):
    """(x, y) of a SEC1 public key (65-byte uncompressed or 33-byte compressed), checked."""
    if not isinstance(pub, (bytes, bytearray)):
        raise ValueError("public key must be bytes")
    if len(pub) == 65 and pub[0] == 4:
        x = _int(pub[1:33])
        y = _int(pub[33:])
        if x >= P or y >= P:
            raise ValueError("public key coordinate out of range")
        if not _on_curve(x, y):
            raise ValueError("public key is not on the P-256 curve")
        return x, y
    if len(pub) == 33 and pub[0] in (2, 3):
        x = _int(pub[1:])
        if x >= P:
            raise ValueError("public key coordinate out of range")
        rhs = (x * x * x - 3 * x + B) % P
        y = pow(rhs, (P + 1) // 4, P)  # P = 3 mod 4
        if y * y % P != rhs:
            raise ValueError("public key is not on the P-256 curve")
        if (y & 1) != (pub[0] & 1):
            y = P - y
        return x, y
    raise ValueError("public key must be 65 bytes (04||X||Y) or 33 bytes compressed")


def spki_encode(pub):
    """DER SubjectPublicKeyInfo of a public key (the form OCMF tools display)."""
    x, y = parse_public_key(pub)
    return SPKI_PREFIX + b"\x04" + _bytes32(x) + _bytes32(y)


def spki_decode(der):
    """The 65-byte public key inside a P-256 SubjectPublicKeyInfo; strict DER."""
    if not isinstance(der, (bytes, bytearray)):
        raise ValueError("SPKI must be bytes")
    if len(der) == 91 and der[:26] == SPKI_PREFIX:
        point = bytes(der[26:])
    elif len(der) == 59 and der[:26] == _SPKI_PREFIX_COMPRESSED:
        point = bytes(der[26:])
    else:
        raise ValueError("not a DER SubjectPublicKeyInfo for a P-256 key")
    x, y = parse_public_key(point)
    return b"\x04" + _bytes32(x) + _bytes32(y)


_SPKI_PREFIX_COMPRESSED = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")


# --- signatures ------------------------------------------------------------------------------


def _der_int(value):
    body = value.to_bytes(33, "big")
    i = 0
    while i < 32 and body[i] == 0 and body[i + 1] < 0x80:
        i += 1
    body = body[i:]
    return b"\x02" + bytes([len(body)]) + body


def encode_signature(r, s):
    """DER SEQUENCE { INTEGER r, INTEGER s }."""
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _read_der_int(der, pos, end):
    if pos + 2 > end or der[pos] != 0x02:
        raise ValueError("expected INTEGER")
    length = der[pos + 1]
    pos += 2
    if length == 0 or length > 33 or pos + length > end:
        raise ValueError("bad INTEGER length")
    if der[pos] & 0x80:
        raise ValueError("negative INTEGER")
    if length > 1 and der[pos] == 0 and not der[pos + 1] & 0x80:
        raise ValueError("INTEGER not minimally encoded")
    return _int(der[pos : pos + length]), pos + length


def decode_signature(der):
    """(r, s) from a strict-DER ECDSA signature; BER forms and trailing bytes are refused."""
    if not isinstance(der, (bytes, bytearray)):
        raise ValueError("signature must be bytes")
    if len(der) < 8 or der[0] != 0x30:
        raise ValueError("signature is not a DER SEQUENCE")
    if der[1] & 0x80 or der[1] != len(der) - 2:
        raise ValueError("bad SEQUENCE length")
    end = len(der)
    r, pos = _read_der_int(der, 2, end)
    s, pos = _read_der_int(der, pos, end)
    if pos != end:
        raise ValueError("trailing bytes after signature")
    return r, s


def hmac_sha256(key, msg, *more):
    """HMAC-SHA256 (RFC 2104) of msg and any further parts, for keys of at most 64 bytes.

    MicroPython has no hmac module. The pads are one bytearray xored in place and the parts are
    fed to the hash one by one: RFC 6979 runs this a dozen times per signature, and joining
    bytes or building lists each time was most of the garbage outside the point arithmetic.
    """
    if len(key) > 64:
        raise ValueError("HMAC key longer than the SHA-256 block")
    pad = bytearray(64)
    pad[: len(key)] = key
    for j in range(64):
        pad[j] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    for part in more:
        inner.update(part)
    digest = inner.digest()
    for j in range(64):
        pad[j] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(digest)
    return outer.digest()


def _nonces(d, digest):
    """RFC 6979 §3.2 candidate nonces k for private scalar d and a 32-byte hash."""
    x = _bytes32(d)
    h = _bytes32(_int(digest) % N)
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = hmac_sha256(k, v, b"\x00", x, h)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v, b"\x01", x, h)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        candidate = _int(v)
        if 0 < candidate < N:
            yield candidate
        k = hmac_sha256(k, v, b"\x00")
        v = hmac_sha256(k, v)


def sign_steps(priv, digest):
    """Generator for sign_digest in slices: it yields between them (the caller may run other
    work there, e.g. `await asyncio.sleep_ms(1)`) and returns the DER signature."""
    d = _private_scalar(priv)
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes")
    e = _int(digest)
    for k in _nonces(d, digest):
        yield
        x, _ = _to_affine((yield from _mul_base_steps(k)))
        r = x % N
        if not r:
            continue
        s = _inverse(k, N) * (e + r * d) % N
        if s:
            return encode_signature(r, s)


def sign_digest(priv, digest):
    """DER signature of a 32-byte SHA-256 digest, deterministic per RFC 6979."""
    return finish(sign_steps(priv, digest))


def sign(priv, msg):
    """DER ECDSA-SHA256 signature of msg (bytes)."""
    return sign_digest(priv, hashlib.sha256(msg).digest())


def decode_raw_signature(sig):
    """(r, s) from a raw IEEE P1363 signature r||s of exactly 64 bytes."""
    if not isinstance(sig, (bytes, bytearray)) or len(sig) != 64:
        raise ValueError("raw signature must be 64 bytes r||s")
    return _int(sig[:32]), _int(sig[32:])


def _verify_rs_steps(pub, digest, r, s):
    qx, qy = parse_public_key(pub)
    if not (0 < r < N and 0 < s < N) or len(digest) != 32:
        return False
    w = _inverse(s, N)
    u1 = _int(digest) * w % N
    u2 = r * w % N
    yield
    acc = yield from _mul_steps((qx, qy), u2)
    if u1:
        acc = _add(acc, (yield from _mul_base_steps(u1)))
    affine = _to_affine(acc)
    if affine is None:
        return False
    return affine[0] % N == r


def verify_steps(pub, msg, sig_der):
    """Generator for verify() in slices (see sign_steps); returns True or False."""
    digest = hashlib.sha256(msg).digest()
    try:
        r, s = decode_signature(sig_der)
    except ValueError:
        parse_public_key(pub)  # a bad key is still an error, not a mere "invalid"
        return False
    return (yield from _verify_rs_steps(pub, digest, r, s))


def verify_digest(pub, digest, sig_der):
    """True when sig_der is a valid strict-DER signature of the 32-byte digest under pub."""
    try:
        r, s = decode_signature(sig_der)
    except ValueError:
        parse_public_key(pub)  # a bad key is still an error, not a mere "invalid"
        return False
    return finish(_verify_rs_steps(pub, digest, r, s))


def verify(pub, msg, sig_der):
    """True when sig_der is a valid strict-DER ECDSA-SHA256 signature of msg under pub."""
    return finish(verify_steps(pub, msg, sig_der))


def verify_raw(pub, msg, sig):
    """True when sig is a valid raw (P1363) r||s ECDSA-SHA256 signature of msg under pub."""
    try:
        r, s = decode_raw_signature(sig)
    except ValueError:
        parse_public_key(pub)
        return False
    return finish(_verify_rs_steps(pub, hashlib.sha256(msg).digest(), r, s))
