"""Wiring a simulated world into one emulated board: ADC inputs, Modbus meters, EV pilot.

The board emulator (`sim_board.board`) knows nothing about the world; it exposes hooks:
`board.analog` (whatever answers `read_code(pin, t_s, atten)` with `t_s` the board's virtual
seconds since power-on), `board.uart_ports` (UART id -> path of a pseudo-terminal), and the
state the firmware drives (`board.pwm`, `board.pin_outputs`). This module fills the hooks.

The board scenario's "world" section:

    "world": {
      "seed": 7,                        # default: 0
      "scenario": {...},                # a World scenario (sim_board.world_scenario); when it
                                        # names no start, the world starts at midnight UTC of
                                        # the board's first day
      "site": "house-1",                # the site this board measures
      "meters": [{"model": "SDM630", "uart": 1, "slave_id": 1, "baudrate": 9600,
                  "site": "house-1"}],  # optional; "site" defaults to the board's
      "ev": {"pilot_pwm_pin": 25, "contactor_pin": 26},  # optional, for a charger
      "vehicle": {...}                  # optional: a simulated vehicle on a charger's
                                        # vehicle link (sim_board.vehicle_scenario)
    }

A charger board (an "evse" block in its board file) on a site with an EV gets its pilot line
(`sim_board.pilot_line.PilotLine`, as `self.pilot`): the pilot-sense ADC, the RCD input and the
pilot faults; its PWM and contactor pins are then the EV wiring unless "ev" says otherwise.

The charger's pilot PWM and contactor output are read from the board on every ADC conversion
and Modbus request, and handed to the world at that instant: a change takes effect at the next
time the firmware looks at the pilot or the meter, which is how the firmware itself would
notice the EV's response.
"""
from sim_board.sdm import SdmServer
from sim_board.sensors import AnalogFrontEnd
from sim_board.world import DAY_S, World
from sim_board.world_scenario import ScenarioError

_KEYS = ("seed", "scenario", "site", "meters", "ev", "vehicle")
_READ_AHEAD = 512  # conversions per read-ahead block (an ADC meter window is 500)
_STEP_MIN_NS = 5_000
_STEP_MAX_NS = 10_000_000
_METER_KEYS = ("model", "uart", "slave_id", "baudrate", "site")


class BoardWorld:
    """The world as one board sees it; also `board.analog`."""

    def __init__(self, board, cfg):
        if not isinstance(cfg, dict):
            raise ScenarioError("world: expected an object")
        unknown = sorted(set(cfg) - set(_KEYS))
        if unknown:
            raise ScenarioError(f"world: unknown key(s) {', '.join(unknown)}")
        scenario = dict(cfg.get("scenario") or {})
        true_epoch_s = board.clock.true_epoch_s
        if "start_s" not in scenario and "start_utc" not in scenario:
            scenario["start_s"] = int(true_epoch_s) // DAY_S * DAY_S
        self.board = board
        self.world = World(scenario, cfg.get("seed", 0))
        if self.world.start_s > true_epoch_s:
            raise ScenarioError("world.scenario: the world starts after the board powers on")
        self.site_name = cfg.get("site")
        self.site = self.world.site(self.site_name)
        self._ev_wiring = self._check_ev(cfg.get("ev"))
        evse = board.config.get("evse")
        if self._ev_wiring is None and isinstance(evse, dict) and self.site.ev is not None:
            self._ev_wiring = {"pilot_pwm_pin": evse["pilot_pwm"],
                               "contactor_pin": evse["contactor"]}
        self._last_duty = None
        self._last_contactor = None
        self._ahead = {}  # pin -> (atten, first board ns, step ns, codes)
        self._last_ns = {}  # pin -> board ns of its last conversion
        self.analog = None
        if "adc" in board.config:
            self.analog = AnalogFrontEnd(
                self.world, board.config, self.world.seed, site=self.site_name,
                wifi_active=lambda: board.wifi.active,
            )
            board.analog = self
        self.pilot = None  # a charger board's pilot line (sim_board.pilot_line), over board.analog
        if isinstance(evse, dict) and self.site.ev is not None:
            from sim_board.pilot_line import PilotLine

            self.pilot = PilotLine(board, self, evse)
        self.meters = []
        meters = cfg.get("meters", [])
        if not isinstance(meters, list) or len(meters) > 3:
            raise ScenarioError("world.meters: expected a list of at most 3 meters (UART 0..2)")
        try:
            for n, m in enumerate(meters):
                self._meter(m, f"world.meters[{n}]")
        except Exception:
            self.close()
            raise
        self.vehicle = None  # a simulated vehicle on the charger's link (sim_board.vehicle)
        if cfg.get("vehicle") is not None:
            from sim_board.vehicle_scenario import from_scenario

            self.vehicle = from_scenario(board, self, cfg["vehicle"])

    def _check_ev(self, ev):
        if ev is None:
            return None
        if not isinstance(ev, dict) or set(ev) - {"pilot_pwm_pin", "contactor_pin"}:
            raise ScenarioError("world.ev: expected {pilot_pwm_pin, contactor_pin}")
        for key in ("pilot_pwm_pin", "contactor_pin"):
            if not isinstance(ev.get(key), int) or not 0 <= ev[key] <= 39:
                raise ScenarioError(f"world.ev.{key}: expected a GPIO number")
        if self.site.ev is None:
            raise ScenarioError(f"world.ev: site {self.site_name!r} has no EV")
        return ev

    def _meter(self, m, path):
        if not isinstance(m, dict) or set(m) - set(_METER_KEYS):
            raise ScenarioError(f"{path}: expected an object with keys {', '.join(_METER_KEYS)}")
        uart = m.get("uart", 1)
        if uart not in (0, 1, 2) or uart in self.board.uart_ports:
            raise ScenarioError(f"{path}.uart: must be a free UART 0..2")
        try:
            server = SdmServer(
                self.world, m.get("site", self.site_name), model=m.get("model", "SDM630"),
                slave_id=m.get("slave_id", 1), baudrate=m.get("baudrate", 9600),
                clock=self._meter_clock,
            )
        except ValueError as exc:
            raise ScenarioError(f"{path}: {exc}") from None
        self.meters.append(server.start())
        self.board.uart_ports[uart] = server.client_path

    def _meter_clock(self):
        t_s = self.board.clock.true_time_s()
        self.sync_controls(t_s)
        return t_s

    def sync_controls(self, t_s):
        """Hand the charger's current pilot duty and contactor state to the world at `t_s`."""
        wiring = self._ev_wiring
        if wiring is None:
            return
        pwm = self.board.pwm.get(wiring["pilot_pwm_pin"])
        if pwm is None:  # no PWM: the pilot is held at its DC level
            duty = (100.0, 1000.0)
        else:
            freq, duty_u16 = pwm
            duty = (duty_u16 * 100.0 / 65535.0, float(freq or 1000.0))
        contactor = bool(self.board.pin_outputs.get(wiring["contactor_pin"], 0))
        with self.world.lock:
            if duty != self._last_duty:
                self.site.ev_set_pilot_duty(t_s, duty[0], duty[1])
                self._last_duty = duty
                self._ahead.clear()  # codes computed ahead assumed the old controls
            if contactor != self._last_contactor:
                self.site.ev_set_contactor(t_s, contactor)
                self._last_contactor = contactor
                self._ahead.clear()

    def read_code(self, pin, t_s, atten):
        """`board.analog` hook: `t_s` is the board's virtual seconds since power-on.

        Firmware samples on a steady cadence (a window of conversions a fixed period apart),
        and a code is a pure function of (seed, pin, time). So after two reads of a pin the
        next _READ_AHEAD conversions on the same cadence are computed in one vectorised block;
        a read that lands on that grid is answered from it, anything else is computed alone.
        The codes are the same either way, up to float rounding of the sample instant.
        """
        world_t_s = self.board.clock.true_epoch_s + t_s
        self.sync_controls(world_t_s)
        t_ns = round(t_s * 1e9)  # board time is small: exact to the nanosecond in a float
        ahead = self._ahead.get(pin)
        if ahead is not None and ahead[0] == atten:
            k, off = divmod(t_ns - ahead[1], ahead[2])
            if off == 0 and 0 <= k < len(ahead[3]):
                self._last_ns[pin] = t_ns
                return ahead[3][k]
        last = self._last_ns.get(pin)
        self._last_ns[pin] = t_ns
        step_ns = t_ns - last if last is not None else 0
        if not _STEP_MIN_NS <= step_ns <= _STEP_MAX_NS:
            # The first read of a window: guess the cadence of the last window (a meter
            # samples every window the same way) rather than compute this one code alone.
            step_ns = ahead[2] if ahead is not None and ahead[0] == atten else 0
        if _STEP_MIN_NS <= step_ns <= _STEP_MAX_NS:
            codes = self.analog.read_block([pin], world_t_s, step_ns / 1e9, _READ_AHEAD, atten)[0]
            self._ahead[pin] = (atten, t_ns, step_ns, codes)
            return codes[0]
        return self.analog.read_code(pin, world_t_s, atten)

    def read_block(self, pins, t0_s, dt_s, count, atten):
        """Block sampling through the same time translation as `read_code`."""
        world_t_s = self.board.clock.true_epoch_s + t0_s
        self.sync_controls(world_t_s)
        return self.analog.read_block(pins, world_t_s, dt_s, count, atten)

    def close(self):
        """Stop the meters (their pseudo-terminals disappear) and the vehicle."""
        if getattr(self, "vehicle", None) is not None:
            self.vehicle.stop()
        for server in self.meters:
            server.stop()
        self.meters = []
