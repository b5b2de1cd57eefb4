"""umqtt.simple from PyPI, installed into a board's flash, publishing to a real Mosquitto."""
import threading

import paho.mqtt.client as paho
import pytest

from sim_board import umqtt_install
from tests.conftest import need
from tests.sim_support import CapturedBoard, write_firmware


@pytest.fixture(scope="module")
def umqtt_source(tmp_path_factory):
    try:
        return umqtt_install.extract_simple(umqtt_install.fetch_sdist())
    except umqtt_install.InstallError as exc:
        need(False, f"PyPI not reachable: {exc}")


def test_install_verifies_and_copies_simple_py(tmp_path, umqtt_source, monkeypatch):
    monkeypatch.setenv("ENERGO_CACHE", str(tmp_path / "cache"))
    target = umqtt_install.install(str(tmp_path / "flash"))
    text = open(target).read()
    assert "class MQTTClient" in text and "import usocket" in text
    assert any(p.name.endswith(".tar.gz") for p in (tmp_path / "cache").iterdir())


def test_install_refuses_a_tampered_cache(tmp_path, umqtt_source, monkeypatch):
    monkeypatch.setenv("ENERGO_CACHE", str(tmp_path / "cache"))
    umqtt_install.fetch_sdist()
    cached = next((tmp_path / "cache").iterdir())
    cached.write_bytes(b"not the sdist")
    # A tampered cache is not trusted: the archive is fetched again and verified.
    assert umqtt_install.extract_simple(umqtt_install.fetch_sdist()) == umqtt_source


@pytest.mark.mosquitto
def test_umqtt_inside_the_board_publishes_to_mosquitto(tmp_path, umqtt_source, mosquitto):
    flash = tmp_path / "flash"
    (flash / "lib" / "umqtt").mkdir(parents=True)
    (flash / "lib" / "umqtt" / "simple.py").write_bytes(umqtt_source)
    received = []
    got = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: (received.append(m.payload), got.set())
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("energo/v1/test/#", qos=1)
    sub.loop_start()
    try:
        write_firmware(flash, {"main.py": (
            "import network, time\n"
            "w = network.WLAN(network.STA_IF)\nw.active(True)\nw.connect('ap', 'pw')\n"
            "while not w.isconnected():\n    time.sleep_ms(100)\n"
            "from umqtt.simple import MQTTClient\n"
            f"c = MQTTClient('board1', '{mosquitto.host}', port={mosquitto.port}, keepalive=30)\n"
            "c.connect()\n"
            "c.publish(b'energo/v1/test/board1/rec', b'hello', qos=1)\n"
            "c.disconnect()\nprint('published')\n")})
        with CapturedBoard(flash, speed=1) as cb:
            text = cb.wait_for("published", timeout_s=20)
        assert got.wait(10), text
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert received == [b"hello"]
