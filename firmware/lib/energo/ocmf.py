# OCMF records: build, sign, parse and verify `OCMF|{payload}|{signature}` strings.
#
# The payload is built as text from integers and signed exactly as sent; it is
# never re-serialised. parse() accepts what production chargers emit (hard
# structural errors raise OcmfError; field-level deviations are listed in
# Record.problems); strict=True turns every problem into an OcmfError, which is
# how our own ingest reads records.
#
# The reader (parse, verify, Record) is energo.ocmfread, imported on first use:
# a meter builds a record every interval but parses one only at boot, and then
# releases the reader's code (energo.release) to keep ~9 KB of heap.
import binascii

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo import timefmt
from energo.jsonexact import JsonError, Number, dump_string, dump_value

OBIS_IMPORT = "01-00:01.08.00"
OBIS_EXPORT = "01-00:02.08.00"
SA_P256 = "ECDSA-secp256r1-SHA256"
RECORD_BYTES_MAX = const(16384)
READINGS_MAX = const(64)

TX_VALUES = "BCXELRAPST"
TX_STOP = "ELRAP"
ST_VALUES = "GNTDRMXIOSEF"
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
    # Pieces joined once: a payload built by concatenation made ~9 KB of garbage on MicroPython
    # for its ~600 characters (this is in every record's loop pass).
    try:
        out = ['{"FV":"1.0","GI":', dump_string(gateway[0]), ',"GS":', dump_string(gateway[1]),
               ',"GV":', dump_string(gateway[2]), ',"PG":', dump_string(pagination),
               ',"MV":', dump_string(meter[0]), ',"MM":', dump_string(meter[1]),
               ',"MS":', dump_string(meter[2])]
        for key, value in extra:
            if not key or (key[0] not in "UVWXYZ" and key not in _EXTRA_STD):
                raise OcmfError("extra key %r is neither a vendor key (U-Z) nor an OCMF field"
                                % key)
            out.extend((",", dump_string(key), ":", dump_value(value)))
        out.append(',"RD":[')
        for n, entry in enumerate(readings):
            out.append(",{" if n else "{")
            for m, (key, value) in enumerate(entry):
                out.extend(("," if m else "", dump_string(key), ":", dump_value(value)))
            out.append("}")
    except JsonError as exc:
        raise OcmfError(exc.args[0])
    out.append("]}")
    payload = "".join(out)
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


# --- reading (energo.ocmfread) -----------------------------------------------------------------

# The reader's public names, and the two helpers host-side ingest builds its own Record with;
# reached as ocmf.<name> through __getattr__ below, which imports the reader.
_READER_NAMES = ("Record", "Reading", "KNOWN_SA", "UNITS", "IL_VALUES", "_signature_bytes",
                 "_check_payload_fields")


def parse(text, strict=False):
    """A Record from an OCMF string; OcmfError with a precise reason if it is not one."""
    from energo.ocmfread import parse as read

    return read(text, strict)


def verify(record, public_key):
    """True when the record's signature is valid under a P-256 public key (SEC1 or SPKI DER)."""
    from energo.ocmfread import verify as check

    return check(record, public_key)


def __getattr__(name):
    if name not in _READER_NAMES:
        raise AttributeError(name)
    from energo import ocmfread

    return getattr(ocmfread, name)
