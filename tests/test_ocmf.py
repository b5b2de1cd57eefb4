"""OCMF building, parsing and verification on CPython; parser robustness under fuzzing."""
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from energo import ocmf, p256, timefmt
from energo.jsonexact import Number

PRIV = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
PUB = p256.public_key(PRIV)
T0_MS = 1796904195000  # 2026-12-10T... UTC


def make_record(counter=1, import_wh=1234, export_wh=0, extra=()):
    readings = [ocmf.reading(T0_MS, "C", import_wh), ocmf.reading(T0_MS, "C", export_wh,
                                                                  ocmf.OBIS_EXPORT)]
    payload = ocmf.build_payload(("energo", "m-0123456789ab", "0.1.0"), f"F{counter}",
                                 ("Energo", "CT", "m-0123456789ab"), readings, extra)
    return ocmf.sign_payload(PRIV, payload)


def test_record_fields_follow_the_wire_contract():
    record = make_record(7, 2935600, 12)
    header, payload, signature = record.split("|")
    assert header == "OCMF"
    assert json.loads(signature) == {"SA": "ECDSA-secp256r1-SHA256",
                                     "SD": json.loads(signature)["SD"]}
    fields = json.loads(payload)
    assert (fields["FV"], fields["PG"], fields["MS"]) == ("1.0", "F7", "m-0123456789ab")
    assert '"RV":2935.600' in payload  # never a float rendering
    rd = fields["RD"][0]
    assert rd["TM"] == timefmt.format_tm(T0_MS, "S") and rd["TM"].endswith("+0000 S")
    assert (rd["RI"], rd["RU"], rd["ST"], rd["TX"]) == ("01-00:01.08.00", "kWh", "G", "C")


def test_parse_keeps_the_signed_bytes_and_exact_values():
    record = make_record(3, 123456789, 1)
    parsed = ocmf.parse(record, strict=True)
    assert record.split("|")[1] == parsed.payload_text
    assert [r.energy_wh() for r in parsed.readings] == [123456789, 1]
    assert parsed.pagination == ("F", 3)
    assert ocmf.verify(parsed, PUB)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**12))
def test_kwh_text_is_exact(energy_wh):
    assert Number(ocmf.kwh_text(energy_wh)).scaled(3) == energy_wh


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 253402214399999), st.sampled_from("UISR"), st.integers(-1439, 1439))
def test_time_stamps_round_trip(epoch_ms, sync, offset_min):
    try:
        text = timefmt.format_tm(epoch_ms, sync, offset_min)
    except ValueError:
        return  # the offset pushed the local date past year 9999
    assert len(text) == 30
    assert timefmt.parse_tm(text) == (epoch_ms, sync)


def test_omitted_reading_fields_inherit_from_the_previous_reading():
    payload = ('{"FV":"1.0","PG":"T1","MS":"x","RD":[{"TM":"2026-11-21T10:03:15,000+0000 S",'
               '"TX":"B","RV":1.5,"RI":"01-00:01.08.00","RU":"kWh","ST":"G"},{"TX":"E","RV":2}]}')
    parsed = ocmf.parse(ocmf.sign_payload(PRIV, payload), strict=True)
    end = parsed.readings[1]
    assert (end.tx, end.unit, end.status, end.energy_wh()) == ("E", "kWh", "G", 2000)
    assert end.time_ms == parsed.readings[0].time_ms


@pytest.mark.parametrize("mutation,reason", [
    (lambda r: r.replace("OCMF|", "OCMX|"), "start with 'OCMF|'"),
    (lambda r: r + "|", "found 4 sections"),
    (lambda r: r.replace('"SD":"', '"SD":"zz'), "not valid hex"),
    (lambda r: r.replace('"PG":"F1"', '"PG":"F01"'), "leading zeros"),
    (lambda r: r.replace('"TX":"C"', '"TX":"Q"', 1), "TX"),
    (lambda r: r.replace("+0000 S", "+00:00 S", 1), "TM"),
    (lambda r: r.replace('"RV":1.234', '"RV":"1.234"'), "RV is a string"),
    (lambda r: r.replace('{"FV"', '{"FV":"1.0","FV"'), "duplicate key"),
])
def test_strict_parse_names_what_is_wrong(mutation, reason):
    with pytest.raises(ocmf.OcmfError, match=reason):
        ocmf.parse(mutation(make_record()), strict=True)


def test_sub_wh_values_are_refused_as_energy():
    payload = ('{"FV":"1.0","PG":"T1","MS":"x","RD":[{"TM":"2026-11-21T10:03:15,000+0000 S",'
               '"TX":"B","RV":0.2596,"RI":"1-b:1.8.0","RU":"kWh","ST":"G"}]}')
    parsed = ocmf.parse(ocmf.sign_payload(PRIV, payload))
    with pytest.raises(ocmf.OcmfError, match="more than 3 decimals"):
        parsed.readings[0].energy_wh()


def test_vendor_keys_must_be_vendor_keys():
    with pytest.raises(ocmf.OcmfError, match="vendor key"):
        make_record(extra=(("AB", 1),))
    with pytest.raises(ocmf.OcmfError, match="cannot encode"):
        make_record(extra=(("XF", 1.5),))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_ocmf_error(data):
    try:
        ocmf.parse(data)
    except ocmf.OcmfError:
        pass


_VALID = make_record()
_SIGNED_END = _VALID.rindex("|")  # the signature section itself is not signed


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, _SIGNED_END), st.characters(max_codepoint=0x2FF)),
                min_size=1, max_size=4))
def test_mutated_records_never_crash_and_never_verify(edits):
    text = list(_VALID)
    for pos, ch in edits:
        text[pos] = ch
    mutated = "".join(text)
    try:
        parsed = ocmf.parse(mutated)
    except ocmf.OcmfError:
        return
    if mutated != _VALID:
        assert not ocmf.verify(parsed, PUB)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_time_parser_only_raises_value_error(text):
    try:
        timefmt.parse_tm(text)
    except ValueError:
        pass


def test_reader_names_stay_reachable_through_ocmf():
    """The reader moved to energo.ocmfread (a meter releases it after boot); host code that
    names ocmf.Record and friends keeps working, and a misspelt name is still an error."""
    from energo import ocmfread

    assert ocmf.Record is ocmfread.Record
    assert ocmf._signature_bytes is ocmfread._signature_bytes
    assert ocmf._check_payload_fields is ocmfread._check_payload_fields
    assert ocmf.KNOWN_SA == ocmfread.KNOWN_SA
    with pytest.raises(AttributeError):
        ocmf.Recrod  # noqa: B018 - the attribute access is the test
    assert not hasattr(ocmf, "load_object")


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="|"),
                     max_size=40)
_NO_CONTROL = st.text(st.characters(min_codepoint=0x20, exclude_characters="|\x7f",
                                    exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_PRINTABLE, _NO_CONTROL, st.lists(st.tuples(st.sampled_from("UVWXYZ"), _NO_CONTROL),
                                         max_size=4, unique_by=lambda kv: kv[0]),
       st.integers(0, 10**12), st.integers(1, 10**6))
def test_build_payload_is_the_json_of_its_fields_in_order(gi, ms, extra, wh, counter):
    """The payload is byte for byte what json.dumps writes for the same fields in the same
    order (ASCII only, no spaces): an oracle independent of how build_payload joins its
    pieces. RV, a number kept as text, stands in as a marker string."""
    readings = [ocmf.reading(T0_MS, "B", wh), ocmf.reading(T0_MS, "B", 0, ocmf.OBIS_EXPORT)]
    extra = [("X" + key, value) for key, value in extra] + [("XP", -counter)]
    payload = ocmf.build_payload((gi, "m-0123456789ab", "0.1.0"), f"T{counter}",
                                 ("Energo", "SDM630", ms), readings, extra)
    fields = {"FV": "1.0", "GI": gi, "GS": "m-0123456789ab", "GV": "0.1.0", "PG": f"T{counter}",
              "MV": "Energo", "MM": "SDM630", "MS": ms}
    fields.update(extra)
    fields["RD"] = [{key: f"@RV{n}@" if key == "RV" else value for key, value in entry}
                    for n, entry in enumerate(readings)]
    expected = json.dumps(fields, separators=(",", ":"))
    for n, entry in enumerate(readings):
        expected = expected.replace(f'"@RV{n}@"', dict(entry)["RV"].text)
    assert payload == expected


@settings(max_examples=300, deadline=None)
@given(st.text(st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                         st.sampled_from('"\\|'),
                         st.sampled_from("\x00\t\x1f\x7f\xe9\u20ac\U0001f600"),
                         st.characters(exclude_categories=("Cs",))), max_size=40))
@example("a\\b")
@example('say "hi"')
@example("a|b")
@example("tab\there")
def test_dump_string_escapes_like_the_character_writer(text):
    """dump_string's shortcut for plain printable ASCII writes what the per-character writer
    writes; '|' is refused either way."""
    from energo.jsonexact import JsonError, _escaped, dump_string

    if "|" in text:
        with pytest.raises(JsonError):
            dump_string(text)
        return
    assert dump_string(text) == _escaped(text)
    if all(" " <= ch <= "~" for ch in text):
        assert dump_string(text) == json.dumps(text)
