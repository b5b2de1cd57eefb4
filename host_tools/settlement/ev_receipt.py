"""Offline verification of a charging receipt file (docs/charging-protocol.md, `energo verify`).

Anyone holding the file and the community's public key can check, without the service, that
the service signed this bill, that the station it names was certified by the same key, that
the charger's own signed records show the energy billed, that the vehicle countersigned the
final reading, and that the amounts follow from energy, price, fee and hold. The checks run
in a fixed order and the first that fails is named.
"""
from energo import evproto
from energo.evproto import ProtocolError
from host_tools.settlement import ev_records

CHECKS = ("file", "community key", "receipt", "certificate", "records", "countersignature",
          "energy", "arithmetic")
FILE_KEYS = ("receipt", "cert", "records", "meter", "vehicle_pub", "community_key")


class ReceiptError(ValueError):
    """A receipt that does not verify; `check` is the first of CHECKS that failed."""

    def __init__(self, check, detail):
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


def is_receipt_file(obj):
    """True for a JSON object shaped like a receipt file (how `energo verify` tells it apart)."""
    return isinstance(obj, dict) and "receipt" in obj and "records" in obj


def receipt_file(receipt, cert, records, meter, vehicle_pub, community_key):
    """The receipt file's object, from what a charger holds at the end of a session."""
    return {"receipt": receipt, "cert": cert, "records": [records[0], records[-1]],
            "meter": meter, "vehicle_pub": vehicle_pub, "community_key": community_key}


def _key_hex(value, check):
    try:
        return evproto.spki_hex(value)
    except (ProtocolError, TypeError, ValueError):
        raise ReceiptError(check, "not a P-256 public key") from None


def _open(check, text, kind, key):
    try:
        return evproto.open_message(text, kind, key)
    except ProtocolError as exc:
        raise ReceiptError(check, f"{exc.reason}: {exc.detail}") from None


def verify(doc, community_key=None):
    """The receipt's body when every check passes; ReceiptError naming the first that fails.

    `community_key` (any form evproto.public_key takes) is the key the user trusts; the file's
    own `community_key` must then be the same key.
    """
    if not isinstance(doc, dict) or sorted(doc) != sorted(FILE_KEYS):
        raise ReceiptError("file", "a receipt file has exactly the keys " + ", ".join(FILE_KEYS))
    records = doc["records"]
    if not isinstance(records, list) or len(records) != 2 or \
            not all(isinstance(r, str) for r in records):
        raise ReceiptError("file", "records must be the session's first and last OCMF records")
    community = _key_hex(doc["community_key"], "community key")
    if community_key is not None and _key_hex(community_key, "community key") != community:
        raise ReceiptError("community key", "the file's community key is not the trusted key")
    receipt = _open("receipt", doc["receipt"], "receipt", community)
    cert = _open("certificate", doc["cert"], "cert", community)
    for name, want in (("station", receipt["station"]), ("pub", receipt["station_pub"]),
                       ("owner", receipt["owner"]), ("fee", receipt["fee"])):
        if cert[name] != want:
            raise ReceiptError("certificate", f"the certificate's {name} is not the receipt's")
    try:
        checked = ev_records.check_session(records, receipt["station_pub"], receipt["session"],
                                           contiguous=False)
    except ProtocolError as exc:
        raise ReceiptError("records", exc.detail) from None
    if (checked["begin"], checked["end"]) != (receipt["begin"], receipt["end"]):
        raise ReceiptError("records", "the records are not the ones the receipt names")
    _check_meter(doc, receipt)
    if checked["wh"] != receipt["wh"]:
        raise ReceiptError("energy", f"the records show {checked['wh']} Wh, the receipt "
                           f"{receipt['wh']} Wh")
    energy, fee, total = evproto.cost(receipt["wh"], receipt["price"], receipt["fee"],
                                      receipt["hold_micro"])
    if (energy, fee, total, receipt["hold_micro"] - total) != (
            receipt["energy_micro"], receipt["fee_micro"], receipt["total_micro"],
            receipt["released_micro"]):
        raise ReceiptError("arithmetic", "the amounts do not follow from energy, price and fee")
    return receipt


def _check_meter(doc, receipt):
    meter = doc["meter"]
    if not receipt["countersigned"]:
        if meter is not None:
            raise ReceiptError("countersignature", "the receipt says not countersigned")
        return
    if not isinstance(meter, str):
        raise ReceiptError("countersignature", "the receipt says countersigned; no meter")
    vehicle_pub = _key_hex(doc["vehicle_pub"], "countersignature")
    if vehicle_pub != receipt["vehicle_pub"]:
        raise ReceiptError("countersignature", "vehicle_pub is not the receipt's vehicle key")
    body = _open("countersignature", meter, "meter", vehicle_pub)
    if (body["session"], body["vehicle"], body["station"], body["record"]) != (
            receipt["session"], receipt["vehicle"], receipt["station"], receipt["end"]):
        raise ReceiptError("countersignature", "it covers another session or record")
