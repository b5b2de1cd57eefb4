# OCMF records: build, sign, parse and verify `OCMF|{payload}|{signature}` strings.
#
# The payload is built as text from integers and signed exactly as sent; it is
# never re-serialised. parse() accepts what production chargers emit (hard
# structural errors raise OcmfError; field-level deviations are listed in
# Record.problems); strict=True turns every problem into an OcmfError, which is
# how our own ingest reads records.
import binascii

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo import timefmt
from energo.jsonexact import JsonError, Number, dump_string, dump_value, load_object

OBIS_IMPORT = "01-00:01.08.00"
OBIS_EXPORT = "01-00:02.08.00"
SA_P256 = "ECDSA-secp256r1-SHA256"
KNOWN_SA = (
    "ECDSA-secp192k1-SHA256", "ECDSA-secp256k1-SHA256", "ECDSA-secp192r1-SHA256",
    "ECDSA-secp256r1-SHA256", "ECDSA-brainpool256r1-SHA256", "ECDSA-secp384r1-SHA256",
    "ECDSA-brainpool384r1-SHA256",
)
RECORD_BYTES_MAX = const(16384)
READINGS_MAX = const(64)
_TT_CHARS_MAX = const(250)

TX_VALUES = "BCXELRAPST"
TX_STOP = "ELRAP"
ST_VALUES = "GNTDRMXIOSEF"
UNITS = ("kWh", "Wh", "mOhm", "uOhm")
IL_VALUES = ("NONE", "HEARSAY", "TRUSTED", "VERIFIED", "CERTIFIED", "SECURE", "MISMATCH",
             "INVALID", "OUTDATED", "UNKNOWN")
_READING_FIELDS = ("TM", "TX", "RV", "RI", "RU", "RT", "CL", "EF", "ST")
_STRING_FIELDS = ("FV", "GI", "GS", "GV", "PG", "MV", "MM", "MS", "MF", "IT", "ID", "TT", "CF",
                  "CT", "CI")
_EXTRA_STD = ("IS", "IL", "IF", "IT", "ID", "TT", "CF", "LC", "CT", "CI", "MF")


class OcmfError(ValueError):
    """A record that is not valid OCMF; the message says which part and why."""


# --- building ----------------------------------------------------------------------------------


def kwh_text(energy_wh):
    """An energy register in kWh with exactly 3 decimals, from integer Wh."""
    if not isinstance(energy_wh, int) or energy_wh < 0:
        raise OcmfError("energy must be a non-negative integer of Wh, got %r" % (energy_wh,))
    return "%d.%03d" % (energy_wh // 1000, energy_wh % 1000)


def reading(time_ms, tx, energy_wh, obis=OBIS_IMPORT, sync="S", status="G"):
    """One RD entry (an ordered list of pairs) for an energy register in integer Wh."""
    if len(tx) != 1 or tx not in TX_VALUES:
        raise OcmfError("TX must be one of %s" % TX_VALUES)
    if len(status) != 1 or status not in ST_VALUES:
        raise OcmfError("ST must be one of %s" % ST_VALUES)
    return [("TM", timefmt.format_tm(time_ms, sync)), ("TX", tx),
            ("RV", Number(kwh_text(energy_wh))), ("RI", obis), ("RU", "kWh"), ("ST", status)]


def build_payload(gateway, pagination, meter, readings, extra=()):
    """The payload text. gateway = (GI, GS, GV); meter = (MV, MM, MS); pagination e.g. "F12".

    `readings` are lists of pairs from reading(); `extra` are (key, value) pairs placed after
    the meter fields: OCMF identification/charger fields, or vendor keys starting with U-Z.
    """
    check_pagination(pagination)
    if not readings or len(readings) > READINGS_MAX:
        raise OcmfError("a record needs 1 to %d readings" % READINGS_MAX)
    try:
        parts = ['"FV":"1.0"', '"GI":' + dump_string(gateway[0]),
                 '"GS":' + dump_string(gateway[1]), '"GV":' + dump_string(gateway[2]),
                 '"PG":' + dump_string(pagination), '"MV":' + dump_string(meter[0]),
                 '"MM":' + dump_string(meter[1]), '"MS":' + dump_string(meter[2])]
        for key, value in extra:
            if not key or (key[0] not in "UVWXYZ" and key not in _EXTRA_STD):
                raise OcmfError("extra key %r is neither a vendor key (U-Z) nor an OCMF field"
                                % key)
            parts.append(dump_string(key) + ":" + dump_value(value))
        rd = []
        for entry in readings:
            rd.append("{" + ",".join(dump_string(k) + ":" + dump_value(v) for k, v in entry)
                      + "}")
    except JsonError as exc:
        raise OcmfError(exc.args[0])
    parts.append('"RD":[' + ",".join(rd) + "]")
    payload = "{" + ",".join(parts) + "}"
    if len(payload) + 200 > RECORD_BYTES_MAX:
        raise OcmfError("payload too long")
    return payload


def sign_payload(priv, payload):
    """The complete OCMF string: the payload signed exactly as given (ECDSA P-256, hex DER)."""
    from energo import p256

    sig = p256.sign(priv, payload.encode())
    return 'OCMF|%s|{"SA":"%s","SD":"%s"}' % (payload, SA_P256, binascii.hexlify(sig).decode())


def check_pagination(pg):
    """(letter, number) of a PG value like T12 / F3; OcmfError otherwise."""
    if not isinstance(pg, str) or len(pg) < 2 or pg[0] not in "TF":
        raise OcmfError("PG must be T<n> or F<n>, got %r" % (pg,))
    digits = pg[1:]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0") or len(digits) > 12:
        raise OcmfError("PG must be T<n> or F<n> without leading zeros, got %r" % (pg,))
    return pg[0], int(digits)


# --- parsing -----------------------------------------------------------------------------------


class Reading:
    """One RD entry after inheritance of omitted fields from the previous reading."""

    __slots__ = ("fields", "time_ms", "sync", "tx", "value", "obis", "unit", "status", "errors")

    def __init__(self, fields, problems, index):
        self.fields = fields
        where = "RD[%d]" % index
        self.time_ms = self.sync = None
        tm = fields.get("TM")
        if isinstance(tm, str):
            try:
                self.time_ms, self.sync = timefmt.parse_tm(tm)
            except ValueError as exc:
                problems.append("%s.TM: %s" % (where, exc.args[0]))
        else:
            problems.append("%s.TM missing or not a string" % where)
        self.tx = _code(fields.get("TX"), TX_VALUES, where + ".TX", problems)
        self.status = _code(fields.get("ST"), ST_VALUES, where + ".ST", problems)
        value = fields.get("RV")
        if isinstance(value, str):
            problems.append("%s.RV is a string, not a JSON number" % where)
            value = Number(value.strip()) if _is_decimal(value.strip()) else None
        if not isinstance(value, Number):
            problems.append("%s.RV is not a number" % where)
            value = None
        self.value = value
        self.obis = fields.get("RI")
        self.unit = fields.get("RU")
        if self.unit not in UNITS:
            problems.append("%s.RU %r is not one of %s" % (where, self.unit, ", ".join(UNITS)))
        self.errors = fields.get("EF", "")
        if not isinstance(self.errors, str) or any(c not in "Et" for c in self.errors):
            problems.append("%s.EF must be a string of E/t flags" % where)

    def energy_wh(self):
        """The reading as exact integer Wh (kWh or Wh units); OcmfError if not exact."""
        if self.value is None or self.unit not in ("kWh", "Wh"):
            raise OcmfError("reading is not an energy value")
        try:
            return self.value.scaled(3 if self.unit == "kWh" else 0)
        except JsonError as exc:
            raise OcmfError(exc.args[0])


def _is_decimal(text):
    whole, dot, frac = text.lstrip("-").partition(".")
    return whole.isdigit() and (not dot or frac.isdigit()) and len(text) <= 40


def _code(value, allowed, where, problems):
    if not isinstance(value, str) or len(value) != 1 or value not in allowed:
        problems.append("%s %r is not one of %s" % (where, value, allowed))
        return None
    return value


class Record:
    """A parsed OCMF string. `payload_text` is exactly the signed text."""

    def __init__(self, payload_text, payload, sig_section, signature, problems):
        self.payload_text = payload_text
        self.payload = payload
        self.sig_section = sig_section
        self.signature = signature
        self.problems = problems
        self.algorithm = sig_section.get("SA", SA_P256)
        self.pagination = None
        pg = payload.get("PG")
        try:
            self.pagination = check_pagination(pg)
        except OcmfError as exc:
            problems.append(exc.args[0])
        self.readings = []
        previous = {}
        for index, entry in enumerate(payload["RD"]):
            fields = {}
            for key in _READING_FIELDS:
                if key in entry:
                    fields[key] = entry[key]
                elif key in previous:
                    fields[key] = previous[key]
            self.readings.append(Reading(fields, problems, index))
            previous = fields

    def get(self, key, default=None):
        return self.payload.get(key, default)


def parse(text, strict=False):
    """A Record from an OCMF string; OcmfError with a precise reason if it is not one."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode()
        except UnicodeError:
            raise OcmfError("record is not UTF-8 text")
    if not isinstance(text, str):
        raise OcmfError("record must be text")
    text = text.strip()
    if len(text) > RECORD_BYTES_MAX:
        raise OcmfError("record longer than %d bytes" % RECORD_BYTES_MAX)
    sections = text.split("|")
    if len(sections) != 3:
        raise OcmfError("expected OCMF|payload|signature, found %d sections" % len(sections))
    if sections[0] != "OCMF":
        raise OcmfError("record must start with 'OCMF|'")
    try:
        payload = load_object(sections[1], "payload")
        sig_section = load_object(sections[2], "signature section")
    except JsonError as exc:
        raise OcmfError(exc.args[0])
    problems = []
    signature = _signature_bytes(sig_section)
    rd = payload.get("RD")
    if not isinstance(rd, list) or not rd or len(rd) > READINGS_MAX:
        raise OcmfError("payload.RD must be a list of 1 to %d readings" % READINGS_MAX)
    for entry in rd:
        if not isinstance(entry, dict):
            raise OcmfError("payload.RD entries must be objects")
    _check_payload_fields(payload, problems)
    record = Record(sections[1], payload, sig_section, signature, problems)
    if strict and problems:
        raise OcmfError(problems[0])
    return record


def _signature_bytes(sig):
    sa = sig.get("SA", SA_P256)
    if sa not in KNOWN_SA:
        raise OcmfError("signature.SA %r is not an OCMF algorithm" % (sa,))
    se = sig.get("SE", "hex")
    if se not in ("hex", "base64"):
        raise OcmfError("signature.SE must be hex or base64, got %r" % (se,))
    if sig.get("SM", "application/x-der") != "application/x-der":
        raise OcmfError("signature.SM must be application/x-der")
    sd = sig.get("SD")
    if not isinstance(sd, str) or not sd:
        raise OcmfError("signature.SD missing")
    raw = sd.encode()
    # Check the alphabet ourselves: CPython's decoder skips stray characters, MicroPython's not.
    alphabet = _HEX if se == "hex" else _BASE64
    if len(sd) > 1024 or any(c not in alphabet for c in raw) or len(raw) % (2 if se == "hex" else 4):
        raise OcmfError("signature.SD is not valid %s" % se)
    try:
        if se == "hex":
            return binascii.unhexlify(raw)
        return binascii.a2b_base64(raw)
    except ValueError:
        raise OcmfError("signature.SD is not valid %s" % se)


_HEX = b"0123456789abcdefABCDEF"
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _check_payload_fields(payload, problems):
    for key in _STRING_FIELDS:
        if key in payload and not isinstance(payload[key], str):
            problems.append("payload.%s should be a string" % key)
    fv = payload.get("FV")
    if isinstance(fv, str) and fv not in ("0.1", "0.2", "0.3", "0.4", "1.0", "1.1", "1.2", "1.3"):
        problems.append("payload.FV %r is not a version this verifier knows" % fv)
    if "MS" not in payload:
        problems.append("payload.MS (meter serial) is missing")
    if "IS" in payload and not isinstance(payload["IS"], bool):
        problems.append("payload.IS must be true or false")
    if "IL" in payload and payload["IL"] not in IL_VALUES:
        problems.append("payload.IL %r is not an identification level" % (payload["IL"],))
    flags = payload.get("IF", [])
    if not isinstance(flags, list) or len(flags) > 4 or any(not isinstance(f, str) for f in flags):
        problems.append("payload.IF must be a list of at most 4 strings")
    if isinstance(payload.get("TT"), str) and len(payload["TT"]) > _TT_CHARS_MAX:
        problems.append("payload.TT longer than %d characters" % _TT_CHARS_MAX)


def verify(record, public_key):
    """True when the record's signature is valid under a P-256 public key (SEC1 or SPKI DER).

    Only ECDSA-secp256r1-SHA256 is implemented on the board; other curves raise OcmfError.
    """
    from energo import p256

    if record.algorithm != SA_P256:
        raise OcmfError("unsupported signature algorithm %s" % record.algorithm)
    pub = public_key
    if len(pub) > 65:
        pub = p256.spki_decode(pub)
    return p256.verify(pub, record.payload_text.encode(), record.signature)
