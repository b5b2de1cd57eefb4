"""`energo verify RECEIPT.json`: a receipt the service issued verifies offline, and each kind of
tampering (receipt, record, countersignature, certificate, community key) is named."""
import json

import pytest

from energo import evproto
from host_tools import cli
from host_tools.settlement import ev_receipt
from tests.test_ev_support import EvKit, key, spki


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    """A settled session's receipt file, and a second community's key."""
    tmp = tmp_path_factory.mktemp("receipt")
    kit = EvKit(f"sqlite:///{tmp / 'ledger.db'}", tmp / "key.pem")
    try:
        sync = kit.send({"t": "sync"})
        session, offer, auth, _ = kit.authorize()
        records = kit.records(session, 9_876, middle=2)
        meter = kit.meter(session, records[-1], 9_876)
        reply = kit.send(kit.close_request(session, offer, auth, records, meter))
        doc = ev_receipt.receipt_file(reply["receipt"], sync["cert"], records, meter,
                                      spki(kit.vehicle_key), sync["community_key"])
        extra = kit.records(session, 10, middle=0)  # validly signed, not this receipt's
        second, offer, auth, _ = kit.authorize()
        second_records = kit.records(second, 500)
        second_reply = kit.send(kit.close_request(second, offer, auth, second_records))
        unsigned_doc = ev_receipt.receipt_file(second_reply["receipt"], sync["cert"],
                                               second_records, None, spki(kit.vehicle_key),
                                               sync["community_key"])
    finally:
        kit.close()
    return {"doc": doc, "extra": extra, "unsigned": unsigned_doc}


def _run(tmp_path, capsys, doc, *extra):
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(doc, indent=1))
    code = cli.main(["verify", str(path), *extra])
    return code, capsys.readouterr().out


def test_a_good_receipt_verifies_and_prints_the_bill(issued, tmp_path, capsys):
    doc = issued["doc"]
    code, out = _run(tmp_path, capsys, doc, "--community-key", doc["community_key"])
    assert code == 0, out
    receipt = evproto.open_message(doc["receipt"], "receipt")
    assert "receipt: VALID" in out and "energy  9876 Wh" in out
    assert f"-> {receipt['energy_micro']} µ" in out and f"total   {receipt['total_micro']} µ" in out
    assert "countersigned by the vehicle" in out
    code, out = _run(tmp_path, capsys, issued["unsigned"])
    assert code == 0 and "countersigned" not in out


def _swap_last(text, old, new):
    head, _, tail = text.rpartition(old)
    assert head, old
    return head + new + tail


def _tamperings(issued):
    doc = issued["doc"]
    receipt = doc["receipt"]
    body = evproto.open_message(receipt, "receipt")
    stranger = key("stranger")
    forged_cert = evproto.sign_message(stranger, evproto.open_message(doc["cert"], "cert"))
    other_owner = evproto.open_message(doc["cert"], "cert")
    cheaper = {"fee": 0, "fee_micro": 0, "total_micro": body["energy_micro"],
               "released_micro": body["hold_micro"] - body["energy_micro"]}
    edited = receipt
    for name, value in cheaper.items():  # consistent amounts, so only the signature can tell
        edited = edited.replace(f'"{name}":{body[name]},', f'"{name}":{value},')
    assert evproto.open_message(edited, "receipt")["fee_micro"] == 0 < body["fee_micro"]
    yield "receipt body", dict(doc, receipt=edited), None, "receipt"
    yield "receipt signature", dict(doc, receipt=_swap_last(receipt, "|30", "|31")), None, \
        "receipt"
    yield "last record", dict(doc, records=[doc["records"][0], doc["records"][1].replace(
        '"TX":"E"', '"TX":"P"')]), None, "records"
    yield "swapped record", dict(doc, records=[doc["records"][0], issued["extra"][-1]]), None, \
        "records"
    yield "countersignature", dict(doc, meter=_swap_last(doc["meter"], '"wh":', '"wh":1')), \
        None, "countersignature"
    yield "countersignature dropped", dict(doc, meter=None), None, "countersignature"
    yield "vehicle key", dict(doc, vehicle_pub=spki(stranger)), None, "countersignature"
    yield "certificate by another key", dict(doc, cert=forged_cert), None, "certificate"
    yield "certificate of another owner", dict(doc, cert=doc["cert"].replace(
        other_owner["owner"], "other")), None, "certificate"
    yield "wrong community key", doc, evproto.spki_hex(spki(stranger)), "community key"
    yield "community key swapped in the file", dict(doc, community_key=spki(stranger)), \
        doc["community_key"], "community key"
    yield "not a receipt file", dict(doc, extra=1), None, "file"


def test_every_tampering_is_named(issued, tmp_path, capsys):
    names = []
    for name, doc, trusted, check in _tamperings(issued):
        extra = ("--community-key", trusted) if trusted else ()
        code, out = _run(tmp_path, capsys, doc, *extra)
        assert code == 1, (name, out)
        assert f"receipt: INVALID: {check} check failed" in out, (name, out)
        names.append(check)
    assert set(names) == set(ev_receipt.CHECKS) - {"energy", "arithmetic"}


def test_library_rejects_inconsistent_amounts_before_signatures(issued):
    doc = issued["doc"]
    with pytest.raises(ev_receipt.ReceiptError) as err:
        ev_receipt.verify(dict(doc, records="x"))
    assert err.value.check == "file"
    assert ev_receipt.verify(doc)["wh"] == 9_876


def test_ocmf_files_still_take_the_record_path(tmp_path, capsys, issued):
    path = tmp_path / "records.txt"
    path.write_text(issued["doc"]["records"][0] + "\n")
    station_pub = evproto.open_message(issued["doc"]["receipt"], "receipt")["station_pub"]
    assert cli.main(["verify", str(path), "--key", station_pub]) == 0
    assert "1 valid, 0 invalid" in capsys.readouterr().out
    assert cli.main(["verify", str(path), "--key", station_pub,
                     "--community-key", station_pub]) == 2
