"""Build the firmware's ROMFS image: the code a board runs in place from flash.

A module imported from an .mpy file on the filesystem has its bytecode and constants copied
into the heap. MicroPython 1.25+ can instead mount a read-only image from a flash partition at
/rom, with /rom and /rom/lib on sys.path ahead of /lib; .mpy files there execute where they
lie, and their str/bytes constants are read from flash. For the meter role that is ~35 KB of
an ESP32's ~110 KB heap, and the precomputed P-256 comb table (energo.p256comb, generated
here, never kept in the repository) costs no heap at all.

The image holds lib/energo/*.mpy, lib/energo/p256comb.mpy and (umqtt=True) lib/umqtt/simple.mpy.
boot.py and main.py stay on the filesystem. The image itself is made by the real
`mpremote romfs build`, the tool that also deploys it.
"""
import os
import subprocess
import tempfile

from host_tools import flashing

FIRMWARE_DIR = flashing.FIRMWARE_DIR
ROMFS_HEADER = b"\xd2\xcd\x31"  # what every image starts with (mpremote checks it on deploy)
BUILD_TIMEOUT_S = 120
IMAGE_SUFFIXES = (".romfs", ".img")  # `mpremote romfs deploy` takes only these as an image


class RomfsError(flashing.FlashError):
    """The image could not be built; the message says why."""


def build_image(out_path, march="xtensawin", umqtt=True, log=None, firmware_dir=FIRMWARE_DIR):
    """Compile the firmware and write its ROMFS image to out_path.

    march: mpy-cross's architecture (None: untagged, for MicroPython's WebAssembly port).
    Returns {"path", "bytes", "files"}: the image, its size and the paths inside it.
    """
    log = log or (lambda text: None)
    out_path = os.fspath(out_path)
    if not out_path.endswith(IMAGE_SUFFIXES):
        raise RomfsError(f"ROMFS image {out_path}: the name must end with "
                         f"{' or '.join(IMAGE_SUFFIXES)} (mpremote deploys only those)")
    package = os.path.join(firmware_dir, "lib", "energo")
    if not os.path.isdir(package):
        raise RomfsError(f"no firmware package at {package}")
    from energo import p256

    with tempfile.TemporaryDirectory(prefix="energo-romfs-") as work:
        tree = os.path.join(work, "image")
        extra = os.path.join(work, "extra")  # generated and fetched sources
        files = flashing.compile_tree(package, os.path.join(tree, "lib", "energo"),
                                      march=march)
        files = ["lib/energo/" + name for name in files]
        _write(os.path.join(extra, "energo", "p256comb.py"),
               p256.comb_module_source().encode())
        if umqtt:
            source, label = flashing.umqtt_source()
            _write(os.path.join(extra, "umqtt", "simple.py"), source)
            log(f"umqtt.simple from {label}")
        files += ["lib/" + name for name in flashing.compile_tree(
            extra, os.path.join(tree, "lib"), march=march)]
        _mpremote_build(tree, out_path)
    with open(out_path, "rb") as f:
        head = f.read(len(ROMFS_HEADER))
    if head != ROMFS_HEADER:
        raise RomfsError(f"mpremote wrote {out_path}, but it is not a ROMFS image")
    size = os.path.getsize(out_path)
    log(f"ROMFS image of {len(files)} modules ({'-march=' + march if march else 'no -march'}): "
        f"{size} bytes")
    return {"path": out_path, "bytes": size, "files": sorted(files)}


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _mpremote_build(tree, out_path):
    """`mpremote romfs --no-mpy -o OUT build TREE` (the tree is compiled already)."""
    exe = flashing._tool("mpremote")
    try:
        done = subprocess.run([exe, "romfs", "--no-mpy", "-o", out_path, "build", tree],
                              capture_output=True, text=True, errors="replace",
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RomfsError(f"mpremote romfs build timed out after {BUILD_TIMEOUT_S} s") from None
    except OSError as exc:
        raise RomfsError(f"cannot run mpremote: {exc}") from None
    if done.returncode != 0 or not os.path.isfile(out_path):
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-2:]
        raise RomfsError(f"mpremote romfs build failed: {' / '.join(tail) or 'no output'}")


def build_empty_image(out_path):
    """An image with no files: deployed when a board with a partition gets its code as files,
    so an older image's modules (on sys.path before /lib) cannot shadow the new ones."""
    out_path = os.fspath(out_path)
    with tempfile.TemporaryDirectory(prefix="energo-romfs-") as work:
        _mpremote_build(work, out_path)
    return out_path
