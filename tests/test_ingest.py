"""Ingest on SQLite and PostgreSQL: every record settles exactly once, gaps wait, late data
becomes a correction, bad records are rejected by reason and change nothing."""
import json
import random

from host_tools.settlement.ingest import Ingest
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry
from tests import test_ingest_support as support
from tests.test_ingest_support import T0_S, ack_of, member_energy

db_url, ingest_postgres_url, rig = support.db_url, support.ingest_postgres_url, support.rig


def _stream(device, minutes, import_wh=7, export_wh=3, start_s=T0_S):
    """A device's records, one a minute; returns (texts, import delta, export delta after 1st)."""
    texts = [device.record(start_s + 60 * (m + 1), import_wh, export_wh) for m in range(minutes)]
    return texts, import_wh * (minutes - 1), export_wh * (minutes - 1)


def _audit(rig):
    return rig.ledger.db.all("SELECT device_id, counter, reason FROM ingest_rejections ORDER BY id")


def test_in_order_streams_settle_exactly_their_register_deltas(rig):
    alice, bob = rig.device("alice"), rig.device("bob")
    a_texts, a_import, a_export = _stream(alice, 70, 9, 2)
    b_texts, b_import, b_export = _stream(bob, 70, 1, 13)
    acks = []
    for a, b in zip(a_texts, b_texts, strict=True):
        acks.append(ack_of(rig.send(alice, a), alice))
        rig.send(bob, b)
    assert acks == list(range(1, 71)), "the ack follows every settled counter"
    assert member_energy(rig.ledger) == {"alice": [a_import, a_export], "bob": [b_import, b_export]}
    # 70 minutes from T0: intervals T0 .. T0+45min are closed, the one at T0+60min is open.
    assert rig.ledger.next_open_interval() == T0_S + 3600
    assert rig.ingest.counts["settled"] == 140
    assert rig.ledger.check().ok
    assert rig.ledger.verify_checkpoints().ok
    assert _audit(rig) == []


def test_duplicates_in_any_order_change_nothing(rig):
    alice = rig.device("alice")
    texts, imported, exported = _stream(alice, 40)
    for text in texts:
        rig.send(alice, text)
    before = rig.snapshot()
    again = texts * 2
    random.Random(5).shuffle(again)
    acks = rig.ingest.handle_batch([(alice.topic, t.encode(), 1) for t in again])
    assert ack_of(acks, alice) == 40
    assert rig.snapshot() == before
    assert rig.ingest.counts["duplicates"] == 80
    assert member_energy(rig.ledger)["alice"] == [imported, exported]
    assert _audit(rig) == []


def test_a_gap_waits_and_never_invents_energy(rig):
    alice = rig.device("alice")
    texts, imported, exported = _stream(alice, 12)
    held_back = texts[4]  # counter 5
    for text in texts[:4] + texts[5:]:
        acks = rig.send(alice, text)
    assert ack_of(acks, alice) == 4
    assert member_energy(rig.ledger)["alice"] == [7 * 3, 3 * 3], "only up to the gap"
    pending = rig.ledger.db.all("SELECT counter FROM ingest_records WHERE state = 'pending' "
                                "ORDER BY counter")
    assert [row[0] for row in pending] == list(range(6, 13))
    acks = rig.send(alice, held_back)
    assert ack_of(acks, alice) == 12
    assert member_energy(rig.ledger)["alice"] == [imported, exported]
    assert rig.ledger.check().ok


def test_out_of_order_within_one_batch(rig):
    alice = rig.device("alice")
    texts, imported, exported = _stream(alice, 30)
    shuffled = texts[1:]
    random.Random(2).shuffle(shuffled)
    rig.send(alice, texts[0])
    acks = rig.ingest.handle_batch([(alice.topic, t.encode(), 0) for t in shuffled])
    assert ack_of(acks, alice) == 30
    assert member_energy(rig.ledger)["alice"] == [imported, exported]


def test_declared_skip_lets_settlement_continue(rig):
    alice = rig.device("alice")
    first = [alice.record(T0_S + 60 * m, 5, 0) for m in (1, 2, 3)]
    # Flash damage: the counter jumps from 3 to 20; the chain restarts (no XC).
    alice.prev_sig_hash = None
    later = [alice.record(T0_S + 60 * m, 5, 0, counter=c) for m, c in ((4, 20), (5, 21))]
    for text in first + later:
        acks = rig.send(alice, text)
    assert ack_of(acks, alice) == 3
    hello = json.dumps({"fw": "0.1.0", "key": "x", "last": 21, "reset": "power",
                        "skipped": [4, 19], "backlog": 2}).encode()
    acks = rig.ingest.handle(f"energo/v1/demo/{alice.device_id}/hello", hello, 0)
    assert ack_of(acks, alice) == 21
    assert member_energy(rig.ledger)["alice"] == [20, 0]
    kinds = [row[0] for row in rig.ledger.db.all("SELECT kind FROM ingest_events ORDER BY id")]
    assert "skip_declared" in kinds and "skip_applied" in kinds


def test_late_records_of_a_closed_interval_become_corrections(rig):
    alice, bob = rig.device("alice"), rig.device("bob")
    a_texts, a_import, a_export = _stream(alice, 90, 4, 1)
    b_texts, _, _ = _stream(bob, 90, 2, 2)
    rig.send(alice, a_texts[0])
    rig.send(bob, b_texts[0])
    for text in b_texts[1:]:  # alice is offline; bob's event time runs ahead
        rig.send(bob, text)
    closed_before = rig.ledger.next_open_interval()
    assert closed_before is not None and closed_before > T0_S + 900, "grace let intervals close"
    for text in a_texts[1:]:
        rig.send(alice, text)
    assert rig.ingest.counts["corrections"] > 0
    assert member_energy(rig.ledger)["alice"] == [a_import, a_export]
    corrections = rig.ledger.db.all("SELECT meta FROM transfers WHERE kind = 'correction'")
    assert all(json.loads(m)["corrects_interval_s"] < closed_before for (m,) in corrections)
    assert rig.ledger.check().ok
    assert rig.ledger.verify_checkpoints().ok


def test_unsynced_time_settles_at_receive_time(rig):
    alice = rig.device("alice")
    rig.send(alice, alice.record(T0_S + 60, 0, 0))
    receive_s = T0_S + 5 * 900 + 17
    rig.send(alice, alice.record(0, 11, 0, sync="U"), at_s=receive_s)
    row = rig.ledger.db.one("SELECT interval_start_s, import_delta_wh FROM ingest_records "
                            "WHERE counter = 2")
    assert row == (T0_S + 5 * 900, 11)
    assert rig.ledger.db.one("SELECT COUNT(*) FROM ingest_events WHERE kind = 'unsynced_time'")[0] == 1


def test_bad_sequence_input_is_rejected_by_reason_and_changes_nothing(rig):
    alice = rig.device("alice")
    texts, _, _ = _stream(alice, 5)
    for text in texts:
        rig.send(alice, text)
    before = rig.snapshot()
    chain_now = alice.prev_sig_hash
    bad = {
        # a different record for a settled counter
        "counter_reused": alice.sign_record(3, T0_S + 999, 1, 1),
        # the next counter, registers going backwards
        "register_decreased": alice.sign_record(6, T0_S + 400, 0, 0, chain_hash=chain_now),
        # the next counter, the chain pointing somewhere else
        "chain_broken": alice.sign_record(6, T0_S + 400, 10**6, 10**6, chain_hash="ab" * 32),
        "counter_too_far": alice.sign_record(10**6, T0_S + 400, 10**6, 10**6),
    }
    for reason, text in bad.items():
        acks = rig.send(alice, text)
        assert ack_of(acks, alice) == 5
        assert rig.ingest.rejected[reason] == 1, reason
    assert rig.snapshot() == before
    assert [row[2] for row in _audit(rig)] == list(bad)
    assert all(row[0] == alice.device_id for row in _audit(rig))


def test_state_survives_a_restart(rig, tmp_path):
    alice = rig.device("alice")
    texts, imported, exported = _stream(alice, 30)
    for text in texts[:10] + texts[11:20]:
        rig.send(alice, text)
    rig.close()
    ledger = Ledger.open(rig.url, key_path=str(rig.key_path))
    try:
        ingest = Ingest(ledger, Registry(ledger), "demo")
        acks = ingest.handle_batch([(alice.topic, t.encode(), 0) for t in texts])
        assert ack_of(acks, alice) == 30
        # 11 and 21..30 arrive now; 12..20 waited as pending from before the restart.
        assert ingest.counts["settled"] == 20 and ingest.counts["duplicates"] == 19
        assert member_energy(ledger)["alice"] == [imported, exported]
    finally:
        rig.ledger = ledger  # the fixture closes it


def test_a_record_that_overtakes_the_first_does_not_become_the_baseline(rig):
    alice = rig.device("alice")
    texts, imported, exported = _stream(alice, 8)
    assert ack_of(rig.send(alice, texts[4], at_s=100), alice) == 0, "waits for counter 1"
    for text in texts[:4] + texts[5:]:
        acks = rig.send(alice, text, at_s=101)
    assert ack_of(acks, alice) == 8
    assert member_energy(rig.ledger)["alice"] == [imported, exported]


def test_a_device_enrolled_mid_life_gets_its_lowest_counter_as_baseline(rig):
    alice = rig.device("alice")
    texts = [alice.record(T0_S + 60 * m, 5, 1, counter=40 + m) for m in range(1, 6)]
    assert ack_of(rig.send(alice, texts[1], at_s=1000), alice) == 0
    assert ack_of(rig.send(alice, texts[0], at_s=1005), alice) == 0
    acks = rig.send(alice, texts[2], at_s=1000 + 10)  # the wait is over: 41 is the baseline
    assert ack_of(acks, alice) == 43
    for text in texts[3:]:
        acks = rig.send(alice, text, at_s=1011)
    assert ack_of(acks, alice) == 45
    assert member_energy(rig.ledger)["alice"] == [20, 4]
    assert rig.ledger.db.one("SELECT COUNT(*) FROM ingest_records WHERE state = 'pending'")[0] == 0


def test_a_failing_interval_close_does_not_reject_settled_records(tmp_path):
    from host_tools.bench.ingest import SimDevice

    ledger = Ledger.open("sqlite:///:memory:")  # no service key: closing must fail
    try:
        ledger.add_member("alice")
        registry = Registry(ledger)
        device = SimDevice(seed=21)
        registry.enroll(device.device_id, device.spki_der, "meter", "alice")
        ingest = Ingest(ledger, registry, "demo")
        texts = [device.record(T0_S + 60 * m, 4, 0) for m in range(1, 40)]
        acks = ingest.handle_batch([(device.topic, t.encode(), 0) for t in texts])
        assert ack_of(acks, device) == 39
        assert ingest.counts["close_failures"] == 1 and "service key" in ingest.last_close_error
        assert sum(ingest.rejected.values()) == 0
        assert member_energy(ledger) == {"alice": [4 * 38, 0]}, "kept open, not lost"
        assert ledger.next_open_interval() is None
    finally:
        ledger.close()
