"""Helper processes of a simulation: the broker and `energo settle`, and a probe on the
service's /healthz and /metrics.

They run as processes of their own, as in production, and so that they get a core of their
own: the emulated boards already keep one interpreter busy.
"""
import contextlib
import pathlib
import socket
import sys
import time


class ProcessError(ValueError):
    """A helper process did not start or died; the message carries its last log line."""



def energo(*args):
    """The command line of an `energo` subcommand run by this interpreter."""
    return [sys.executable, "-c", "import sys; from host_tools.cli import main; sys.exit(main())",
            *args]


class Process:
    """A helper process (broker, settlement service) with its output in a log file."""

    def __init__(self, name, command, log_path):
        self.name, self.command, self.log_path = name, command, pathlib.Path(log_path)
        self.proc = None
        self._log = None

    def __enter__(self):
        import subprocess

        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def check_alive(self):
        if self.proc.poll() is not None:
            raise ProcessError(f"{self.name} exited with status {self.proc.returncode}: "
                           f"{self.log_tail()}")

    def log_tail(self):
        try:
            return self.log_path.read_text(errors="replace").strip().splitlines()[-1][:300]
        except (OSError, IndexError):
            return "(no output)"

    def wait_port(self, port, timeout_s=20.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise ProcessError(f"{self.name} did not listen on port {port} within {timeout_s:g} s")

    def __exit__(self, *exc):
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()


class ServiceProbe:
    """The running settlement service as seen from outside: /healthz and /metrics."""

    TIMEOUT_S = 5.0

    def __init__(self, base_url, process):
        self.base_url = base_url
        self.process = process
        self._last = {"settled": 0, "intervals_closed": 0, "queue": 0}

    def _get(self, path):
        import urllib.request

        with urllib.request.urlopen(self.base_url + path, timeout=self.TIMEOUT_S) as response:
            return response.status, response.read(1_000_000).decode()

    def wait_healthy(self, timeout_s=30.0):
        import urllib.error

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.check_alive()
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self._get("/healthz")[0] == 200:
                    return
            time.sleep(0.1)
        raise ProcessError(f"the settlement service did not connect within {timeout_s:g} s: "
                       f"{self.process.log_tail()}")

    def counts(self):
        """settled / intervals_closed / queue from /metrics; the last values if it is busy."""
        try:
            _, text = self._get("/metrics")
        except OSError:
            return dict(self._last)
        counts = dict(self._last)
        for line in text.splitlines():
            for key, prefix in (("settled", 'energo_ingest_total{event="settled"} '),
                                ("intervals_closed",
                                 'energo_ingest_total{event="intervals_closed"} '),
                                ("queue", "energo_ingest_queue_messages ")):
                if line.startswith(prefix):
                    with contextlib.suppress(ValueError):
                        counts[key] = int(float(line[len(prefix):]))
        self._last = counts
        return dict(counts)
