"""The service's fast OCMF reader (host_tools.settlement.ocmf_fast) against the firmware's.

Whatever the fast reader accepts, the firmware reader (`ocmf.parse(strict=True)`) accepts
with equal fields; whatever it declines goes to the firmware reader, so the ingest's
results and refusals (reason and message) are the same with and without it."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energo import ocmf
from energo.jsonexact import JsonError, Number
from host_tools.bench.ingest import SimDevice
from host_tools.settlement import ingest as ingest_module
from host_tools.settlement import ocmf_fast
from tests.test_ingest_support import T0_S, Rig

_PLAIN = "abcXYZ019-_.:/ "
_NASTY = '"\\|{}[],\x00\x1f\x7fé€\U0001f600'
_plain_texts = st.text(alphabet=_PLAIN, max_size=12)
_nasty_texts = st.text(alphabet=_PLAIN + _NASTY, max_size=12)
# What a generated record may get wrong (or merely unusual); most examples get none or one,
# so most are records the firmware accepts and each oddity is met on its own.
_ASPECTS = ("texts", "tm", "tx", "rv", "ri", "ru", "st", "ef", "inherit", "extra", "pg", "fv",
            "sd", "sa", "mutate")


def _pick(draw, odd, aspect, usual, unusual):
    """From `usual`, or (for an aspect chosen to be odd) from `unusual` or `usual`."""
    return draw(st.sampled_from(list(usual) + list(unusual) if aspect in odd else usual))


def _view(record):
    """Everything a parsed record holds that the ingest (or anyone) may read."""
    readings = []
    for r in record.readings:
        try:
            energy = r.energy_wh()
        except ocmf.OcmfError as exc:
            energy = ("error", str(exc))
        readings.append((r.fields, r.time_ms, r.sync, r.tx, r.value, r.obis, r.unit, r.status,
                         r.errors, energy))
    return (record.payload_text, record.payload, record.sig_section, record.signature,
            record.problems, record.algorithm, record.pagination, readings,
            record.get("GS"), record.get("XC"), record.get("nothing", 7))


def _firmware(text):
    try:
        return "ok", _view(ocmf.parse(text, strict=True))
    except ocmf.OcmfError as exc:
        return "error", str(exc)


@st.composite
def _tm(draw, odd):
    if "tm" not in odd or draw(st.booleans()):  # a real time stamp
        return ocmf.reading(draw(st.integers(0, 2**42)), "C", 0, sync=draw(st.sampled_from(
            "UISR")))[0][1]
    return "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d},{:03d}{}{:02d}{:02d} {}".format(
        draw(st.integers(0, 9999)), draw(st.integers(0, 14)), draw(st.integers(0, 33)),
        draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61)),
        draw(st.integers(0, 999)), draw(st.sampled_from("+-")), draw(st.integers(0, 25)),
        draw(st.integers(0, 61)), draw(st.sampled_from("UISRX")))


_numbers = st.one_of(
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?\Z")
    .map(Number),
    st.integers(-10**6, 10**6),
    st.sampled_from(["012", "00", "-0", "1.", ".5", "-", "1e", "+1", "0x1", "9" * 40, "9" * 41,
                     "1.0000000000000000001", "1.5E2"]).map(Number))


_energies = st.integers(0, 10**9).map(lambda wh: Number(ocmf.kwh_text(wh)))


@st.composite
def _reading(draw, odd):
    if "rv" in odd:
        value = draw(st.one_of(_numbers, _nasty_texts))
    else:
        value = draw(_energies)
    fields = [("TM", draw(_tm(odd))), ("TX", _pick(draw, odd, "tx", "CBE", "XLAP?c")),
              ("RV", value),
              ("RI", _pick(draw, odd, "ri", [ocmf.OBIS_IMPORT, ocmf.OBIS_EXPORT],
                           ["1-0:1.8.0", "é", "", "a|b"])),
              ("RU", _pick(draw, odd, "ru", ["kWh", "Wh"], ["mOhm", "uOhm", "V", "kwh"])),
              ("ST", _pick(draw, odd, "st", "G", "NTQg"))]
    if "ef" in odd and draw(st.booleans()):
        fields.append(("EF", draw(st.sampled_from(["", "E", "Et", "x"]))))
    if "inherit" in odd and draw(st.booleans()):  # omitted fields inherit from the previous
        del fields[draw(st.integers(0, len(fields) - 1))]
    return fields


@st.composite
def records(draw):
    """OCMF text in the meters' layout, with odd values, odd signatures and mutations."""
    odd = draw(st.sets(st.sampled_from(_ASPECTS), max_size=3))
    texts = _nasty_texts if "texts" in odd else _plain_texts
    extra = [("XP", draw(st.integers(-10**6, 10**6))), ("XU", 230000), ("XF", 990)]
    if draw(st.booleans()):
        extra.insert(0, ("XC", draw(st.sampled_from(["ab" * 32, "AB" * 32, "ab"]))))
    if "extra" in odd:  # a charger's session keys, or odd ones
        for key in draw(st.lists(st.sampled_from(["XS", "IS", "YQ", "IL", "XC", "Y|", "TT"]),
                                 min_size=1, max_size=3)):
            extra.append((key, draw(st.one_of(_numbers, texts, st.booleans()))))
    try:
        payload = ocmf.build_payload(
            (draw(texts), draw(texts), draw(texts)),
            _pick(draw, odd, "pg", ["F1", "T77", "F4096"], ["F0", "F123456789012"]),
            (draw(texts), draw(texts), draw(texts)),
            draw(st.lists(_reading(odd), min_size=1, max_size=4)), extra)
    except (ocmf.OcmfError, JsonError):
        payload = '{"FV":"1.0","GS":"m-000000000000","PG":"F1","MS":"x","RD":[{}]}'
    version = _pick(draw, odd, "fv", ["1.0"], ["0.1", "0.4", "1.3", "2.0", "1", "1.4", "0.0",
                                               "1.0 "])
    payload = payload.replace('"FV":"1.0"', f'"FV":"{version}"', 1)
    if "sd" in odd:
        signature = draw(st.text(alphabet="0123456789abcdefABCDEFg", max_size=20))
    else:
        signature = draw(st.binary(min_size=1, max_size=80)).hex()
    algorithm = _pick(draw, odd, "sa", [ocmf.SA_P256], ["ECDSA-secp384r1-SHA256", "RSA"])
    text = f'OCMF|{payload}|{{"SA":"{algorithm}","SD":"{signature}"}}'
    for _ in range(draw(st.integers(1, 2)) if "mutate" in odd else 0):
        position = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(list(_PLAIN + _NASTY + "\t\n")))
        cut = draw(st.integers(0, 1))
        text = text[:position] + char + text[position + cut:]
    return text


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=records())
def test_what_the_fast_reader_accepts_the_firmware_accepts_equally(text):
    fast = ocmf_fast.parse(text)
    if fast is not None:
        assert _firmware(text) == ("ok", _view(fast))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=records())
def test_the_ingest_reader_gives_the_firmware_result_or_refusal(text):
    try:
        got = "ok", _view(ingest_module.parse_record(text))
    except ocmf.OcmfError as exc:
        got = "error", str(exc)
    assert got == _firmware(text)


_METER_TEXTS = [SimDevice(seed=5).record(T0_S + 60 * m, 1000 * m + 7, 3 * m) for m in range(5)]


def test_the_meters_layout_takes_the_fast_reader():
    for text in _METER_TEXTS:
        record = ocmf_fast.parse(text)
        assert record is not None
        assert _view(record) == _firmware(text)[1]
    charger = SimDevice(seed=6).sign_record(9, T0_S, 5, 6, chain_hash="ab" * 32)
    assert ocmf_fast.parse(charger.replace('"XF":990', '"XF":990,"XS":"sess-1","XT":true'))


@pytest.mark.parametrize("old, new, message", [
    ("T", "2026-02-30T", "TM date does not exist"),      # the regular expression takes it
    ('"XP":', '"XC":1,"XC":', "duplicate key 'XC'"),     # so do duplicate vendor keys
    ('"SD":"', '"SD":"a', "signature.SD is not valid hex"),  # and half a byte
])
def test_refusals_past_the_pattern_are_the_firmwares(old, new, message):
    text = _METER_TEXTS[0]
    if old == "T":
        start = text.index('"TM":"') + 6
        text = text[:start] + new + text[start + 11:]
    else:
        text = text.replace(old, new, 1)
    assert ocmf_fast.parse(text) is None
    with pytest.raises(ocmf.OcmfError, match=message):
        ingest_module.parse_record(text)
    with pytest.raises(ocmf.OcmfError, match=message):
        ocmf.parse(text, strict=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    path = tmp_path_factory.mktemp("fastparse")
    rig = Rig(f"sqlite:///{path / 'ledger.db'}", path / "key.pem")
    yield rig
    rig.close()


def _prepared(ingest, topic, payload):
    try:
        kind, record = ingest.prepare(topic, payload, T0_S)
        return kind, record
    except ingest_module.Rejected as exc:
        return exc.reason, exc.detail, exc.device_id, exc.counter


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(position=st.integers(0, 10_000), char=st.sampled_from(list(_PLAIN + _NASTY)),
       cut=st.integers(0, 1), data=st.data())
def test_the_ingest_decides_the_same_without_the_fast_reader(rig, monkeypatch, position, char,
                                                             cut, data):
    """Stage 1 of the ingest (parse, checks, signature) with and without the fast reader."""
    alice = rig.device("alice")
    text = alice.sign_record(data.draw(st.integers(1, 50)), T0_S, data.draw(st.integers(0, 9**9)),
                             5, chain_hash=data.draw(st.sampled_from([None, "ab" * 32])))
    position %= len(text) + 1
    payload = (text[:position] + char + text[position + cut:]).encode()
    with_fast = _prepared(rig.ingest, alice.topic, payload)
    with monkeypatch.context() as patch:
        patch.setattr(ocmf_fast, "parse", lambda text: None)
        without = _prepared(rig.ingest, alice.topic, payload)
    assert with_fast == without
