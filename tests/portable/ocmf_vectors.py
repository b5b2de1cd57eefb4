# OCMF build/sign/parse/verify and TM formatting; output must match CPython byte for byte.
import json
import sys

import check

from energo import ocmf, p256, timefmt

data_dir = sys.argv[1]

# Time stamps round-trip across leap years, centuries and offsets.
for ms in (0, 951782400000, 951868799999, 1582934400000, 1796904195123, 4102444800000,
           253402214400000):
    for offset in (0, 60, -330, 765):
        text = timefmt.format_tm(ms, "S", offset)
        check.eq(timefmt.parse_tm(text), (ms, "S"), "TM round trip " + text)
print(timefmt.format_tm(1796904195123, "S"), timefmt.format_tm(1796904195123, "U", 120))
check.raises(ValueError, lambda: timefmt.format_tm(253402300799999, "S", 60), "year 10000")
for bad in ("2026-02-29T00:00:00,000+0000 S", "2026-11-21T24:00:00,000+0000 S",
            "2026-11-21T10:03:15.000+0000 S", "2026-11-21T10:03:15,000+00:00 S",
            "2026-11-21T10:03:15,000+0000 Q", "2026-11-21T10:03:15,000+0000"):
    print("bad TM:", check.raises(ValueError, lambda: timefmt.parse_tm(bad), bad))

# Build and sign deterministic records; RV text comes from integer Wh.
priv = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
pub = p256.public_key(priv)
for counter, import_wh, export_wh in ((1, 0, 0), (2, 1, 999), (3, 123456789, 1000)):
    readings = [ocmf.reading(1796904195000 + counter * 60000, "C", import_wh),
                ocmf.reading(1796904195000 + counter * 60000, "C", export_wh, ocmf.OBIS_EXPORT)]
    payload = ocmf.build_payload(("energo-meter", "m-0123456789ab", "0.1.0"), "F%d" % counter,
                                 ("Energo", "CT", "m-0123456789ab"), readings,
                                 extra=(("XC", "ab" * 32), ("XP", -1500), ("XN", "Zürich \u20ac")))
    record = ocmf.sign_payload(priv, payload)
    print(record)
    parsed = ocmf.parse(record, strict=True)
    check.eq(parsed.payload_text, payload, "payload kept verbatim")
    check.eq(parsed.pagination, ("F", counter), "PG")
    check.eq([r.energy_wh() for r in parsed.readings], [import_wh, export_wh], "RV exact")
    check.eq(parsed.get("XN"), "Zürich \u20ac", "non-ASCII vendor string")
    check.true(ocmf.verify(parsed, pub), "own record verifies")
    check.true(ocmf.verify(parsed, p256.spki_encode(pub)), "verifies with SPKI key")
    tampered = record.replace('"XP":-1500', '"XP":-1501')
    check.eq(ocmf.verify(ocmf.parse(tampered), pub), False, "tampered record fails")

# Production samples: the same parse on both interpreters.
with open(data_dir + "/ocmf_samples.json") as f:
    samples = json.load(f)
for sample in samples:
    rec = ocmf.parse(sample["ocmf"])
    values = [(r.time_ms, r.sync, r.tx, r.value.text if r.value else None, r.unit, r.status)
              for r in rec.readings]
    print(rec.algorithm, rec.pagination, values, rec.problems)
    if rec.algorithm == ocmf.SA_P256 and sample["keyfmt"] == "DER-SPKI":
        key = bytes.fromhex(sample["public_key_hex"])
        check.eq(ocmf.verify(rec, key), sample["expected_valid"], "sample " + sample["source"])

for bad in ("", "OCMF|{}|{}", "OCMF|{\"RD\":[]}|{\"SD\":\"00\"}", "OCMF|{\"RD\":[{}]}|{}",
            "XCMF|{\"RD\":[{}]}|{\"SD\":\"00\"}", "OCMF|{\"RD\":[1]}|{\"SD\":\"00\"}",
            "OCMF|{\"RD\":[{}]}|{\"SD\":\"zz\"}", "OCMF|{\"RD\":[{}],}|{\"SD\":\"00\"}",
            "OCMF|{\"RD\":[{}]}|{\"SD\":\"00\",\"SE\":\"b32\"}", "OCMF|{\"a\":1,\"a\":2}|{}",
            "OCMF|{\"RD\":[{}]}|{\"SD\":\"00\"}|x", "OCMF|[[[[[[[[1]]]]]]]]|{}"):
    print("bad record:", check.raises(ocmf.OcmfError, lambda: ocmf.parse(bad), bad))
check.raises(ocmf.OcmfError, lambda: ocmf.parse('OCMF|{"PG":"T01","RD":[{}]}|{"SD":"00"}',
                                               strict=True), "strict parse")
check.raises(ocmf.OcmfError, lambda: ocmf.kwh_text(-1), "negative energy")

# The reader is released after a meter's boot (MicroPython only) and comes back on the next
# parse, with the same results.
import energo  # noqa: E402 - here because this part is about releasing modules

first = ocmf.parse(samples[0]["ocmf"])
energo.release("ocmfread", "jsonread")
released = sys.implementation.name == "micropython"
check.eq("energo.ocmfread" not in sys.modules, released, "reader released on MicroPython only")
check.eq("energo.jsonread" not in sys.modules, released, "JSON reader released too")
again = ocmf.parse(samples[0]["ocmf"])
check.eq(again.payload_text, first.payload_text, "parse after release")
check.eq([r.value for r in again.readings], [r.value for r in first.readings], "readings")
check.true(isinstance(again, ocmf.Record), "ocmf.Record is the reader's Record")
check.raises(ocmf.OcmfError, lambda: ocmf.build_payload(("a|b", "", ""), "F1", ("", "", ""),
                                                        [ocmf.reading(0, "B", 1)]), "pipe")
check.done()
