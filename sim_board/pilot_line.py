"""The control-pilot line of an emulated charger, as its pilot-sense ADC sees it.

The charger drives the line through its PWM pin (an op-amp swinging +12 V / -12 V at 1 kHz):
duty 100 % holds +12 V DC (nothing offered), 0 % holds -12 V (state F). The vehicle loads the
high phase with its resistors: +12 V in A (nothing plugged), +9 V in B, +6 V in C, +3 V in D;
the low phase stays at -12 V because the vehicle's diode blocks it. The vehicle's state comes
from the world's EV model (`site.ev_pilot_state`); this module adds what that model has no
notion of:

- `set_vehicle(state, at_s)`: from board time `at_s` the vehicle presents `state` ('A'..'D')
  whatever the EV model says, None hands back to the model (a vehicle that stays in C after
  the PWM stops, one that asks for ventilation, a precise C -> B edge for timing tests);
- faults (scenario entries or `Board.add_fault`, applied at their exact virtual time):
  `pilot_short` (line at 0 V: state E), `diode_missing` (low phase at minus the high level),
  `rcd_trip` (the residual-current monitor's output pin goes high; IRQ edge included), each
  for `for_s` virtual seconds (0: for the rest of the run, or for the RCD until an
  `rcd_release`).

The line is converted to ADC codes through the board's sense divider (`evse.sense_bias_mv`,
`evse.sense_ratio`, nominal 11 dB scale: 3300 mV at code 4095) with seeded Gaussian noise.
This is a separate implementation from the firmware's `energo.pilot`, so a wrong conversion
on either side shows up as a wrong state instead of cancelling out.

The charger's PWM and contactor reach the world at the instant the firmware changes them
(`Board.output_hooks`), and every change is logged in `log` as (board seconds, what, value),
which is how tests measure the IEC 61851 timing rules in virtual time.
"""
import random
import threading

LEVEL_MV = {"A": 12000, "B": 9000, "C": 6000, "D": 3000, "E": 0}
FULL_SCALE_MV = 3300.0
FAULT_KINDS = ("pilot_short", "diode_missing", "rcd_trip", "rcd_release")
_NS = 1_000_000_000
_MODEL_HOLD_NS = 2_000_000
_NOISE_TABLE = 8192  # a power of two
_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads nearby instants over the table


class PilotLine:
    """`board.analog` for the pilot-sense pin (other pins go to the previous hook)."""

    def __init__(self, board, board_world, evse, noise_lsb=1.5):
        for key in ("pilot_pwm", "pilot_adc", "contactor", "rcd"):
            pin = evse.get(key)
            if isinstance(pin, bool) or not isinstance(pin, int) or not 0 <= pin <= 39:
                raise ValueError(f"evse.{key}: expected a GPIO number, got {pin!r}")
        self.board = board
        self.bw = board_world
        self.site = board_world.site
        self.pwm_pin = evse["pilot_pwm"]
        self.adc_pin = evse["pilot_adc"]
        self.contactor_pin = evse["contactor"]
        self.rcd_pin = evse["rcd"]
        self.bias_mv = float(evse.get("sense_bias_mv", 1250))
        self.ratio = float(evse.get("sense_ratio", 12))
        self.noise_lsb = float(noise_lsb)
        # Added to the vehicle's high level: IEC 61851 allows about +/-1 V around the nominal
        # levels (resistor tolerance, the diode's drop), which puts a real line near a threshold.
        self.offset_mv = 0
        self._seed = board_world.world.seed * 1_000_003 + self.adc_pin
        # Seeded N(0, 1) draws, picked by a hash of the conversion instant: the same noise for
        # the same instant on every run, without seeding a generator per conversion (that cost
        # more than everything else a charger board does).
        rng = random.Random(self._seed)
        self._normals = [rng.gauss(0.0, 1.0) for _ in range(_NOISE_TABLE)]
        self.base = board.analog
        self.log = []
        self._lock = threading.Lock()
        self._vehicle = []  # (board ns, state or None), in time order
        self._windows = {kind: [] for kind in FAULT_KINDS}  # kind -> [(start ns, end ns|None)]
        self._last = (None, None)  # last (duty_u16, contactor) seen, for the log
        self._model_state = (0, None)  # (board ns, state) of the last EV model query
        board.analog = self
        board.output_hooks.append(self._output_changed)
        for kind in FAULT_KINDS:
            board.fault_handlers[kind] = self._apply_fault

    # ----- control (any thread) -----
    def set_vehicle(self, state, at_s=None):
        """From board time `at_s` (default: now) the vehicle presents `state`; None = model."""
        if state is not None and state not in LEVEL_MV:
            raise ValueError(f"vehicle state must be one of A, B, C, D, E or None, got {state!r}")
        at_ns = self.board.clock.now_ns() if at_s is None else round(at_s * _NS)
        with self._lock:
            self._vehicle.append((at_ns, state))
            self._vehicle.sort(key=lambda entry: entry[0])

    def fault(self, kind, for_s=0.0, at_s=None):
        """Inject a pilot fault through the board's fault queue (exact virtual time)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"pilot fault must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        entry = {"kind": kind, "at_s": self.board.clock.now_s() if at_s is None else at_s}
        if kind != "rcd_release":
            entry["for_s"] = for_s
        self.board.add_fault(entry)

    # ----- hooks (firmware thread) -----
    def _apply_fault(self, fault):
        start_ns = round(fault.at_s * _NS)
        end_ns = start_ns + round(fault.for_s * _NS) if fault.for_s > 0 else None
        with self._lock:
            self._windows.setdefault(fault.kind, []).append((start_ns, end_ns))
        self.log.append((self.board.clock.now_s(), fault.kind, fault.for_s))
        if fault.kind == "rcd_trip":
            self.board.set_pin(self.rcd_pin, 1)
            if end_ns is not None:
                self.board.add_fault({"kind": "rcd_release", "at_s": end_ns / _NS})
        elif fault.kind == "rcd_release":
            self.board.set_pin(self.rcd_pin, 0)

    def _output_changed(self, pin):
        if pin is not None and pin not in (self.pwm_pin, self.contactor_pin):
            return  # None: every output changed at once (a reset or a power cut)
        t_s = self.board.clock.now_s()
        self.bw.sync_controls(self.board.clock.true_epoch_s + t_s)
        pwm = self.board.pwm.get(self.pwm_pin)
        duty = None if pwm is None else pwm[1]
        contactor = bool(self.board.pin_outputs.get(self.contactor_pin, 0))
        last_duty, last_contactor = self._last
        if duty != last_duty:
            self.log.append((t_s, "duty_u16", duty))
        if contactor != last_contactor:
            self.log.append((t_s, "contactor", contactor))
        self._last = (duty, contactor)

    # ----- the line -----
    def _active(self, kind, t_ns):
        windows = self._windows[kind]
        return bool(windows) and any(start <= t_ns and (end is None or t_ns < end)
                                     for start, end in windows)

    def vehicle_state(self, t_s):
        """What the vehicle presents at board time `t_s`: the override, else the EV model."""
        t_ns = round(t_s * _NS)
        override = None
        if self._vehicle:  # overrides are rare: no lock on the common path
            with self._lock:
                for at_ns, state in self._vehicle:
                    if at_ns > t_ns:
                        break
                    override = state
        if override is not None:
            return override
        # One model query per poll: the burst of conversions that samples one PWM period
        # (about 1.2 ms) sees one vehicle state, as a real line would at that time scale.
        cached_ns, cached = self._model_state
        if cached is not None and 0 <= t_ns - cached_ns < _MODEL_HOLD_NS:
            return cached
        state = self.site.ev_pilot_state(self.board.clock.true_epoch_s + t_s)
        self._model_state = (t_ns, state)
        return state

    def voltage_mv(self, t_s):
        """The pilot line (mV) at board time `t_s`."""
        t_ns = round(t_s * _NS)
        no_diode = False
        if self._windows["pilot_short"] or self._windows["diode_missing"]:
            with self._lock:
                if self._active("pilot_short", t_ns):
                    return 0
                no_diode = self._active("diode_missing", t_ns)
        pwm = self.board.pwm.get(self.pwm_pin)
        freq, duty_u16 = (1000, 65535) if pwm is None else pwm
        if duty_u16 <= 0:
            return -12000  # F: the charger holds the line negative
        state = self.vehicle_state(t_s)
        high = LEVEL_MV[state] + (self.offset_mv if state != "A" else 0)
        if duty_u16 >= 65535:
            return high
        phase_ns = (t_ns * freq) % _NS
        if phase_ns * 65535 < duty_u16 * _NS:
            return high
        return -high if no_diode and state != "A" else -12000

    def code(self, t_s, atten=3):
        """The 12-bit code the pilot-sense pin converts at board time `t_s`."""
        if atten != 3:
            raise ValueError("the pilot sense is read at 11 dB (ADC.ATTN_11DB)")
        pin_mv = self.bias_mv + self.voltage_mv(t_s) / self.ratio
        code = pin_mv * 4095.0 / FULL_SCALE_MV
        if self.noise_lsb > 0:
            mixed = ((round(t_s * _NS) ^ self._seed) * _MIX) & 0xFFFFFFFFFFFFFFFF
            code += self._normals[mixed >> 51] * self.noise_lsb
        return min(4095, max(0, int(code + 0.5)))

    def read_code(self, pin, t_s, atten):
        """`board.analog` hook."""
        if pin != self.adc_pin:
            if self.base is None:
                raise ValueError(f"GPIO{pin} is not an analog input of this board")
            return self.base.read_code(pin, t_s, atten)
        # No sync_controls() here: the output hook already handed every PWM and contactor
        # change to the world at the instant the firmware made it.
        return self.code(t_s, atten)

    def read_block(self, pins, t0_s, dt_s, count, atten):
        if self.adc_pin in pins or self.base is None:
            raise ValueError("the pilot sense is read one conversion at a time")
        return self.base.read_block(pins, t0_s, dt_s, count, atten)

    def events(self, what):
        """[(board seconds, value)] of one kind of logged change."""
        return [(t, v) for t, w, v in list(self.log) if w == what]
