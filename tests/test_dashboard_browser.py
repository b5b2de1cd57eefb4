"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) against the real
settlement service on Mosquitto, while signed meter records keep arriving: the page loads, its
numbers change between two reads, the map has the members, a screenshot is written; the public
view names no member and says how to sign in; a refused token falls back to the public view.

Event time runs on the records (one simulated minute per feed step), so nothing here asserts on
wall time: each wait has a generous deadline and waits for a state, not a duration."""
import http.client
import json
import os
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt
import pytest

from host_tools.bench.ingest import SimDevice
from host_tools.mosquitto import free_port
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry
from host_tools.settlement.service import Service
from host_tools.sim import community
from tests.conftest import need
from tests.test_ev_support import seed_session

pytestmark = pytest.mark.mosquitto

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Wh per event minute (import, export): two PV households, one storage owner, one consumer.
HOUSES = {"house01": (4, 45), "house02": (12, 0), "house03": (6, 30), "house04": (18, 0)}
STORAGE_OWNER = "house02"
START_S = community.day_start_s() + 10 * 3600
SESSION = "5e" * 16  # one settled charging session (house04 paid, at house02's charger)
WAIT_MS = 90_000
TILES = ("sim-time", "records-settled", "live-export", "live-import", "stored", "traded-today",
         "sessions-count")


class LiveFeed:
    """The households' meters publishing signed records in a thread, one event minute per step,
    until stopped: the dashboard is open while they arrive."""

    def __init__(self, devices, port, step_s=0.1, minutes_max=24 * 60):
        self.devices = devices  # {member: SimDevice}
        self.step_s = step_s
        self.minutes_max = minutes_max
        self.stop_event = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"dashboard-feed-{os.urandom(3).hex()}")
        self.client.max_inflight_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for minute in range(1, self.minutes_max + 1):
            if self.stop_event.is_set():
                return
            for member, device in self.devices.items():
                import_wh, export_wh = HOUSES[member]
                text = device.record(START_S + 60 * minute, import_wh, export_wh)
                self.client.publish(device.topic, text.encode(), qos=1)
            self.stop_event.wait(self.step_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(10)
        self.client.loop_stop()
        self.client.disconnect()


def _get(port, path, token=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _wait_for(condition, what, timeout_s=90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass  # the server is still starting
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _prepare(url, key_path):
    ledger = Ledger.open(url, key_path=key_path)
    try:
        registry = Registry(ledger)
        devices = {}
        for seed, member in enumerate(HOUSES):
            ledger.add_member(member, storage_capacity_wh=20_000 if member == STORAGE_OWNER else 0)
            devices[member] = SimDevice(seed=100 + seed)
            registry.enroll(devices[member].device_id, devices[member].spki_der, "meter", member)
        community.enable_agents(ledger, seed=1)
        seed_session(ledger, "house04", STORAGE_OWNER, session=SESSION)
    finally:
        ledger.close()
    return devices


@pytest.fixture
def live_service(tmp_path, mosquitto):
    """The settlement service with its HTTP API, fed live; yields (port, admin token, db url)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    key_path = str(tmp_path / "service-key.pem")
    devices = _prepare(url, key_path)
    http_port = free_port()
    service = Service(url, mosquitto.url, "demo", key_path=key_path,
                      http_address=f"127.0.0.1:{http_port}",
                      admin_token_path=str(tmp_path / "admin-token"), batch_wait_ms=20)
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    try:
        assert service.connected.wait(15), "the service did not reach the broker"
        _wait_for(lambda: _get(http_port, "/healthz")[0] == 200, "the HTTP API")
        with LiveFeed(devices, mosquitto.port) as feed:
            _wait_for(lambda: json.loads(_get(http_port, "/api/v1/dashboard")[1])
                      ["latest_interval_s"] is not None, "the first closed interval")
            yield http_port, service.admin_token, url, feed
    finally:
        service.stop_event.set()
        worker.join(15)


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium, headless, with a fresh profile directory."""
    need(os.path.exists(CHROMIUM), f"{CHROMIUM} is missing (make setup installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    need(sync_playwright is not None, "playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


def _open(context, url, problems, requests=None):
    page = context.new_page()
    if requests is not None:
        page.on("request", lambda request: requests.append(request))
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url)
    # Selectors and `expect`, not wait_for_function: the page's CSP forbids evaluating strings.
    page.wait_for_selector('body[data-state="ok"]', state="attached", timeout=WAIT_MS)
    return page


def _tiles(page):
    return {name: page.locator(f"#{name}").inner_text() for name in TILES}


def _member_nodes(page):
    return page.eval_on_selector_all("#map g.node.member",
                                     "nodes => nodes.map(node => node.dataset.member)")


def test_the_dashboard_shows_a_live_community(live_service, browser, tmp_path):
    from playwright.sync_api import expect  # importable: the browser fixture checked

    port, admin_token, url, _ = live_service
    base = f"http://127.0.0.1:{port}"
    problems, requests = [], []
    page = _open(browser, f"{base}/#token={admin_token}", problems, requests)
    assert "token" not in page.url, "the token leaves the address bar at once"
    assert page.locator("#viewer").inner_text() == "operator view (admin)"
    assert sorted(_member_nodes(page)) == sorted(HOUSES)
    assert page.locator("#map path.flow.production").count() >= 2, "the PV households export"
    first = _tiles(page)
    for name in ("records-settled", "sim-time"):
        expect(page.locator(f"#{name}")).not_to_have_text(first[name], timeout=WAIT_MS)
    second = _tiles(page)
    assert int(second["records-settled"]) > int(first["records-settled"]) > 0
    assert second["sim-time"] > first["sim-time"], "event time moves on (ISO text sorts)"
    ledger = Ledger.open(url, create=False)
    try:
        settled = ledger.db.one("SELECT COUNT(*) FROM ingest_records WHERE state = 'settled'")[0]
    finally:
        ledger.close()
    assert int(second["records-settled"]) <= settled, "the page shows the database's count"
    assert second["sessions-count"] == "1"
    assert page.locator("#sessions tbody tr").count() == 1
    assert page.locator("#sessions tbody td").first.get_attribute("title") == SESSION
    assert page.locator("#sessions-empty").is_hidden()
    assert page.locator("#prices circle.dot-price, #prices rect.bar-volume, #prices line")\
        .count() >= 3
    assert page.locator("#caps .cap-row").count() == 1 + len(HOUSES)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not problems, problems  # no script error, no refused (CSP) load
    # Every request goes to the service itself; the token travels in a header only, never in
    # a path or query (which the service logs).
    sent = [urllib.parse.urlsplit(request.url) for request in requests]
    assert {f"{url.scheme}://{url.netloc}" for url in sent} == {base}
    assert not any(admin_token in url.path + url.query for url in sent)
    polls = [request for request in requests if request.url.endswith("/api/v1/dashboard")]
    assert polls and all(request.headers.get("authorization") == f"Bearer {admin_token}"
                         for request in polls)


def test_the_public_view_names_nobody_and_a_member_signs_in(live_service, browser):
    port, admin_token, _, _ = live_service
    base = f"http://127.0.0.1:{port}"
    problems = []
    page = _open(browser, f"{base}/", problems)
    assert page.locator("#viewer").inner_text() == "public digest"
    assert _member_nodes(page) == [""], "one node for the whole community"
    assert "#token=" in page.locator("#notice").inner_text()
    content = page.content()
    assert not any(member in content for member in HOUSES) and SESSION not in content
    assert page.locator("#sessions-empty").inner_text().startswith(
        "1 charging session in the community")

    refused_problems = []
    refused = _open(browser, f"{base}/#token=not-a-valid-token-0123456789", refused_problems)
    assert "not accepted" in refused.locator("#notice").inner_text()
    assert refused.locator("body").get_attribute("data-viewer") == "public"
    assert refused_problems and all("401" in text for text in refused_problems), \
        "the one failed load is the refused token's"
    refused.close()

    status, body = _get(port, "/api/v1/members/house01/token", admin_token, method="POST")
    assert status == 201, body
    page.fill("#token-input", json.loads(body)["token"])
    page.click("#signin button")
    page.wait_for_selector('body[data-viewer="member"]', state="attached", timeout=WAIT_MS)
    assert page.locator("#viewer").inner_text() == "signed in as house01"
    assert _member_nodes(page) == ["house01"]
    assert "house02" not in page.content()
    page.click("#signout")
    page.wait_for_selector('body[data-viewer="public"]', state="attached", timeout=WAIT_MS)
    assert not problems, problems
