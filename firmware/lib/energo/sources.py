# Where a meter's energy comes from: its own ADC front end (CT + VT), or an
# external Eastron SDM meter over RS485, which is then the energy authority.
# Both give the same thing to the role: monotonic import/export registers in
# Wh and instantaneous values as integers. The Modbus modules are imported only
# by a board that has the bus (on an ADC meter they would be ~7 KB of code in RAM), and
# energo.metering only by one that samples its own ADC (~6 KB on an SDM charger).
import time
from array import array

# ESP32 ADC full-scale input in mV per attenuation (Espressif, nominal 1100 mV reference).
_FULL_SCALE_MV = (1100, 1500, 2200, 3300)


class Instant:
    """Instantaneous values, all integers: mV, mA, mW, PF in thousandths, mHz."""

    __slots__ = ("voltage_mv", "current_ma", "power_mw", "pf_milli", "frequency_mhz")

    def __init__(self):
        self.voltage_mv = self.current_ma = self.power_mw = self.pf_milli = 0
        self.frequency_mhz = 0


class AdcSource:
    """Samples the VT and CT channels back to back, a window of whole cycles at a time.

    Between windows the firmware does other work; each window's power is applied to the
    whole time since the previous window, so energy keeps accumulating without gaps.
    """

    @staticmethod
    def channels(adc_cfg):
        """(voltage channel, current channel) of a board's "adc" section."""
        volt = current = None
        for channel in adc_cfg["channels"]:
            if channel["kind"] == "voltage":
                volt = channel
            elif channel["kind"] == "current":
                current = channel
        if volt is None or current is None:
            raise ValueError("adc.channels: needs a voltage and a current channel")
        return volt, current

    @staticmethod
    def _cal_number(cfg, key, default, low, high, where):
        # Calibration keys are written per unit in production; a corrupt or hand-edited
        # value must stop the meter rather than skew every reading it signs.
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low <= value <= high):
            raise ValueError("%s.%s: must be a number in %s..%s" % (where, key, low, high))
        return value

    @staticmethod
    def make_metering(adc_cfg, freq_hz=50):
        """The Metering for a board's "adc" section: nominal transfer times calibration.

        Nominal: pin mV per count at the attenuation's full scale (Espressif's 1100 mV
        reference) times the VT / CT ratios, and the datasheet phase errors. Calibration,
        measured once per unit against a reference (host_tools.calibrate): channels[].gain
        multiplies the nominal volts or amps per count (it absorbs this chip's ADC reference
        and the transformer's ratio error) and phase_cal_us adds to the voltage shift.
        """
        from energo import metering

        volt, current = AdcSource.channels(adc_cfg)
        number = AdcSource._cal_number
        where = "adc.channels[%d]"
        v_gain = number(volt, "gain", 1.0, 0.5, 2.0, where % adc_cfg["channels"].index(volt))
        i_gain = number(current, "gain", 1.0, 0.5, 2.0,
                        where % adc_cfg["channels"].index(current))
        phase_cal_us = number(adc_cfg, "phase_cal_us", 0, -2000, 2000, "adc")
        creep_windows = number(adc_cfg, "creep_windows", 1, 1, 1000, "adc")
        v_mv = _FULL_SCALE_MV[volt["atten"]] / 4095
        i_mv = _FULL_SCALE_MV[current["atten"]] / 4095
        v_cal = v_mv / 1000 * volt["vt_ratio"] * v_gain
        i_cal = i_mv / 1000 * current["ct_ratio"] / current["burden_ohm"] * i_gain
        phase_us = adc_cfg.get("skew_us", 0) + phase_cal_us + (current.get(
            "phase_error_deg", 0) - volt.get("phase_error_deg", 0)) * 1000000 / (360 * freq_hz)
        return metering.Metering(v_cal, i_cal, phase_us, int(adc_cfg["sample_us"]),
                                 creep_mw=int(adc_cfg.get("creep_w", 2) * 1000),
                                 creep_windows=int(creep_windows))

    def __init__(self, board, machine, clock=time, window_ms=200):
        adc_cfg = board["adc"]
        volt, current = AdcSource.channels(adc_cfg)
        self.sample_us = int(adc_cfg["sample_us"])
        self.count = max(16, window_ms * 1000 // self.sample_us)
        self.v_adc = machine.ADC(machine.Pin(volt["pin"]), atten=volt["atten"])
        self.i_adc = machine.ADC(machine.Pin(current["pin"]), atten=current["atten"])
        self.metering = AdcSource.make_metering(adc_cfg)
        self.v_buf = array("H", bytes(2 * self.count))
        self.i_buf = array("H", bytes(2 * self.count))
        self.clock = clock
        self.instant = Instant()
        self.windows = 0  # windows sampled, and of them the ones refused (fewer than two
        self.windows_bad = 0  # crossings: a window the scheduler stalled, a missing signal)
        self._last_us = None
        self.authority = False  # our own registers are the authority, saved periodically
        self.ready = False  # True after the first analysed window
        self.faults = (OSError,)  # what sample() may raise that the role counts and survives

    def set_registers(self, import_wh, export_wh):
        self.metering.set_registers(import_wh, export_wh)

    def sample_steps(self):
        """sample() as a steps-generator that never yields: a window is sampled without a
        break (its timing is the measurement)."""
        return self.sample()
        yield  # never reached: makes this a generator

    def sample(self):
        """Sample one window and update the registers; returns (import_wh, export_wh)."""
        clock = self.clock
        v_read = self.v_adc.read
        i_read = self.i_adc.read
        v_buf = self.v_buf
        i_buf = self.i_buf
        period = self.sample_us
        deadline = clock.ticks_us()
        for k in range(self.count):
            v_buf[k] = v_read()
            i_buf[k] = i_read()
            deadline = clock.ticks_add(deadline, period)
            wait = clock.ticks_diff(deadline, clock.ticks_us())
            if wait > 0:
                clock.sleep_us(wait)
        now = clock.ticks_us()
        elapsed = 0 if self._last_us is None else clock.ticks_diff(now, self._last_us)
        self._last_us = now
        window = self.metering.analyse(v_buf, i_buf, self.count)
        self.windows += 1
        if window is None:
            self.windows_bad += 1
            return self.metering.import_wh, self.metering.export_wh
        self.ready = True
        inst = self.instant
        inst.voltage_mv = int(window.vrms * 1000)
        inst.current_ma = int(window.irms * 1000)
        inst.power_mw = window.power_mw
        inst.pf_milli = int(window.pf * 1000)
        inst.frequency_mhz = int(window.frequency_hz * 1000)
        return self.metering.accumulate(window.power_mw, elapsed)


class ModbusSource:
    """Polls an Eastron SDM meter; its registers are the energy authority."""

    def __init__(self, board, machine, clock=time):
        from energo import modbus, sdm

        cfg = board["modbus"]
        uart = machine.UART(cfg["uart"], baudrate=cfg["baudrate"], tx=cfg["tx"], rx=cfg["rx"],
                            timeout=0)
        de = machine.Pin(cfg["de"], machine.Pin.OUT) if "de" in cfg else None
        self.master = modbus.RtuMaster(uart, cfg["baudrate"], de, cfg.get("timeout_ms", 200),
                                       clock=clock)
        self.slave = cfg["slave"]
        self.model = board.get("meter", "sdm630")
        self.instant = Instant()
        self.import_wh = 0
        self.export_wh = 0
        self.errors = {"backwards": 0}  # refused polls, on the status line (Meter.status)
        self.authority = True
        self.ready = False  # True after the first good poll: no record may carry a guess
        self.faults = (OSError, modbus.ModbusError)
        self._poll_steps = sdm.poll_steps
        self._polling = False  # a poll is on the bus (sample_steps)

    def set_registers(self, import_wh, export_wh):
        self.import_wh = import_wh
        self.export_wh = export_wh

    def sample_steps(self):
        """Poll the meter (ModbusError when it does not answer properly) as a steps-generator
        yielding the microseconds the bus keeps it waiting: the role's tasks run it with
        wait_steps, the event loop running meanwhile. One poll at a time on the bus: a second
        caller (a charger's stop record) waits for the first to finish."""
        while self._polling:
            yield self.master.char_us
        self._polling = True
        try:
            r = yield from self._poll_steps(self.master, self.slave, self.model)
        finally:
            self._polling = False
        inst = self.instant
        inst.voltage_mv = r.voltage_mv
        inst.current_ma = r.current_ma
        inst.power_mw = r.power_mw
        inst.pf_milli = r.pf_milli
        inst.frequency_mhz = r.frequency_mhz
        # A register that goes backwards (a swapped meter, a garbled reply that passed the CRC)
        # is refused: ours never decrease. Counted, so a technician sees why no record is made.
        if r.import_wh < self.import_wh or r.export_wh < self.export_wh:
            self.errors["backwards"] += 1
        else:
            self.import_wh = r.import_wh
            self.export_wh = r.export_wh
            self.ready = True
        return self.import_wh, self.export_wh


async def wait_steps(steps):
    """Run a steps-generator (sample_steps) from an asyncio task, the event loop running
    while it waits: each yielded wait in microseconds, rounded up to whole milliseconds (at
    least 1, so other tasks do run); its result. A task cancelled meanwhile closes the steps,
    so their cleanup runs (MicroPython does not finalize a dropped generator)."""
    import asyncio

    try:
        while True:
            await asyncio.sleep_ms((next(steps) + 999) // 1000)
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


def make_source(board, machine, clock=time):
    if board.get("meter") == "adc":
        return AdcSource(board, machine, clock)
    return ModbusSource(board, machine, clock)
