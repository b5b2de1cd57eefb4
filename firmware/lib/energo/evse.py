# The charger's safety layer: control pilot out, pilot sense in, contactor relay, residual
# current (RCD) input. The IEC 61851 timing rules live here and only here, so nothing above
# (session logic, payment, the link) can keep power on a cable the vehicle has let go of:
#   - contactor open within 100 ms of the vehicle going C -> B (or unplugging),
#   - contactor closed within 3 s of the vehicle asking (C with PWM on and permit given),
#   - contactor forced open 6 s after the PWM stops if the vehicle stays in C,
#   - residual current: contactor open at once (pin IRQ) and the pilot to F (-12 V).
import time

from energo import pilot

POLL_MS = 20
# With the contactor open nothing on the cable carries power, so the loop relaxes: the 3 s
# close rule needs only a few polls, and faults still trip before anything closes. The RCD
# does not depend on the poll (pin IRQ).
IDLE_POLL_MS = 100
OPEN_AFTER_B_MS = 100
CLOSE_WITHIN_MS = 3000
FORCE_OPEN_MS = 6000
FAULTS = ("rcd", "diode", "short", "overcurrent")
DIODE_CONFIRM = 3  # polls in a row with a bad negative level before it is a fault
_SAMPLES = 30  # ADC reads per poll: 30 x ~40 us covers more than one 1 ms PWM period
_DC_SAMPLES = 4  # without PWM the line is DC: a few reads give its level


class Evse:
    """Pilot, contactor and RCD of one charge point; `poll()` is one 20 ms step."""

    def __init__(self, board, machine):
        cfg = board["evse"]
        self.max_a = cfg.get("max_current_a", 32)
        self.phases = cfg.get("phases", 3)
        self._cal = pilot.Calibration(cfg.get("sense_bias_mv", 1250), cfg.get("sense_ratio", 12))
        self._buf = [0] * cfg.get("samples", _SAMPLES)  # reused by every poll
        self._dc_buf = [0] * _DC_SAMPLES
        pin = machine.Pin
        self._relay = pin(cfg["contactor"], pin.OUT, value=0)
        self._pwm = machine.PWM(pin(cfg["pilot_pwm"]), freq=pilot.FREQ_HZ,
                                duty_u16=pilot.DUTY_FULL)
        self._adc = machine.ADC(pin(cfg["pilot_adc"]), atten=machine.ADC.ATTN_11DB)
        self._rcd = pin(cfg["rcd"], pin.IN, pin.PULL_DOWN)
        self._filter = pilot.StateFilter()
        self.state = "A"
        self.contactor = False
        self.fault = None
        self.offered_a = 0
        self.permitted = False
        self.high_mv = None
        self.low_mv = None
        self._diode_bad = 0
        self._stop_ms = None  # when the PWM stopped under load (the 6 s rule)
        self._rcd.irq(handler=self._on_rcd, trigger=pin.IRQ_RISING)
        if self._rcd.value():
            self.trip("rcd")

    # ----- commands -----
    def offer(self, amps):
        """Offer `amps` on the pilot (0 stops the PWM: +12 V DC). ValueError, and nothing
        changes, for a current outside 6..max_current_a or a non-zero offer while faulted."""
        da = pilot.deciamps(amps, self.max_a)
        if da and self.fault is not None:
            raise ValueError("evse: fault %s: clear() before offering current" % self.fault)
        duty = pilot.duty_u16(amps, self.max_a)
        self.offered_a = 0 if not da else (da // 10 if da % 10 == 0 else da / 10)
        if self.fault is not None:
            return
        self._pwm.duty_u16(duty)
        if da:
            self._stop_ms = None
        elif self.contactor and self._stop_ms is None:
            self._stop_ms = time.ticks_ms()

    def permit(self, allowed):
        """Whether the contactor may close; False opens it at once."""
        self.permitted = bool(allowed)
        if not self.permitted:
            self._open()

    def trip(self, reason):
        """Fault stop: contactor open at once, pilot held at -12 V (F) until `clear()`; the
        permit is withdrawn."""
        if reason not in FAULTS:
            raise ValueError("evse: fault must be one of %s, got %r" % (", ".join(FAULTS), reason))
        self._open()
        self._pwm.duty_u16(pilot.DUTY_OFF)
        if self.fault is None:
            self.fault = reason
        self.state = "F"
        self.offered_a = 0
        self.permitted = False  # a fault ends the session: power again needs a new permit
        self._stop_ms = None

    def clear(self):
        """Leave F once the cause is gone; False (still faulted) while the RCD still flags
        residual current. The pilot comes back at +12 V DC with nothing offered."""
        if self.fault is None:
            return True  # nothing to clear: a running offer is left alone
        if self._rcd.value():
            return False
        self.fault = None
        self.offered_a = 0
        self._filter.reset()
        self._diode_bad = 0
        self._pwm.duty_u16(pilot.DUTY_FULL)
        self.state = "A"
        return True

    # ----- the loop -----
    def _on_rcd(self, _pin):
        self.trip("rcd")

    def _open(self):
        self._relay.value(0)
        self.contactor = False

    def _sample(self):
        read = self._adc.read
        mv = self._cal.mv
        buf = self._buf if self.offered_a else self._dc_buf
        for k in range(len(buf)):
            buf[k] = mv(read())
        return pilot.split(buf)

    def poll(self):
        """Sample the pilot, classify the vehicle's state and apply the timing rules."""
        if self.fault is None and self._rcd.value():
            self.trip("rcd")  # the IRQ's backstop: never poll past a flagged RCD
        if self.fault is not None:
            if self.contactor or self._relay.value():
                self._open()
            return self.state
        high, low = self._sample()
        self.high_mv, self.low_mv = high, low
        state = self._filter.update(high)
        if state == "E" or state == "F":
            self.trip("short")  # the line is pulled to 0 V or below: no vehicle can be in it
            return self.state
        pwm_on = self.offered_a != 0
        if pwm_on and state in ("B", "C", "D") and not pilot.diode_ok(low):
            self._diode_bad += 1
            if self._diode_bad >= DIODE_CONFIRM:
                self.trip("diode")
                return self.state
        else:
            self._diode_bad = 0
        self.state = state
        # D asks for energy with ventilation, which this charge point does not have: no power.
        asking = state == "C"
        if not asking:
            self._open()
            self._stop_ms = None
        elif self.contactor:
            if not pwm_on and self._stop_ms is not None and \
                    time.ticks_diff(time.ticks_ms(), self._stop_ms) >= FORCE_OPEN_MS:
                self._open()
                self._stop_ms = None
        elif pwm_on and self.permitted:
            self._relay.value(1)
            self.contactor = True
        return self.state

    def busy(self):
        """Whether the next poll is due in POLL_MS rather than IDLE_POLL_MS: the contactor is
        closed, the vehicle may ask for power any moment (permit given), or a new pilot state
        waits for its confirming polls (a plug-in or a vehicle asking is then seen in ~20 ms,
        not ~100)."""
        return self.contactor or self.permitted or self._filter.settling()

    async def run(self):
        """Poll for ever (one task of the charger's event loop): every POLL_MS while busy(),
        every IDLE_POLL_MS otherwise."""
        import asyncio

        while True:
            self.poll()
            await asyncio.sleep_ms(POLL_MS if self.busy() else IDLE_POLL_MS)
