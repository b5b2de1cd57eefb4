"""`energo demo` (what `make run` runs for now): signs, verifies, and catches tampering."""
from energo import ocmf
from host_tools import cli, demo


def test_demo_signs_verifiable_records(tmp_path, capsys):
    assert cli.main(["demo", "--records", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("VALID") == 4 and "REJECTED" in out
    records = (tmp_path / "records.txt").read_text().splitlines()
    assert [ocmf.parse(r, strict=True).pagination for r in records] == [("F", i) for i in range(1, 5)]
    assert cli.main(["verify", str(tmp_path / "records.txt"),
                     "--key", str(tmp_path / "public_key.hex")]) == 0


def test_demo_registers_are_monotonic():
    _, _, records = demo.make_records(b"\x07" * 32, 20)
    imports = [ocmf.parse(r).readings[0].energy_wh() for r in records]
    assert imports == sorted(imports) and len(set(imports)) == len(imports)


def test_demo_refuses_bad_arguments(capsys):
    assert cli.main(["demo", "--records", "0"]) == 2
    assert "between 1 and 1000" in capsys.readouterr().err
