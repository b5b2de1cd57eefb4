"""The settlement service's reader for the OCMF layout our meters write.

Why it exists: `energo.ocmf.parse` is the firmware's reader; it walks the record byte
by byte in pure Python, and at the service that cost more than the P-256 signature
check it guards. Meters (firmware `Meter.make_record`, the benchmark's `SimDevice`)
all write one layout: `ocmf.build_payload` with its fixed key order, no white space,
no escapes, plain decimal numbers, and the signature section of `ocmf.sign_payload`.
One compiled regular expression recognises exactly that layout, and only with field
values the firmware reader accepts as they are (strict mode: no problems at all).

`parse(text)` returns a record with the attributes the ingest reads from an
`ocmf.Record` (`payload_text`, `payload`, `sig_section`, `signature`, `problems`,
`algorithm`, `pagination`, `readings`, `get`), equal to what `ocmf.parse(text,
strict=True)` returns, or None when the text is not in that layout. None is not a
refusal: the caller then asks the firmware reader, so every refusal and its message
stay the firmware's. tests/test_ingest_fastparse.py checks the equality with
generated and mutated records.
"""
import functools
import re

from energo import ocmf, ocmfread, timefmt
from energo.jsonexact import Number

# A JSON string the firmware reader takes verbatim: no escape, no control character, and
# no '|' (which would split the OCMF sections). Text is ASCII-only before matching.
_STR = r'"[^"\\\x00-\x1f|]*"'
# A JSON number without exponent, at most 37 characters (the firmware allows 40).
_NUM = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?"
_TM = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3}[+-][0-9]{4} [UISR]"


def _reading(group):
    """One RD entry with all its fields, capturing them when `group` is true."""
    wrap = "({})" if group else "(?:{})"
    return (r'\{"TM":"' + wrap.format(_TM) + r'","TX":"' + wrap.format(f"[{ocmf.TX_VALUES}]")
            + r'","RV":' + wrap.format(_NUM) + r',"RI":' + wrap.format(_STR) + r',"RU":"'
            + wrap.format("kWh|Wh|mOhm|uOhm") + r'","ST":"' + wrap.format(f"[{ocmf.ST_VALUES}]")
            + r'"\}')


# Vendor keys only (U-Z): no OCMF field starts with those letters, so they need no check
# beyond being valid JSON and unique.
_EXTRA = r'"[U-Z][^"\\\x00-\x1f|]*":(?:' + _STR + "|" + _NUM + "|true|false)"
_RECORD = re.compile(
    r'OCMF\|(\{"FV":"(0\.[1-4]|1\.[0-3])","GI":(' + _STR + r'),"GS":(' + _STR + r'),"GV":('
    + _STR + r'),"PG":"([TF])(0|[1-9][0-9]{0,11})","MV":(' + _STR + r'),"MM":(' + _STR
    + r'),"MS":(' + _STR + r')((?:,' + _EXTRA + r')*),"RD":\[((?:' + _reading(False)
    + r',){0,' + str(ocmf.READINGS_MAX - 1) + r'}' + _reading(False) + r')\]\})\|\{"SA":"'
    + re.escape(ocmf.SA_P256) + r'","SD":"([0-9a-fA-F]{2,1024})"\}')
_READING_ONE = re.compile(_reading(True))
_EXTRA_ONE = re.compile(r'"([^"]*)":("[^"]*"|[^,]*)')  # on text _RECORD already matched
_TM_CACHE_MAX = 4096


@functools.lru_cache(maxsize=_TM_CACHE_MAX)
def _parse_tm(text):
    """timefmt.parse_tm, remembered: a fleet's records carry the same few time stamps."""
    return timefmt.parse_tm(text)


class FastReading:
    """An RD entry with every field present (no inheritance), as `ocmfread.Reading` holds it."""

    __slots__ = ("fields", "time_ms", "sync", "tx", "value", "obis", "unit", "status", "errors")

    # The firmware's own conversion to Wh, so exactness and its errors cannot differ.
    energy_wh = ocmfread.Reading.energy_wh


class FastRecord:
    """The parts of an `ocmf.Record` the ingest reads; built only from text the firmware accepts."""

    __slots__ = ("payload_text", "payload", "sig_section", "signature", "problems", "algorithm",
                 "pagination", "readings")

    def get(self, key, default=None):
        return self.payload.get(key, default)


def parse(text):
    """A FastRecord equal to `ocmf.parse(text, strict=True)`, or None for any other layout."""
    if not isinstance(text, str) or len(text) > ocmf.RECORD_BYTES_MAX or not text.isascii():
        return None
    match = _RECORD.fullmatch(text)
    if match is None:
        return None
    (payload_text, fv, gi, gs, gv, pg_letter, pg_digits, mv, mm, ms, extra, rd,
     sd) = match.groups()
    payload = {"FV": fv, "GI": gi[1:-1], "GS": gs[1:-1], "GV": gv[1:-1], "PG": pg_letter
               + pg_digits, "MV": mv[1:-1], "MM": mm[1:-1], "MS": ms[1:-1]}
    if extra:
        for key, value in _EXTRA_ONE.findall(extra):
            if key in payload:
                return None  # a duplicate key: the firmware refuses it, with its own message
            first = value[0]
            if first == '"':
                payload[key] = value[1:-1]
            elif first == "t" or first == "f":
                payload[key] = first == "t"
            else:
                payload[key] = Number(value)
    if len(sd) % 2:
        return None  # half a byte of signature: the firmware's message says so
    readings, entries = [], []
    for tm, tx, rv, ri, ru, st in _READING_ONE.findall(rd):
        try:
            time_ms, sync = _parse_tm(tm)
        except ValueError:
            return None  # a date that does not exist: the firmware's message says which
        value = Number(rv)
        fields = {"TM": tm, "TX": tx, "RV": value, "RI": ri[1:-1], "RU": ru, "ST": st}
        reading = FastReading()
        reading.fields = fields
        reading.time_ms, reading.sync, reading.tx, reading.value = time_ms, sync, tx, value
        reading.obis, reading.unit, reading.status, reading.errors = fields["RI"], ru, st, ""
        readings.append(reading)
        entries.append(fields)
    payload["RD"] = entries
    record = FastRecord()
    record.payload_text = payload_text
    record.payload = payload
    record.sig_section = {"SA": ocmf.SA_P256, "SD": sd}
    record.signature = bytes.fromhex(sd)
    record.problems = []
    record.algorithm = ocmf.SA_P256
    record.pagination = (pg_letter, int(pg_digits))
    record.readings = readings
    return record
