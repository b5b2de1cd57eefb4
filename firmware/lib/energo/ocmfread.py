# The OCMF reader: parse and verify `OCMF|{payload}|{signature}` strings (see
# energo.ocmf, which builds them and reaches this module on first use). A module
# of its own so a meter can release it after boot, when it has read back its
# newest record; host tools and the settlement service use it all the time.
import binascii

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo import timefmt
from energo.jsonexact import JsonError, Number
from energo.jsonread import load_object
from energo.ocmf import (
    READINGS_MAX,
    RECORD_BYTES_MAX,
    SA_P256,
    ST_VALUES,
    TX_VALUES,
    OcmfError,
    check_pagination,
)

KNOWN_SA = (
    "ECDSA-secp192k1-SHA256", "ECDSA-secp256k1-SHA256", "ECDSA-secp192r1-SHA256",
    "ECDSA-secp256r1-SHA256", "ECDSA-brainpool256r1-SHA256", "ECDSA-secp384r1-SHA256",
    "ECDSA-brainpool384r1-SHA256",
)
UNITS = ("kWh", "Wh", "mOhm", "uOhm")
IL_VALUES = ("NONE", "HEARSAY", "TRUSTED", "VERIFIED", "CERTIFIED", "SECURE", "MISMATCH",
             "INVALID", "OUTDATED", "UNKNOWN")
_READING_FIELDS = ("TM", "TX", "RV", "RI", "RU", "RT", "CL", "EF", "ST")
_STRING_FIELDS = ("FV", "GI", "GS", "GV", "PG", "MV", "MM", "MS", "MF", "IT", "ID", "TT", "CF",
                  "CT", "CI")
_TT_CHARS_MAX = const(250)


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
