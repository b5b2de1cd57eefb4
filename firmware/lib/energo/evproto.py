# Charge-and-pay messages (docs/charging-protocol.md): signed message lines, link frames and
# the session arithmetic, shared by the charger, the simulated vehicle and the settlement
# service so that all three accept and refuse exactly the same bytes.
#
# Why strict: every field arrives from a party that may lie or be broken. A message is checked
# field by field against its type's table (type, range, hex length) before anyone acts on it,
# and every refusal is one ProtocolError whose `reason` is a code of the protocol.
# Bodies are written in the table's key order, never from dict order (MicroPython's dicts are
# not ordered), so the same body gives the same bytes and the same signature on every side.
import binascii
import hashlib

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo.jsonexact import JsonError, Number, dump_string

MESSAGE_MAX = const(4096)
LINE_MAX = const(6144)
DETAIL_MAX = const(200)
VEHICLES_MAX = const(64)
RECORDS_MAX = const(2)

REASONS = ("bad-signature", "unknown-vehicle", "unknown-station", "wrong-station",
           "nonce-mismatch", "nonce-reused", "expired", "stale-price", "insufficient-funds",
           "malformed", "oversized", "limit-exceeded", "bad-records")

_MONEY_MAX = 10 ** 15  # µ; a billion units of the community's money
_WH_MAX = 10 ** 10  # 10 GWh: far above any register a session can move
_PRICE_MAX = 10 ** 9  # µ/kWh
_TIME_MAX = 1 << 40  # Unix seconds
_AMPS_MAX = 1000


_TOPS = {"money": _MONEY_MAX, "wh": _WH_MAX, "price": _PRICE_MAX, "time": _TIME_MAX,
         "amps": _AMPS_MAX, "current": _AMPS_MAX, "seq": _TIME_MAX}


class ProtocolError(ValueError):
    """A message or frame refused; `reason` is one of REASONS, `detail` says what was wrong."""

    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail


# --- field kinds --------------------------------------------------------------------------------

def _lowhex(value, length):
    if not isinstance(value, str) or len(value) != length:
        return False
    for ch in value:
        if ch not in "0123456789abcdef":
            return False
    return True


def _uint(value, top):
    if isinstance(value, Number):
        text = value.text
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > 16:
            return None
        value = int(text)
    elif isinstance(value, bool) or not isinstance(value, int):
        return None
    if 0 <= value <= top:
        return value
    return None


def _check(kind, value, where):
    """The checked value of one field (ints converted from exact JSON numbers)."""
    bad = None
    top = _TOPS.get(kind)
    if top is not None:
        out = _uint(value, top)
        if out is None:
            bad = "must be an integer 0..%d" % top
        elif kind == "amps" and out == 0:
            bad = "must be at least 1 A"
        value = out
    elif kind == "bool":
        if value is not True and value is not False:
            bad = "must be true or false"
    elif kind == "station" or kind == "vehicle":
        prefix = "c-" if kind == "station" else "v-"
        if not (isinstance(value, str) and value[:2] == prefix and _lowhex(value[2:], 12)):
            bad = "must be a %s id %s + 12 hex digits" % (kind, prefix)
    elif kind == "nonce":
        if not _lowhex(value, 32):
            bad = "must be 32 lower-case hex digits"
    elif kind == "hash":
        if not _lowhex(value, 64):
            bad = "must be 64 lower-case hex digits"
    elif kind == "spki":
        if not _lowhex(value, 182):
            bad = "must be a P-256 SubjectPublicKeyInfo in 182 lower-case hex digits"
        else:
            try:
                public_key(value)
            except ProtocolError:
                bad = "is not a valid P-256 key"
    elif kind == "member":
        if not _name(value, 63, "_.-"):
            bad = "must be a member name (letters, digits, _ . -, at most 63)"
    elif kind == "community":
        if not _name(value, 32, "_-"):
            bad = "must be a community name (letters, digits, _ -, at most 32)"
    elif kind == "reason":
        if value not in REASONS:
            bad = "must be a reason code"
    elif kind == "text":
        if not isinstance(value, str) or len(value) > DETAIL_MAX:
            bad = "must be text of at most %d characters" % DETAIL_MAX
    elif kind == "signed":
        if not isinstance(value, str) or not 0 < len(value) <= MESSAGE_MAX:
            bad = "must be a signed message"
    elif kind == "signed?":
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MESSAGE_MAX):
            bad = "must be a signed message or null"
    elif kind == "record":
        if not isinstance(value, str) or not value.startswith("OCMF|"):
            bad = "must be an OCMF record"
        elif len(value) > LINE_MAX:
            raise ProtocolError("oversized", "%s is longer than a link line" % where)
    elif kind == "vehicles":
        value = _check_vehicles(value, where)
    else:
        bad = "has an unknown kind"
    if bad is not None:
        raise ProtocolError("malformed", "%s %s" % (where, bad))
    return value


def _name(value, top, extra):
    if not isinstance(value, str) or not 0 < len(value) <= top:
        return False
    for i, ch in enumerate(value):
        if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9"):
            if i == 0 or ch not in extra:
                return False
    return True


def _check_vehicles(value, where):
    if not isinstance(value, list) or len(value) > VEHICLES_MAX:
        raise ProtocolError("malformed", "%s must be a list of at most %d" % (where, VEHICLES_MAX))
    out = []
    seen = {}
    for i, entry in enumerate(value):
        out.append(_check_fields(entry, _VEHICLE_ENTRY, "%s[%d]" % (where, i)))
        if out[-1]["id"] in seen:
            raise ProtocolError("malformed", "%s lists %s twice" % (where, out[-1]["id"]))
        seen[out[-1]["id"]] = True
    return out


def _fields(spec):
    """The [name, kind] pairs of a table entry (MESSAGES, _VEHICLE_ENTRY, evframe.FRAMES),
    which is a string of "name:kind" words.

    Why strings: a table of tuples is built in the heap when its module loads, ~16 bytes a
    pair plus a str object for each name not interned already (these three tables: ~1.5 KB
    of a charger's RAM for as long as it runs); a string constant stays in flash on a ROMFS or
    frozen board. The pairs made here are the check's garbage, a few hundred bytes.
    """
    for word in spec.split():
        yield word.split(":")


def _check_fields(obj, spec, where):
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "%s must be an object" % where)
    out = {}
    for name, kind in _fields(spec):
        if name not in obj:
            raise ProtocolError("malformed", "%s lacks %r" % (where, name))
        out[name] = _check(kind, obj[name], "%s.%s" % (where, name))
    if len(obj) != len(out):
        for name in obj:
            if name not in out:
                raise ProtocolError("malformed", "%s has unknown field %r" % (where, name))
    return out


_VEHICLE_ENTRY = "id:vehicle pub:spki limit:money"

# Signed message types: fields after "t" and "v", in the order they are written, as
# "name:kind" words (see _fields).
MESSAGES = {
    "cert": "community:community station:station pub:spki owner:member fee:price exp:time",
    "allow": "community:community seq:seq exp:time vehicles:vehicles",
    "offer": "station:station nonce:nonce price:price fee:price imax:amps at:time",
    "auth": "vehicle:vehicle pub:spki station:station nonce:nonce emax:wh cmax:money exp:time",
    "grant": "session:nonce station:station vehicle:vehicle price:price fee:price hold:money "
             "emax:wh",
    "reject": "session:nonce station:station reason:reason detail:text",
    "meter": "session:nonce vehicle:vehicle station:station record:hash wh:wh",
    "receipt": "session:nonce station:station station_pub:spki owner:member vehicle:vehicle "
               "vehicle_pub:spki wh:wh price:price fee:price energy_micro:money fee_micro:money "
               "total_micro:money hold_micro:money released_micro:money begin:hash end:hash "
               "countersigned:bool offline:bool at:time",
}


def _consistent(body):
    """Cross-field rules: an id must be the id its key derives (nobody can claim another's)."""
    t = body["t"]
    pairs = ()
    if t == "cert":
        pairs = (("station", "pub", "charger"),)
    elif t == "auth":
        pairs = (("vehicle", "pub", "vehicle"),)
    elif t == "receipt":
        pairs = (("station", "station_pub", "charger"), ("vehicle", "vehicle_pub", "vehicle"))
    elif t == "allow":
        for entry in body["vehicles"]:
            if _id_of_checked(entry["pub"], "vehicle") != entry["id"]:
                raise ProtocolError("malformed", "allow: %s is not the id of its key" % entry["id"])
    for id_field, key_field, role in pairs:
        # _check_fields has checked the key (prefix, hex, point on the curve): its id comes
        # from the point's bytes without a second curve check (~1.7 KB of garbage each).
        if _id_of_checked(body[key_field], role) != body[id_field]:
            raise ProtocolError("malformed", "%s: %s is not the id of %s" % (t, id_field, key_field))
    if t == "receipt":
        got = cost(body["wh"], body["price"], body["fee"], body["hold_micro"])
        if got != (body["energy_micro"], body["fee_micro"], body["total_micro"]) or \
                body["released_micro"] != body["hold_micro"] - body["total_micro"]:
            raise ProtocolError("malformed", "receipt: amounts do not follow from wh, price, fee")


# --- keys and ids -------------------------------------------------------------------------------

def public_key(key):
    """The 65-byte public key from raw bytes, DER SPKI bytes or SPKI hex; ProtocolError if none."""
    from energo import p256

    try:
        if isinstance(key, str):
            key = binascii.unhexlify(key)
        if len(key) == 65:
            p256.parse_public_key(key)
            return bytes(key)
        return p256.spki_decode(key)
    except (ValueError, TypeError):
        raise ProtocolError("malformed", "not a P-256 public key")


def spki_hex(key):
    """The lower-case hex SPKI form messages carry, from any form public_key() takes."""
    from energo import p256

    return binascii.hexlify(p256.spki_encode(public_key(key))).decode()


def _id_of_checked(spki, role):
    """key_id of an SPKI hex key that _check has already accepted."""
    from energo.identity import device_id

    return device_id(binascii.unhexlify(spki)[26:], role)  # after the 26-byte SPKI prefix


def key_id(key, role):
    """The energo.identity id ('c-…' / 'v-…') of a key in any form public_key() takes."""
    from energo.identity import device_id

    return device_id(public_key(key), role)


# --- signed messages ----------------------------------------------------------------------------

def _write_body(t, fields):
    parts = ['"t":' + dump_string(t), '"v":1']
    for name, kind in _fields(MESSAGES[t]):
        value = fields[name]
        if kind == "vehicles":
            items = []
            for entry in value:
                items.append("{" + ",".join(dump_string(n) + ":" + _dump(entry[n])
                                            for n, _ in _fields(_VEHICLE_ENTRY)) + "}")
            text = "[" + ",".join(items) + "]"
        else:
            text = _dump(value)
        parts.append(dump_string(name) + ":" + text)
    return "{" + ",".join(parts) + "}"


def _dump(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    return dump_string(value)


def write_body(body):
    """The exact body text of a message (checked like a received one), for signing elsewhere.

    The settlement service signs with its own key store; it writes the bytes here so that
    what it signs is byte for byte what a device would have written.
    """
    t = body.get("t")
    if t not in MESSAGES:
        raise ProtocolError("malformed", "unknown message type %r" % (t,))
    if body.get("v", 1) != 1:
        raise ProtocolError("malformed", "%s: v must be 1" % t)
    fields = dict(body)
    fields.pop("t")
    fields.pop("v", None)
    fields = _check_fields(fields, MESSAGES[t], t)
    fields["t"] = t
    _consistent(fields)
    try:
        return _write_body(t, fields)
    except JsonError as exc:
        raise ProtocolError("malformed", "%s: %s" % (t, exc.args[0]))


def join_signed(text, sig_der):
    """`<body>|<hex signature>`, refused when longer than a signed message may be."""
    line = text + "|" + binascii.hexlify(sig_der).decode()
    if len(line) > MESSAGE_MAX:
        raise ProtocolError("oversized", "%d bytes, limit %d" % (len(line), MESSAGE_MAX))
    return line


def sign_message(priv, body):
    """One signed line `<body>|<hex DER signature>`; the body is checked like a received one."""
    from energo import p256

    text = write_body(body)
    return join_signed(text, p256.sign(priv, text.encode()))


def open_message(text, expect_type, public_key=None):
    """The checked body (a dict, ints as int) of a signed line of type expect_type.

    The signature is checked with public_key (raw, SPKI bytes or SPKI hex) unless it is None
    (parse only: the caller first reads who claims to have signed, then opens it again with
    the key it trusts for that signer).
    """
    from energo.jsonread import load_object

    if isinstance(text, (bytes, bytearray)):
        if len(text) > MESSAGE_MAX:
            raise ProtocolError("oversized", "%s: %d bytes, limit %d" % (expect_type, len(text),
                                                                        MESSAGE_MAX))
        try:
            text = bytes(text).decode()
        except UnicodeError:
            raise ProtocolError("malformed", "%s: not text" % expect_type)
    if not isinstance(text, str):
        raise ProtocolError("malformed", "%s: not a signed message" % expect_type)
    if len(text) > MESSAGE_MAX:
        raise ProtocolError("oversized", "%s: %d bytes, limit %d" % (expect_type, len(text),
                                                                    MESSAGE_MAX))
    cut = text.rfind("|")
    if cut < 0:
        raise ProtocolError("malformed", "%s: no '|' before the signature" % expect_type)
    body_text, sig_hex = text[:cut], text[cut + 1:]
    for ch in body_text:
        if not " " <= ch <= "~":
            raise ProtocolError("malformed", "%s: body is not printable ASCII" % expect_type)
    if len(sig_hex) % 2 or not 16 <= len(sig_hex) <= 146 or not _lowhex(sig_hex, len(sig_hex)):
        raise ProtocolError("malformed", "%s: signature is not lower-case hex DER" % expect_type)
    try:
        obj = load_object(body_text, expect_type)
    except JsonError as exc:
        raise ProtocolError("malformed", exc.args[0])
    if obj.get("t") != expect_type or expect_type not in MESSAGES:
        raise ProtocolError("malformed", "expected a %s message, got %r" % (expect_type,
                                                                         obj.get("t")))
    if _uint(obj.get("v"), 1) != 1:
        raise ProtocolError("malformed", "%s: v must be 1" % expect_type)
    fields = dict(obj)
    fields.pop("t")
    fields.pop("v")
    body = _check_fields(fields, MESSAGES[expect_type], expect_type)
    body["t"] = expect_type
    body["v"] = 1
    _consistent(body)
    if public_key is not None:
        verify_signature(text, public_key)
    return body


def verify_signature(text, key):
    """ProtocolError('bad-signature') unless the line's signature is valid under key."""
    from energo import p256

    p256.finish(verify_steps(text, key))


def verify_steps(text, key):
    """verify_signature in slices (p256.verify_steps): a generator that yields between them
    and, at its end, raises ProtocolError('bad-signature') unless the signature holds. Why:
    a charger verifies while its other tasks run (p256.sliced)."""
    from energo import p256

    key = _public_key(key)
    cut = text.rfind("|")
    ok = False
    if cut > 0:
        try:
            sig = binascii.unhexlify(text[cut + 1:])
            ok = yield from p256.verify_steps(key, text[:cut].encode(), sig)
        except ValueError:
            ok = False
    if not ok:
        raise ProtocolError("bad-signature", "signature does not verify")


_public_key = public_key  # open_message's parameter shadows the function's name


# --- link frames (energo.evframe, imported on first use) ----------------------------------------

def frame(kind, **fields):
    """One link line (bytes ending in '\\n') of frame kind with its fields, checked."""
    from energo.evframe import frame as build

    return build(kind, **fields)


def read_frame(line):
    """The checked fields of one link line (with "k"); ProtocolError 'malformed'/'oversized'."""
    from energo.evframe import read_frame as read

    return read(line)


def __getattr__(name):
    if name != "FRAMES":
        raise AttributeError(name)
    from energo import evframe

    return evframe.FRAMES


# --- session arithmetic -------------------------------------------------------------------------

def new_nonce(urandom):
    """A session nonce: 32 lower-case hex digits from 16 bytes of urandom."""
    raw = urandom(16)
    if len(raw) != 16:
        raise ValueError("random source returned %d bytes, want 16" % len(raw))
    return binascii.hexlify(raw).decode()


def _amounts(*values):
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProtocolError("malformed", "amounts must be non-negative integers")


def cost(wh, price, fee, hold):
    """(energy_micro, fee_micro, total_micro): total never above the hold, fee cut first."""
    _amounts(wh, price, fee, hold)
    energy = wh * price // 1000
    fee_micro = wh * fee // 1000
    over = energy + fee_micro - hold
    if over > 0:
        cut = min(over, fee_micro)
        fee_micro -= cut
        energy -= over - cut
    return energy, fee_micro, energy + fee_micro


def hold_for(emax, cmax, price, fee):
    """The hold for a session: what emax Wh cost at price + fee, rounded up, at most cmax."""
    _amounts(emax, cmax, price, fee)
    return min(cmax, (emax * (price + fee) + 999) // 1000)


def record_hash(record):
    """Lower-case hex SHA-256 of a record's exact bytes (str is taken as its UTF-8 bytes)."""
    if isinstance(record, str):
        record = record.encode()
    return binascii.hexlify(hashlib.sha256(record).digest()).decode()
