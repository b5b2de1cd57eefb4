"""Test helpers for flash/provision/console, and tests that the helpers themselves are strict.

`StandInService` answers `POST /api/v1/devices` exactly as the enrollment contract says and
refuses anything that departs from it, so `energo provision` is tested against the contract
(the real service is written separately). `EmulatedBoard` runs `python -m sim_board run` in a
subprocess and gives its serial port, as a user would get /dev/ttyUSB0.
"""
import base64
import functools
import hashlib
import hmac
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from energo import identity, p256
from tests.conftest import need

ROOT = pathlib.Path(__file__).resolve().parent.parent
WIFI = {"ssid": "energo-sim", "password": "sim-password"}
HOUSE = {"sites": {"house-1": {"load": {"base_w": 350}, "pv_kwp": 5.0}}}
SDM630 = [{"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600}]
REQUEST_FIELDS = {"device_id", "public_key", "role", "member"}


@functools.lru_cache(maxsize=1)
def _umqtt_problem():
    from sim_board import umqtt_install

    try:
        umqtt_install.fetch_sdist()
    except umqtt_install.InstallError as exc:
        return str(exc)
    return None


def require_umqtt():
    """Flashing an emulated board installs umqtt.simple from PyPI's verified sdist."""
    problem = _umqtt_problem()
    need(problem is None, f"PyPI not reachable for umqtt.simple: {problem}")


def mqtt_password(secret, username):
    """As the broker contract derives it: HMAC-SHA256, base64url without padding, 32 chars."""
    mac = hmac.new(secret, username.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:32]


class StandInService:
    """The enrollment endpoint per contract, on a free loopback port; records what it got."""

    def __init__(self, token="admin-token-1", members=("alice", "bob")):
        self.token = token
        self.members = set(members)
        self.secret = os.urandom(32)
        self.devices = {}  # device id -> request body
        self.requests = []  # (path, headers dict, body bytes)
        self.override = None  # dict to answer instead (for tests of the client's checks)
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 65536))
                service.requests.append((self.path, dict(self.headers), body))
                status, answer = service.answer(self.path, self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path, headers, body):
        def error(status, code, message):
            return status, {"error": code, "message": message}

        if path != "/api/v1/devices":
            return error(404, "not_found", path)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "unauthorized", "admin token required")
        if headers.get("Content-Type") != "application/json":
            return error(415, "bad_request", "JSON body required")
        try:
            req = json.loads(body)
        except ValueError:
            return error(400, "bad_request", "body is not JSON")
        if not isinstance(req, dict) or set(req) != REQUEST_FIELDS:
            return error(400, "bad_request", f"fields must be {sorted(REQUEST_FIELDS)}")
        if req["role"] not in ("meter", "charger"):
            return error(400, "bad_role", req["role"])
        try:
            pub = p256.spki_decode(bytes.fromhex(req["public_key"]))
        except (ValueError, TypeError):
            return error(400, "bad_key", "public_key is not a P-256 SPKI in hex")
        if identity.device_id(pub, req["role"]) != req["device_id"]:
            return error(400, "id_mismatch", "device_id is not derived from the key")
        if req["member"] not in self.members:
            return error(404, "unknown_member", req["member"])
        known = self.devices.get(req["device_id"])
        if known is not None and known != req:
            return error(409, "device_taken", req["device_id"])
        self.devices[req["device_id"]] = req
        if self.override is not None:
            return 201, self.override
        return 201, {"device_id": req["device_id"], "role": req["role"],
                     "member": req["member"], "mqtt_username": req["device_id"],
                     "mqtt_password": mqtt_password(self.secret, req["device_id"])}


class EmulatedBoard:
    """`python -m sim_board run` in a subprocess; its console mirror is collected."""

    def __init__(self, tmp_path, board="esp32-meter-sdm630", serial="pty", speed=10,
                 flash=None, world=None, name="emu"):
        self.flash = flash or tmp_path / f"{name}-flash"
        self.flash.mkdir(exist_ok=True)
        world_path = tmp_path / f"{name}-world.json"
        world_path.write_text(json.dumps(world if world is not None else {
            "wifi": WIFI, "world": {"seed": 7, "scenario": HOUSE, "site": "house-1",
                                    "meters": SDM630}}))
        board_path = board if os.path.isabs(str(board)) else ROOT / "boards" / f"{board}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim_board", "run", "--board", str(board_path), "--flash",
             str(self.flash), "--world", str(world_path), "--serial", serial,
             "--speed", str(speed)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first = self.proc.stdout.readline().decode()
        if not first.startswith("serial: "):
            self.close()
            raise AssertionError(f"emulator did not start: {first!r}")
        self.port = first.split(" ", 1)[1].strip()
        self.output = bytearray()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def text(self):
        return bytes(self.output).decode(errors="replace")

    def wait_output(self, needle, timeout_s=20, start=0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle.encode() in self.output[start:]:
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not on the console: {self.text()[-2000:]!r}")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def service():
    svc = StandInService()
    yield svc
    svc.close()


def _post(url, body, token="admin-token-1", content_type="application/json"):
    request = urllib.request.Request(url + "/api/v1/devices", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": content_type,
                                                             "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _device(role="meter"):
    pub = p256.public_key(p256.generate_private_key())
    return identity.device_id(pub, role), p256.spki_encode(pub).hex().upper()


def test_stand_in_enrolls_per_contract_and_is_idempotent(service):
    device_id, key = _device()
    body = {"device_id": device_id, "public_key": key, "role": "meter", "member": "alice"}
    status, answer = _post(service.url, body)
    assert status == 201
    assert answer["mqtt_username"] == device_id
    assert answer["mqtt_password"] == mqtt_password(service.secret, device_id)
    assert len(answer["mqtt_password"]) == 32
    assert _post(service.url, body) == (201, answer)


def test_stand_in_refuses_what_the_contract_refuses(service):
    device_id, key = _device()
    other_id, other_key = _device()
    good = {"device_id": device_id, "public_key": key, "role": "meter", "member": "alice"}
    assert _post(service.url, good, token="wrong")[1]["error"] == "unauthorized"
    assert _post(service.url, good, content_type="text/plain")[0] == 415
    assert _post(service.url, {**good, "extra": 1})[1]["error"] == "bad_request"
    assert _post(service.url, {**good, "public_key": key[:-2]})[1]["error"] == "bad_key"
    assert _post(service.url, {**good, "device_id": other_id})[1]["error"] == "id_mismatch"
    assert _post(service.url, {**good, "member": "mallory"})[1]["error"] == "unknown_member"
    assert _post(service.url, {**good, "role": "vehicle"})[1]["error"] == "bad_role"
    assert service.devices == {}
    assert _post(service.url, good)[0] == 201
    assert _post(service.url, {**good, "member": "bob"})[1]["error"] == "device_taken"
    assert _post(service.url, {**good, "public_key": other_key})[1]["error"] == "id_mismatch"
    assert list(service.devices) == [device_id]
