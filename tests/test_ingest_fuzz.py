"""Hostile input at the ingest: malformed, mutated, forged, replayed, oversized and misrouted
messages are each rejected with their reason, audited, and leave the ledger unchanged."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tools.bench.ingest import SimDevice
from tests.test_ingest_support import T0_S, Rig

SETTLED = 6


@pytest.fixture(scope="module")
def fuzz_rig(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz")
    rig = Rig(f"sqlite:///{path / 'ledger.db'}", path / "key.pem")
    alice, bob = rig.device("alice"), rig.device("bob")
    rig.texts = {}
    for m in range(1, SETTLED + 1):
        rig.texts[m] = alice.record(T0_S + 60 * m, 10, 1)
        rig.send(alice, rig.texts[m])
        rig.send(bob, bob.record(T0_S + 60 * m, 1, 10))
    rig.bob_next = bob.record(T0_S + 60 * (SETTLED + 1), 1, 1)
    rig.stranger = SimDevice(seed=999)
    yield rig
    rig.close()


def _mutate(text, position, char):
    position %= len(text)
    if text[position] == char:
        char = "#" if char != "#" else "$"
    return text[:position] + char + text[position + 1:]


@st.composite
def hostile(draw, rig):
    """(topic, payload, expected reasons); an empty set means 'a harmless duplicate'."""
    alice = rig.device("alice")
    topic = alice.topic
    kind = draw(st.sampled_from(["garbage", "mutated", "forged", "replayed", "oversized",
                                 "wrong_topic", "unknown", "bad_topic", "hello", "exact_replay"]))
    if kind == "garbage":
        payload = draw(st.binary(max_size=300))
        return topic, payload, {"malformed"}
    if kind == "mutated":
        base = rig.texts[draw(st.integers(1, SETTLED))]
        text = _mutate(base, draw(st.integers(0, 10_000)),
                       draw(st.characters(codec="utf-8", exclude_characters="\x00")))
        # A change the signature does not cover (e.g. hex case) is the same record: a duplicate.
        return topic, text.encode(), {"malformed", "bad_signature", "wrong_topic", None}
    if kind == "forged":
        counter = draw(st.integers(1, SETTLED + 3))
        text = rig.stranger.sign_record(counter, T0_S + 60 * counter, 10**5, 10**5,
                                        device_id=alice.device_id)
        return topic, text.encode(), {"bad_signature"}
    if kind == "replayed":
        counter = draw(st.integers(1, SETTLED))
        text = alice.sign_record(counter, T0_S + 60 * counter + 1, draw(st.integers(0, 10**6)),
                                 draw(st.integers(0, 10**6)))
        return topic, text.encode(), {"counter_reused"}
    if kind == "oversized":
        size = draw(st.integers(4097, 9000))
        text = rig.texts[1]
        return topic, (text + " " * (size - len(text))).encode(), {"oversized"}
    if kind == "wrong_topic":
        return topic, rig.bob_next.encode(), {"wrong_topic"}
    if kind == "unknown":
        return rig.stranger.topic, rig.stranger.sign_record(1, T0_S, 0, 0).encode(), {
            "unknown_device"}
    if kind == "bad_topic":
        bad = draw(st.sampled_from([
            "energo/v1/other/" + alice.device_id + "/rec", "energo/v1/demo/" + alice.device_id,
            "energo/v1/demo/" + alice.device_id + "/ack", "energo/v1/demo//rec", "#"]))
        return bad, rig.texts[1].encode(), {"bad_topic"}
    if kind == "hello":
        payload = draw(st.one_of(
            st.binary(max_size=100),
            st.builds(lambda v: json.dumps({"skipped": v}).encode(),
                      st.one_of(st.integers(), st.lists(st.integers(-5, 2**41), max_size=3),
                                st.text(max_size=5)))))
        try:
            hello = json.loads(payload)
            skipped = hello.get("skipped") if isinstance(hello, dict) else 0
            ok = skipped is None or (isinstance(skipped, list) and len(skipped) == 2
                                     and 1 <= skipped[0] <= skipped[1] < 2**40
                                     and skipped[1] - skipped[0] <= 4096 * 16)
        except ValueError:
            ok = False
        if ok:  # a valid hello is not hostile; skip it (it could legitimately change state)
            payload = b"{not json"
        return topic.replace("/rec", "/hello"), payload, {"bad_hello"}
    return topic, rig.texts[draw(st.integers(1, SETTLED))].encode(), {None}


@pytest.fixture(scope="module")
def strategy(fuzz_rig):
    return hostile(fuzz_rig)


def _audit_count(rig):
    return rig.ledger.db.one("SELECT COUNT(*) FROM ingest_rejections")[0]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_messages_are_rejected_and_change_nothing(fuzz_rig, strategy, data):
    rig = fuzz_rig
    topic, payload, reasons = data.draw(strategy)
    before = rig.snapshot()
    rejected_before = dict(rig.ingest.rejected)
    duplicates_before = rig.ingest.counts["duplicates"]
    audit_before = _audit_count(rig)
    rig.ingest.handle(topic, payload, T0_S)
    assert rig.snapshot() == before, "hostile input changed the ledger or settlement state"
    grown = {r for r, n in rig.ingest.rejected.items() if n != rejected_before[r]}
    if grown:
        assert len(grown) == 1 and grown <= reasons, (grown, reasons)
        assert sum(rig.ingest.rejected.values()) == sum(rejected_before.values()) + 1
        assert _audit_count(rig) == audit_before + 1
        row = rig.ledger.db.one("SELECT reason, head FROM ingest_rejections ORDER BY id DESC "
                                "LIMIT 1")
        assert row[0] in reasons and len(row[1]) <= 200
    else:
        assert None in reasons, f"expected a rejection in {reasons}"
        assert rig.ingest.counts["duplicates"] == duplicates_before + 1


def test_a_batch_mixing_good_and_hostile_settles_the_good_ones(fuzz_rig):
    rig = fuzz_rig
    bob = rig.device("bob")
    alice = rig.device("alice")
    good = bob.record(T0_S + 60 * 50, 3, 3)
    # bob_next (counter SETTLED+1) was only ever sent on alice's topic: send it properly too.
    acks = rig.ingest.handle_batch([
        (alice.topic, b"OCMF|{}|{}", 0),
        (bob.topic, rig.bob_next.encode(), 0),
        (bob.topic, good.encode(), 0),
        (alice.topic, b"x" * 5000, 0),
    ])
    assert (f"energo/v1/demo/{bob.device_id}/ack", b'{"ack": %d}' % (SETTLED + 2)) in acks


_BASE_RECORD = SimDevice(seed=3).record(T0_S, 1234, 56)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), char=st.characters(codec="ascii"),
       delete=st.booleans())
def test_the_fast_parser_agrees_with_the_firmware_parser(position, char, delete):
    from energo import ocmf
    from host_tools.settlement.ingest import parse_record

    text = _BASE_RECORD
    position %= len(text)
    text = text[:position] + ("" if delete else char) + text[position + 1:]
    try:
        expected = ocmf.parse(text, strict=True)
    except ocmf.OcmfError as exc:
        expected = exc
    try:
        got = parse_record(text)
    except ocmf.OcmfError as exc:
        got = exc
    if isinstance(expected, Exception):
        assert isinstance(got, Exception) and str(got) == str(expected)
    else:
        assert not isinstance(got, Exception), got
        assert got.payload == expected.payload and got.signature == expected.signature
        assert got.payload_text == expected.payload_text


def test_the_audit_log_stays_bounded(tmp_path):
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "key.pem")
    try:
        rig.ingest.audit_rows_max = 300
        alice = rig.device("alice")
        for _ in range(3):
            rig.ingest.handle_batch([(alice.topic, b"garbage %d" % i, 0) for i in range(700)])
        assert rig.ingest.rejected["malformed"] == 2100
        count = rig.ledger.db.one("SELECT COUNT(*) FROM ingest_rejections")[0]
        assert 300 <= count <= 300 + 1000
        newest = rig.ledger.db.one("SELECT head FROM ingest_rejections ORDER BY id DESC LIMIT 1")
        assert newest == ("garbage 699",)
    finally:
        rig.close()
