"""`energo verify`: production OCMF samples, our own records, exit codes and clear errors."""
import io
import json
import re
import subprocess
import sys

import pytest

from energo import ocmf, p256
from host_tools import cli

PRIV = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
SPKI_HEX = p256.spki_encode(p256.public_key(PRIV)).hex().upper()


def _samples(conformance_dir):
    return json.loads((conformance_dir / "ocmf_samples.json").read_text())


def _own_record(counter, import_wh):
    payload = ocmf.build_payload(("energo", "m-1", "0.1.0"), f"F{counter}", ("Energo", "CT", "m-1"),
                                 [ocmf.reading(1796904195000 + counter * 60000, "C", import_wh)])
    return ocmf.sign_payload(PRIV, payload)


def test_production_samples_valid_and_tampered(conformance_dir, tmp_path, capsys):
    for number, sample in enumerate(_samples(conformance_dir)):
        path = tmp_path / f"sample{number}.txt"
        path.write_text(sample["ocmf"] + "\n")
        code = cli.main(["verify", str(path), "--key", sample["public_key_as_given"]])
        out = capsys.readouterr().out
        if sample["expected_valid"]:
            assert code == 0, (sample["source"], out)
            assert "record 1: VALID" in out
        else:
            assert code == 1, (sample["source"], out)
            assert "INVALID: signature does not match the payload and key" in out
        first = re.search(r'"TM"\s*:\s*"([^"]+)"', sample["ocmf"]).group(1)
        assert first in out  # readings are printed with their time stamps


def test_json_lines_with_keys_and_a_summary(conformance_dir, tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps({"ocmf": s["ocmf"], "public_key": s["public_key_hex"]})
                              for s in _samples(conformance_dir)))
    assert cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.strip().endswith("8 valid, 2 invalid")
    assert "raw r||s" in out  # the non-standard Isabellenhuette signature is flagged


def test_own_records_from_stdin_and_key_file(tmp_path, monkeypatch, capsys):
    records = "\n".join(_own_record(i, 1000 * i) for i in range(1, 4))
    key_file = tmp_path / "key.hex"
    key_file.write_text(SPKI_HEX + "\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(records.encode())))
    assert cli.main(["verify", "-", "--key", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert "3 valid, 0 invalid" in out and "TX=C  3.000 kWh" in out


def test_a_wrong_key_or_garbage_line_is_invalid_not_a_crash(tmp_path, capsys):
    other = p256.spki_encode(p256.public_key(b"\x01" * 32)).hex()
    path = tmp_path / "records.txt"
    path.write_text(_own_record(1, 5) + "\nnot a record\n")
    assert cli.main(["verify", str(path), "--key", other]) == 1
    out = capsys.readouterr().out
    assert "record 1: INVALID: signature does not match" in out
    assert "record 2: INVALID: malformed OCMF" in out


@pytest.mark.parametrize("args,message", [
    (["verify", "/nonexistent/records.txt", "--key", SPKI_HEX], "cannot read"),
    (["verify", "EMPTY", "--key", SPKI_HEX], "no records"),
    (["verify", "RECORDS", "--key", "not-a-key!"], "neither hex, base64 nor PEM"),
])
def test_unreadable_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    (tmp_path / "EMPTY").write_text("\n\n")
    (tmp_path / "RECORDS").write_text(_own_record(1, 1))
    args = [str(tmp_path / a) if a in ("EMPTY", "RECORDS") else a for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_console_script_runs_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "host_tools.cli", "verify",
                             str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
