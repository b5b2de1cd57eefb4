"""The firmware's ROMFS image on real MicroPython (WebAssembly port): it imports from /rom, signs
RFC 6979's vector with the precomputed comb table, and leaves far more heap than .mpy files."""
import json
import shutil
import subprocess

import pytest

from host_tools import flashing, micropython, romfs
from tests.conftest import need
from tests.test_provision_standin import ROOT

FIRMWARE = ROOT / "firmware"

# Runs on MicroPython: where the code came from, and a signature made with the ROM comb table.
_SIGN = """import sys
import energo.p256comb
from energo import p256
priv = bytes.fromhex(sys.argv[1])
sig = p256.sign(priv, b"sample")
print("energo-test", p256.__file__, energo.p256comb.__file__, p256._comb[0],
      energo.p256comb.ROWS, sig.hex())
"""

# Runs on MicroPython: the heap that importing the meter role's code takes.
_HEAP = """import gc, sys
gc.collect()
before = gc.mem_alloc()
import energo.meter
gc.collect()
print("energo-test", sys.modules["energo.meter"].__file__, gc.mem_alloc() - before)
"""


def _run(tmp_path, script, code_args, *args):
    reason = micropython.unavailable_reason()
    need(reason is None, reason or "")
    path = tmp_path / "script.py"
    path.write_text(script)
    done = subprocess.run(["node", str(micropython.RUN_MJS), "--heap", str(512 * 1024),
                           *code_args, str(path), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("energo-test ")]
    return line.split()[1:]


def test_build_image_lists_the_package_and_the_comb_table(tmp_path):
    image = romfs.build_image(tmp_path / "fw.romfs", march=None, umqtt=False)
    assert image["path"] == str(tmp_path / "fw.romfs")
    assert image["bytes"] == (tmp_path / "fw.romfs").stat().st_size
    expected = sorted("lib/energo/" + p.with_suffix(".mpy").name
                      for p in (FIRMWARE / "lib" / "energo").glob("*.py"))
    assert image["files"] == sorted(expected + ["lib/energo/p256comb.mpy"])
    assert (tmp_path / "fw.romfs").read_bytes()[:3] == romfs.ROMFS_HEADER
    assert not (FIRMWARE / "lib" / "energo" / "p256comb.py").exists()  # generated, never kept


def test_bad_firmware_or_output_name_is_a_clear_error(tmp_path):
    broken = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "lib" / "energo" / "oops.py").write_text("match 1:\n    case 1:\n        pass\n")
    with pytest.raises(flashing.FlashError, match="MicroPython rejects oops.py"):
        romfs.build_image(tmp_path / "fw.romfs", umqtt=False, firmware_dir=str(broken))
    assert not (tmp_path / "fw.romfs").exists()
    with pytest.raises(romfs.RomfsError, match="must end with .romfs"):
        romfs.build_image(tmp_path / "fw.bin", umqtt=False)
    with pytest.raises(romfs.RomfsError, match="no firmware package"):
        romfs.build_image(tmp_path / "fw.romfs", umqtt=False, firmware_dir=str(tmp_path))


@pytest.mark.mpy
def test_the_image_signs_rfc6979_from_rom(tmp_path, conformance_dir):
    rfc = json.loads((conformance_dir / "rfc6979_A25_p256_sha256.json").read_text())
    image = romfs.build_image(tmp_path / "fw.romfs", march=None, umqtt=False)
    p256_file, comb_file, rows_used, rows_rom, sig = _run(
        tmp_path, _SIGN, ["--romfs", image["path"]], rfc["private_key_x"])
    assert p256_file == "/rom/lib/energo/p256.mpy"
    assert comb_file == "/rom/lib/energo/p256comb.mpy"
    assert rows_used == rows_rom  # signed with the table in the image, not one built in RAM
    assert sig == rfc["sample"]["der"].lower()


@pytest.mark.mpy
def test_code_in_romfs_takes_far_less_heap_than_mpy_files(tmp_path):
    image = romfs.build_image(tmp_path / "fw.romfs", march=None, umqtt=False)
    rom_file, rom_heap = _run(tmp_path, _HEAP, ["--romfs", image["path"]])
    files = tmp_path / "files"
    flashing.compile_tree(str(FIRMWARE / "lib"), str(files), march=None)
    file_file, file_heap = _run(tmp_path, _HEAP, ["--mount", f"{files}:/lib"])
    assert rom_file.startswith("/rom/lib/") and file_file.startswith("/lib/")
    assert int(rom_heap) < 0.7 * int(file_heap), (rom_heap, file_heap)
