"""The vehicle on an emulated board (the world-scenario option and the UART peer) and the
world's EV model hooks it drives: plug and unplug at chosen times, pause, ignoring the limit."""
import json
import pathlib
import time

import pytest

from energo import evproto, identity
from sim_board.vehicle_link import ev_control
from sim_board.world import World
from tests.test_vehicle import (
    COMMUNITY_PRIV,
    COMMUNITY_PUB,
    FEE,
    START_S,
    T0,
    ScriptedCharger,
    _key,
)


def test_scenario_vehicle_on_an_emulated_boards_uart(tmp_path):
    """The world-scenario option wires the vehicle to the board's vehicle_link UART: a board
    program sends an offer and gets the vehicle's signed auth back in virtual time."""
    from sim_board.board import Board, attach_world

    board_cfg = json.loads((pathlib.Path(__file__).parents[1] / "boards" /
                            "esp32-evse.json").read_text())
    charger = ScriptedCharger.__new__(ScriptedCharger)
    charger.priv, pub = _key(3)
    charger.id, charger.spki, charger.counter = identity.device_id(pub, "charger"), \
        evproto.spki_hex(pub), 0
    charger.clock = lambda: T0 + 1
    charger.cert = evproto.sign_message(COMMUNITY_PRIV, {
        "t": "cert", "community": "demo", "station": charger.id, "pub": charger.spki,
        "owner": "olga", "fee": FEE, "exp": T0 + 86400})
    sent = []
    charger.send = lambda kind, **fields: sent.append(evproto.frame(kind, **fields))
    charger.offer()
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import machine, time\n"
        "u = machine.UART(1, baudrate=115200, tx=32, rx=33)\n"
        "time.sleep_ms(500)\n"  # the vehicle plugs in at 0.2 s
        f"u.write({sent[0]!r})\n"
        "buf = b''\n"
        "t0 = time.ticks_ms()\n"
        "while b'\\n' not in buf and time.ticks_diff(time.ticks_ms(), t0) < 5000:\n"
        "    buf += u.read() or b''\n"
        "    time.sleep_ms(2)\n"
        "print('AUTH', time.ticks_diff(time.ticks_ms(), t0), buf.decode().strip())\n")
    scenario = {"start_epoch_s": T0, "world": {
        "seed": 1, "site": "c1",
        "scenario": {"start_s": START_S, "sites": {"c1": {"load": None, "ev": {
            "battery_kwh": 40.0, "sessions": []}}}},
        "vehicle": {"community_key": evproto.spki_hex(COMMUNITY_PUB), "wallet": "alice",
                    "seed": 5, "plugs": [{"at_s": 0.2, "soc": 0.5}]}}}
    out = bytearray()
    board = Board(str(flash), board_cfg, scenario, speed=1.0, seed=1, echo=out.extend)
    bw = attach_world(board, scenario)
    try:
        board.start()
        deadline = time.monotonic() + 20
        while b"AUTH" not in out and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        board.stop()
        bw.close()
    text = out.decode(errors="replace")
    assert "AUTH" in text, text
    ms, line = text.split("AUTH ", 1)[1].split(" ", 1)
    frame = evproto.read_frame(line.splitlines()[0].encode())
    auth = evproto.open_message(frame["auth"], "auth", bw.vehicle.pub_hex)
    assert auth["nonce"] == charger.nonce and auth["station"] == charger.id
    # at least the line time of the ~700-byte auth at 115200 baud, in the board's time
    assert int(ms) >= len(line) * 10 * 1000 // 115200
    assert bw.vehicle.session["state"] == "authorizing"


@pytest.mark.parametrize(("vehicle", "match"), [
    ({"wallet": "alice"}, "community_key"),
    ({"community_key": evproto.spki_hex(COMMUNITY_PUB), "wallet": "a", "plugs": [{"at": 1}]},
     r"plugs\[0\]"),
    ({"community_key": evproto.spki_hex(COMMUNITY_PUB), "wallet": "a", "colour": "red"},
     "colour"),
])
def test_scenario_vehicle_mistakes_name_the_key(tmp_path, vehicle, match):
    from sim_board.board import Board, attach_world
    from sim_board.world_scenario import ScenarioError

    board_cfg = json.loads((pathlib.Path(__file__).parents[1] / "boards" /
                            "esp32-evse.json").read_text())
    scenario = {"start_epoch_s": T0, "world": {
        "site": "c1", "scenario": {"start_s": START_S, "sites": {"c1": {"ev": {
            "sessions": []}}}}, "vehicle": vehicle}}
    board = Board(str(tmp_path), board_cfg, scenario)
    with pytest.raises(ScenarioError, match=match):
        attach_world(board, scenario)
    assert 1 not in board.uart_ports


def test_ev_model_hooks_plug_pause_unplug_at_chosen_times():
    ev = {"battery_kwh": 40.0, "acceptance_a": 40.0, "phases": 1, "sessions": []}
    site = World({"start_s": START_S, "sites": {"c1": {"load": None, "phases": 1, "ev": ev}}},
                 1).site("c1")
    t = float(T0)
    ev_control(site, t, lambda ev: ev.plug(t + 100, 0.5))  # a plug-in scheduled ahead
    assert site.ev_pilot_state(t + 50) == "A"
    assert site.ev_pilot_state(t + 101) == "B"  # plugged, no PWM yet
    site.ev_set_pilot_duty(t + 101, 26.7)
    site.ev_set_contactor(t + 101, True)
    assert site.ev_pilot_state(t + 102) == "C"
    assert site.current_rms_a(t + 150.5) == pytest.approx(16.0, rel=1e-3)
    ev_control(site, t + 200, lambda ev: ev.set_asking(False))  # the vehicle pauses
    assert site.ev_pilot_state(t + 201) == "B" and site.power_w(t + 250.5) == 0.0
    ev_control(site, t + 300, lambda ev: ev.set_asking(True))  # and resumes
    assert site.ev_pilot_state(t + 301) == "C"
    ev_control(site, t + 301, lambda ev: ev.unplug(t + 400))  # an unplug scheduled ahead
    assert site.ev_pilot_state(t + 399) == "C" and site.ev_pilot_state(t + 401) == "A"
    truth = site.energy_import_wh(t + 500)
    assert truth == pytest.approx(site.ev.session_energy_wh, rel=1e-12)
    # 16 A for 99 s + 100 s at ~230 V and the site's power factor
    assert truth == pytest.approx(16.0 * 230.0 * 0.95 * 199.0 / 3600.0, rel=0.05)
    with pytest.raises(ValueError, match="already plugged"):
        site.ev.plug(t + 90, 0.5)  # overlaps the first plug-in
    site.ev_set_contactor(t + 450, False)
    ev_control(site, t + 600, lambda ev: ev.plug(t + 600, 0.2))
    site.ev_pilot_state(t + 601)
    assert site.ev.session_energy_wh == 0.0  # a new plug-in, a new session
    assert site.ev.soc_wh == pytest.approx(0.2 * site.ev.capacity_wh)
    with pytest.raises(ValueError, match="state of charge"):
        site.ev.plug(t + 9000, 1.5)
    with pytest.raises(ValueError, match="ignored limit"):
        site.ev.set_ignore_limit(0)
