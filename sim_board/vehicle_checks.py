"""What a simulated vehicle checks before it signs, countersigns or accepts anything.

Kept apart from the vehicle's state machine (`sim_board.vehicle`) because these are the
security decisions: each function either returns the checked values or raises
`evproto.ProtocolError` with the protocol's reason code, which the vehicle reports on the link
and keeps in its session log. The same checks decide whether a receipt file is kept as
accepted or as refused.
"""
import re

from energo import evproto, ocmf
from energo.ocmf import OcmfError

OFFER_CLOCK_SLACK_S = 600  # an offer stamped further than this from the vehicle's clock is stale
ENERGY_SLACK_WH = 10  # meter resolution and the last seconds between status frames
ENERGY_SLACK_FRACTION = 0.05  # a charger may claim at most this much more than the battery got


def check_offer(offer_text, cert_text, community_key, now_s):
    """(offer body, cert body): the certificate is the community's, the offer the station's."""
    cert = evproto.open_message(cert_text, "cert", community_key)
    if cert["exp"] < now_s:
        raise evproto.ProtocolError("expired", f"station certificate expired at {cert['exp']}")
    offer = evproto.open_message(offer_text, "offer", cert["pub"])
    if offer["station"] != cert["station"]:
        raise evproto.ProtocolError("wrong-station", f"offer from {offer['station']} with the certificate of "
                                    f"{cert['station']}")
    if abs(offer["at"] - now_s) > OFFER_CLOCK_SLACK_S:
        raise evproto.ProtocolError("expired", f"offer stamped {offer['at']}, vehicle clock {int(now_s)}")
    return offer, cert


def check_grant(grant_text, community_key, station_pub, offer, vehicle_id, emax_wh, cmax_micro):
    """(grant body, offline): the community's answer to exactly this vehicle's auth, or the
    station's own when it decided offline (signed with its certified key)."""
    grant = evproto.open_message(grant_text, "grant")
    try:
        evproto.verify_signature(grant_text, community_key)
        offline = False
    except evproto.ProtocolError:
        evproto.verify_signature(grant_text, station_pub)  # bad-signature if neither
        offline = True
    if grant["session"] != offer["nonce"]:
        raise evproto.ProtocolError("nonce-mismatch", f"grant for session {grant['session']}")
    if grant["station"] != offer["station"]:
        raise evproto.ProtocolError("wrong-station", f"grant for station {grant['station']}")
    if grant["vehicle"] != vehicle_id:
        raise evproto.ProtocolError("unknown-vehicle", f"grant for vehicle {grant['vehicle']}")
    if (grant["price"], grant["fee"]) != (offer["price"], offer["fee"]):
        raise evproto.ProtocolError("stale-price", (
            f"grant price {grant['price']}+{grant['fee']}, offer {offer['price']}+{offer['fee']}"))
    if grant["emax"] > emax_wh or grant["hold"] > cmax_micro:
        raise evproto.ProtocolError("limit-exceeded", "grant above the vehicle's limits")
    return grant, offline


def _session_record(text, station_pub, session):
    """(parsed record, its import register reading) of a record of this session signed by
    the station (a charger's records carry the import and the export register)."""
    try:
        record = ocmf.parse(text, strict=True)
        good = ocmf.verify(record, evproto.public_key(station_pub))
    except (OcmfError, ValueError) as exc:
        raise evproto.ProtocolError("bad-records", f"record: {exc.args[0]}") from None
    if not good:
        raise evproto.ProtocolError("bad-records", "record signature does not verify")
    if record.get("XS") != session:
        raise evproto.ProtocolError("bad-records", f"record of session {record.get('XS')!r}")
    for reading in record.readings:
        if reading.obis == ocmf.OBIS_IMPORT:
            return record, reading
    raise evproto.ProtocolError("bad-records", "record has no import register reading")


def plausible(charger_wh, battery_wh):
    """Whether the charger's energy is what a battery that received `battery_wh` can explain."""
    top = battery_wh * (1 + ENERGY_SLACK_FRACTION) + ENERGY_SLACK_WH
    bottom = battery_wh * (1 - ENERGY_SLACK_FRACTION) - ENERGY_SLACK_WH
    return bottom <= charger_wh <= top


def check_final(record_text, station_pub, session, status_wh, battery_wh):
    """The hash to countersign: a stop record of this session, and no more energy claimed than
    the battery took (the last `status` frame's figure; the receipt is checked in full)."""
    _record, last = _session_record(record_text, station_pub, session)
    if last.tx not in ocmf.TX_STOP:
        raise evproto.ProtocolError("bad-records", f"final record is not a stop (TX {last.tx})")
    if status_wh is not None and status_wh > battery_wh * (1 + ENERGY_SLACK_FRACTION) + \
            ENERGY_SLACK_WH:
        raise evproto.ProtocolError("bad-records", f"charger claims {status_wh} Wh, battery got {battery_wh:.0f} Wh")
    return evproto.record_hash(record_text)


def check_receipt(frame, community_key, session, battery_wh):
    """The receipt body, after every check `energo verify` makes plus the vehicle's own:
    it is for this session, station, vehicle and grant, the records are the station's and
    give its energy, the countersigned record is its end, and the energy is plausible."""
    receipt = evproto.open_message(frame["receipt"], "receipt", community_key)
    offer, cert, grant = session["offer"], session["cert"], session["grant"]
    expect = (("session", offer["nonce"], "nonce-mismatch"),
              ("station", offer["station"], "wrong-station"),
              ("station_pub", cert["pub"], "wrong-station"),
              ("vehicle", session["vehicle"], "unknown-vehicle"),
              ("vehicle_pub", session["vehicle_pub"], "unknown-vehicle"),
              ("price", grant["price"], "stale-price"), ("fee", grant["fee"], "stale-price"),
              ("hold_micro", grant["hold"], "malformed"))
    for name, value, reason in expect:
        if receipt[name] != value:
            raise evproto.ProtocolError(reason, f"receipt {name} is {receipt[name]!r}, expected {value!r}")
    readings = []
    for which in ("begin", "end"):
        if evproto.record_hash(frame[which]) != receipt[which]:
            raise evproto.ProtocolError("bad-records", f"{which} record is not the receipt's")
        readings.append(_session_record(frame[which], cert["pub"], offer["nonce"])[1])
    if readings[0].tx != "B" or readings[1].tx not in ocmf.TX_STOP:
        raise evproto.ProtocolError("bad-records", "records are not a begin and a stop")
    try:
        wh = readings[1].energy_wh() - readings[0].energy_wh()
    except OcmfError as exc:
        raise evproto.ProtocolError("bad-records", exc.args[0]) from None
    if wh != receipt["wh"]:
        raise evproto.ProtocolError("bad-records", f"receipt says {receipt['wh']} Wh, records {wh} Wh")
    signed = session.get("countersigned_hash")
    if receipt["countersigned"] and signed != receipt["end"]:
        raise evproto.ProtocolError("bad-records", "countersignature claimed on another record")
    if not plausible(receipt["wh"], battery_wh):
        raise evproto.ProtocolError("bad-records", f"receipt says {receipt['wh']} Wh, battery got {battery_wh:.0f} Wh")
    return receipt


# ---- scripted man-in-the-middle edits (misbehaviour) ---------------------------------------

def _replace_int(text, name, value):
    out, n = re.subn(f'"{re.escape(name)}":\\d+', f'"{name}":{value}', text, count=1)
    if n != 1:
        raise ValueError(f"no integer field {name!r} to tamper with")
    return out


def tamper_offer(offer_text):
    """The offer with its price lowered by a tenth, signature left as it was."""
    body = evproto.open_message(offer_text, "offer")
    return _replace_int(offer_text, "price", body["price"] * 9 // 10)


def tamper_receipt(receipt_text):
    """The receipt with half the energy and amounts that follow from it: consistent, unsigned."""
    cut = receipt_text.rfind("|")
    body = evproto.open_message(receipt_text, "receipt")
    wh = body["wh"] // 2 if body["wh"] > 1 else body["wh"] + 1
    energy, fee, total = evproto.cost(wh, body["price"], body["fee"], body["hold_micro"])
    text = receipt_text[:cut]
    for name, value in (("wh", wh), ("energy_micro", energy), ("fee_micro", fee),
                        ("total_micro", total), ("released_micro", body["hold_micro"] - total)):
        text = _replace_int(text, name, value)
    return text + receipt_text[cut:]
