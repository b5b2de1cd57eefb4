"""Real services for tests: a private Mosquitto per test, scratch PostgreSQL databases."""
import contextlib
import os
import socket
import subprocess
import time
import uuid

from host_tools import mosquitto
from host_tools.mosquitto import free_port

__all__ = ["Mosquitto", "free_port", "mosquitto_binary", "postgres_admin_url",
           "postgres_reachable", "scratch_database", "wait_for_port"]


def wait_for_port(host, port, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def mosquitto_binary():
    return mosquitto.binary()


class Mosquitto:
    """Start `mosquitto -c CONF` on a free loopback port; stop it on exit.

    `extra_config` lines are appended to the generated config (for ACLs and
    password files); `conf_path` may name a complete config instead.
    """

    def __init__(self, workdir, extra_config="", conf_path=None, port=None):
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or mosquitto.free_port()
        self.extra_config = extra_config
        self.conf_path = conf_path
        self.proc = None

    def __enter__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.conf_path is None:
            self.conf_path = self.workdir / "mosquitto.conf"
            self.conf_path.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                + self.extra_config
            )
        self.log = open(self.workdir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf_path)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        if not wait_for_port(self.host, self.port):
            self.__exit__(None, None, None)
            raise RuntimeError(f"mosquitto did not start; see {self.workdir / 'mosquitto.log'}")
        return self

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def postgres_admin_url():
    return os.environ.get("ENERGO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_reachable(url):
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


@contextlib.contextmanager
def scratch_database(admin_url):
    import psycopg

    name = "energo_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wipe_database(url):
    """Empty a scratch database so that the next open starts from nothing, whatever tables the
    test before made: PostgreSQL drops and recreates its public schema, SQLite loses its file."""
    from host_tools.settlement.store import Database, parse_url

    backend, target = parse_url(url)
    if backend == "sqlite":
        for path in (target, target + "-wal", target + "-shm", target + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    db = Database(url)
    try:
        with db.transaction():
            # A connection a failed test left open must not hang the suite.
            db.execute("SET LOCAL lock_timeout = '10s'")
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
    finally:
        db.close()
