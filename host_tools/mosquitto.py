"""A private Mosquitto on a free loopback port, for benchmarks and local simulations."""
import shutil
import socket
import subprocess
import tempfile
import time


def binary():
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """`with Mosquitto() as m:` runs `mosquitto -c` with an anonymous loopback listener
    (plus `extra_config` lines) and stops it on exit. `m.port`, `m.url`."""

    def __init__(self, extra_config="", port=None, queued_max=100000):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_config = extra_config
        self.queued_max = queued_max
        self._dir = None
        self._proc = None

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    def __enter__(self):
        exe = binary()
        if exe is None:
            raise RuntimeError("mosquitto is not installed (Debian package: mosquitto)")
        self._dir = tempfile.TemporaryDirectory(prefix="energo-mosquitto-")
        conf = f"{self._dir.name}/mosquitto.conf"
        with open(conf, "w") as f:
            f.write(f"listener {self.port} {self.host}\nallow_anonymous true\n"
                    f"persistence false\nmax_queued_messages {self.queued_max}\n{self.extra_config}")
        self._log = open(f"{self._dir.name}/mosquitto.log", "wb")
        self._proc = subprocess.Popen([exe, "-c", conf], stdout=self._log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._log.close()
            self._dir.cleanup()
            self._dir = None
