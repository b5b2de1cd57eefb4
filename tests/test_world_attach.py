"""Wiring the world into a board: ADC hook, meter on a UART pty, charger PWM and contactor."""
import os
import select
import struct
import tty
import types

import pytest

from sim_board import world as world_mod
from sim_board.clock import VirtualClock
from sim_board.sdm import crc16_modbus
from sim_board.world_scenario import ScenarioError

EPOCH_S = 1782000000 + 3 * 3600  # the board powers on at 03:00 UTC


def stub_board(adc=True):
    """The hooks a sim_board.board.Board exposes to the world, with a real virtual clock."""
    config = {"name": "m1", "role": "meter"}
    if adc:
        config["adc"] = {"channels": [
            {"pin": 36, "kind": "voltage", "vt_ratio": 460.0, "bias_mv": 1250.0},
            {"pin": 39, "kind": "current", "ct_ratio": 2000.0, "burden_ohm": 10.0},
            {"pin": 34, "kind": "pilot", "pilot_ratio": 10.0},
        ]}
    return types.SimpleNamespace(
        clock=VirtualClock(speed=1000.0, true_epoch_s=EPOCH_S), config=config, analog=None,
        uart_ports={}, pwm={}, pin_outputs={}, wifi=types.SimpleNamespace(active=False),
    )


def world_cfg(**extra):
    ev = {"sessions": [{"plug_s": 3 * 3600 + 10, "unplug_s": 9 * 3600, "soc_start": 0.3}]}
    cfg = {"seed": 3, "site": "c1",
           "scenario": {"sites": {"c1": {"load": None, "ev": ev}, "h1": {"pv_kwp": 3.0}}}}
    cfg.update(extra)
    return cfg


def test_world_starts_at_midnight_of_the_boards_first_day_and_adc_is_wired():
    board = stub_board()
    bw = world_mod.attach(board, world_cfg())
    try:
        assert bw.world.start_s == 1782000000
        assert board.analog is bw
        code = board.analog.read_code(36, 5.0, 3)  # board time 5 s -> world 03:00:05
        assert code == bw.analog.read_code(36, EPOCH_S + 5.0, 3)
        block = board.analog.read_block([36, 39], 5.0, 1e-4, 10, 3)
        assert block[0][0] == code
    finally:
        bw.close()


def test_charger_pwm_and_contactor_reach_the_ev():
    board = stub_board()
    bw = world_mod.attach(board, world_cfg(ev={"pilot_pwm_pin": 25, "contactor_pin": 26}))
    site = bw.world.site("c1")
    try:
        board.analog.read_code(34, 20.0, 3)  # EV plugged at 03:00:10
        assert site.ev_pilot_state(EPOCH_S + 20.0) == "B"
        board.pwm[25] = (1000, round(65535 * 0.267))  # 16 A
        board.pin_outputs[26] = 1
        board.analog.read_code(34, 30.0, 3)  # the firmware looks at the pilot
        assert site.ev.duty_pct == pytest.approx(26.7, abs=0.01)
        assert site.ev.contactor_closed
        assert site.current_rms_a(EPOCH_S + 60.0) == pytest.approx(16.0, rel=1e-3)
        del board.pwm[25]  # PWM stopped: the EV must stop drawing
        board.analog.read_code(34, 90.0, 3)
        assert site.power_w(EPOCH_S + 91.0) == 0.0
        charged_wh = site.energy_import_wh(EPOCH_S + 100.0)
        assert charged_wh == pytest.approx(16.0 * 230.0 * 60.0 / 3600.0, rel=0.08)
    finally:
        bw.close()


def test_meter_on_a_uart_reads_at_board_time():
    board = stub_board(adc=False)
    bw = world_mod.attach(board, world_cfg(site="h1", meters=[{"uart": 2, "slave_id": 3}]))
    try:
        path = board.uart_ports[2]
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            request = bytes([3, 4, 0, 0x48, 0, 2])
            os.write(fd, request + crc16_modbus(request).to_bytes(2, "little"))
            reply = b""
            while len(reply) < 9:
                if not select.select([fd], [], [], 2.0)[0]:
                    break
                reply += os.read(fd, 64)
        finally:
            os.close(fd)
        imp = struct.unpack(">f", reply[3:7])[0]
        expected = bw.world.site("h1").energy_import_wh(EPOCH_S) / 1000.0
        assert imp == pytest.approx(expected, rel=1e-6)
        assert imp > 0.3  # three hours of night-time household load
    finally:
        bw.close()


@pytest.mark.parametrize(
    ("cfg", "where"),
    [
        ({"site": "c1", "colour": 1}, "unknown key"),
        ({"site": "zz"}, "unknown site"),
        ({"site": "h1", "ev": {"pilot_pwm_pin": 25, "contactor_pin": 26}}, "has no EV"),
        ({"site": "c1", "ev": {"pilot_pwm_pin": "25", "contactor_pin": 26}}, "pilot_pwm_pin"),
        ({"site": "c1", "meters": [{"uart": 5}]}, "uart"),
        ({"site": "c1", "meters": [{"model": "SDM120", "site": "nope"}]}, "unknown site"),
        ({"site": "c1", "scenario": {"start_s": EPOCH_S + 10, "sites": {"c1": {}}}}, "starts"),
    ],
)
def test_bad_world_sections_are_refused(cfg, where):
    base = world_cfg()
    if "scenario" not in cfg:
        cfg = dict(cfg, scenario=base["scenario"])
    with pytest.raises(ValueError, match=where):
        world_mod.attach(stub_board(), cfg)


def test_scenario_error_is_a_value_error():
    assert issubclass(ScenarioError, ValueError)
