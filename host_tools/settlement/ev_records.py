"""The charger's OCMF records of one charging session, checked (docs/charging-protocol.md).

Shared by the settlement service (close: every record of the session) and `energo verify`
(a receipt file: the first and the last record only). The energy a vehicle pays for is the
difference of the charger's own signed import register between the `TX` B record and the
stop record, so these checks are what stands between a charger and an invented bill.
"""
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from energo import evproto, ocmf
from energo.evproto import ProtocolError

RECORDS_MAX = 2000  # a week of a record every five minutes
_STOP = tuple(ocmf.TX_STOP)


def _bad(detail):
    return ProtocolError("bad-records", detail[:200])


def _load_key(station_pub):
    der = bytes.fromhex(station_pub) if isinstance(station_pub, str) else bytes(station_pub)
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        raise ProtocolError("malformed", "station key is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ProtocolError("malformed", "station key is not a P-256 key")
    return key


def _import_reading(record, where):
    for reading in record.readings:
        if reading.obis == ocmf.OBIS_IMPORT:
            try:
                return reading, reading.energy_wh()
            except ocmf.OcmfError as exc:
                raise _bad(f"{where}: {exc}") from None
    raise _bad(f"{where} has no import register reading")


def check_session(records, station_pub, session, contiguous=True):
    """The session's energy and anchors from its records, or ProtocolError('bad-records').

    Every record must be valid OCMF signed by the station key, carry `XS` = session and the
    same `GS`; the first has `TX` B, the last a stop code (E, L, R, A or P), those between
    neither; the import register never goes backwards. With `contiguous` the `PG` values are
    T<n>, T<n+1>, … (the service sees every record; a receipt file holds only two).
    Returns {"wh", "begin", "end" (record hashes), "begin_ms", "end_ms", "stop", "first", "last"}.
    """
    if not isinstance(records, list) or not 2 <= len(records) <= RECORDS_MAX:
        raise _bad(f"a session needs 2 to {RECORDS_MAX} records, got "
                   f"{len(records) if isinstance(records, list) else type(records).__name__}")
    key = _load_key(station_pub)
    gateway = None
    previous_wh = previous_counter = None
    first = last = None
    for index, text in enumerate(records):
        where = f"record {index + 1}"
        if not isinstance(text, str):
            raise _bad(f"{where} is not a string")
        try:
            record = ocmf.parse(text, strict=True)
        except ocmf.OcmfError as exc:
            raise _bad(f"{where}: {exc}") from None
        try:
            key.verify(record.signature, record.payload_text.encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _bad(f"{where}: signature does not verify with the station key") from None
        if record.get("XS") != session:
            raise _bad(f"{where} belongs to session {str(record.get('XS'))[:40]!r}, not this one")
        if gateway is None:
            gateway = record.get("GS")
        elif record.get("GS") != gateway:
            raise _bad(f"{where} comes from another gateway")
        letter, counter = record.pagination or (None, None)
        if letter != "T":
            raise _bad(f"{where}: PG must be T<n> in a session")
        if previous_counter is not None and (counter <= previous_counter or (
                contiguous and counter != previous_counter + 1)):
            raise _bad(f"{where}: PG T{counter} does not follow T{previous_counter}")
        reading, wh = _import_reading(record, where)
        if index == 0 and reading.tx != "B":
            raise _bad("the first record must be the TX B record")
        if index == len(records) - 1 and reading.tx not in _STOP:
            raise _bad("the last record must be a stop record (TX E, L, R, A or P)")
        if 0 < index < len(records) - 1 and reading.tx in _STOP + ("B",):
            raise _bad(f"{where}: TX {reading.tx} inside a session")
        if previous_wh is not None and wh < previous_wh:
            raise _bad(f"{where}: the import register goes backwards")
        previous_wh, previous_counter = wh, counter
        if index == 0:
            first = (reading, wh, counter)
        last = (reading, wh, counter)
    return {"wh": last[1] - first[1], "begin": evproto.record_hash(records[0]),
            "end": evproto.record_hash(records[-1]), "begin_ms": first[0].time_ms,
            "end_ms": last[0].time_ms, "stop": last[0].tx, "first": first[2], "last": last[2]}
