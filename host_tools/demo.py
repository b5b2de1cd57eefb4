"""The signing demo behind `make run` until the community simulation lands.

It does on the host what a meter does on the board — generate a key with the
firmware's own pure-Python P-256, build and sign OCMF readings from integer Wh —
then verifies every record with OpenSSL, as the settlement service will, and
shows that a changed digit is caught.
"""
import pathlib

from energo import identity, ocmf, p256
from host_tools import verify

FIRMWARE_NAME = "energo-meter"
FIRMWARE_VERSION = "0.1.0"
START_MS = 1795251600000  # 2026-11-21T09:00:00Z
INTERVAL_MS = 60000


def make_records(priv, count, import_start_wh=2935600):
    """`count` signed periodic records (F1..Fn) with monotonic import/export registers."""
    pub = p256.public_key(priv)
    dev = identity.device_id(pub, "meter")
    records = []
    import_wh, export_wh = import_start_wh, 0
    for counter in range(1, count + 1):
        import_wh += 37 + 11 * (counter % 3)  # ~2.2-3.5 kW of household load
        export_wh += 5 * (counter % 2)
        time_ms = START_MS + counter * INTERVAL_MS
        readings = [ocmf.reading(time_ms, "C", import_wh, ocmf.OBIS_IMPORT),
                    ocmf.reading(time_ms, "C", export_wh, ocmf.OBIS_EXPORT)]
        payload = ocmf.build_payload((FIRMWARE_NAME, dev, FIRMWARE_VERSION), f"F{counter}",
                                     ("Energo", "CT-ADC", dev), readings)
        records.append(ocmf.sign_payload(priv, payload))
    return dev, pub, records


def run(out_dir, count=5, echo=print):
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv = p256.generate_private_key()
    dev, pub, records = make_records(priv, count)
    spki_hex = p256.spki_encode(pub).hex().upper()
    (out_dir / "records.txt").write_text("\n".join(records) + "\n")
    (out_dir / "public_key.hex").write_text(spki_hex + "\n")
    echo(f"device {dev}: new P-256 key (private key stays in memory; public key below)")
    echo(f"public key (DER SPKI): {spki_hex}")
    echo("")
    all_valid = True
    for record in records:
        result = verify.verify_text(record, bytes.fromhex(spki_hex))
        all_valid &= result.valid
        parsed = result.record
        imp, exp = (r.energy_wh() for r in parsed.readings)
        echo(f"{parsed.get('PG'):>4}  {parsed.readings[0].fields['TM']}  import {imp:>9} Wh"
             f"  export {exp:>5} Wh  {'VALID' if result.valid else 'INVALID'}")
    forged = records[-1].replace(ocmf.kwh_text(imp), ocmf.kwh_text(imp - 1000))
    caught = not verify.verify_text(forged, bytes.fromhex(spki_hex)).valid
    echo("")
    echo(f"a record with 1 kWh taken off the register: {'REJECTED' if caught else 'ACCEPTED'}")
    echo(f"records: {out_dir / 'records.txt'}; check them with: "
         f"energo verify {out_dir / 'records.txt'} --key {out_dir / 'public_key.hex'}")
    return all_valid and caught
