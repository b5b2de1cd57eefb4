# Runs on MicroPython-wasm (run.mjs --async): boots the unmodified charger role on stand-ins for
# the ESP32's hardware, serves one whole offline session (offer, auth, grant from the signed
# allow-list, TX B, C records, the vehicle's stop, TX E, final, countersignature, journaled for
# settlement) and prints one JSON line of heap figures, after mem_meter.py's two qstr_info()
# lines. argv: board.json path, C records per session, record interval in seconds. The method
# is mem_meter.py's (see its header: the peak at the end of every asyncio loop pass, the
# retained heap at the start of the next).
#
# What stands in here, on top of host_tools/micropython/standins: the SDM630 on UART 2 (answers
# the two block reads with float registers, energy growing 10 Wh a poll), the pilot line's ADC
# (the levels of the stand-in vehicle's state, with the charger's PWM), the contactor, PWM and
# RCD pins, and the vehicle on UART 1, which signs with a fixed key. The vehicle lives in the
# same heap, so the passes in which it worked (its ECDSA signatures, each in one go) are left
# out of the peak and reported as charger_vehicle_passes_skipped; the charger's own
# verifications and signatures run in slices in its session and record tasks and are measured.
# The vehicle is a task of the loop: code awaited at this script's top level runs outside the
# loop's passes, where nothing collects its garbage before the next pass starts (the vehicle's
# signature would count as heap the charger retains, and its skip would hit a charger pass).
# The link is
# offline (the broker refuses connections): this is the session a charger serves on its own.
# charger_after_session_retained_bytes is the heap kept once the session waits for settlement
# (the retained figure is the highest between two passes while the session ran).
import asyncio
import gc
import json
import struct
import sys
import time

import micropython
from memprobe import PassProbe, heap_total, pregrow, settled

COMMUNITY = bytes([0x33] * 32)
VEHICLE = bytes([0x22] * 32)
PRICE = 250000
FEE = 30000


def hardware(machine):
    """The charger's pins, PWM, pilot ADC and UARTs as stand-ins on the `machine` module."""
    from energo import modbus, pilot

    base_pin = machine.Pin

    class Pin(base_pin):
        PULL_DOWN = 2
        IRQ_RISING = 1

        def __init__(self, pin, mode=0, pull=None, value=None):
            base_pin.__init__(self, pin, mode, value)

        def irq(self, handler=None, trigger=0):
            self.handler = handler

    class PWM:
        def __init__(self, pin, freq=1000, duty_u16=65535):
            self.duty = duty_u16

        def duty_u16(self, value=None):
            if value is None:
                return self.duty
            self.duty = value
            return None

    class Sdm:
        """UART 2: an SDM630 answering read-input-register requests."""

        def __init__(self):
            self.rx = bytearray()
            self.import_wh = 100000

        def write(self, request):
            slave, function, address, count = struct.unpack(">BBHH", bytes(request[:6]))
            self.import_wh += 10
            values = {0x00: 230.0, 0x06: 16.0, 0x0C: 11040.0, 0x1E: 1.0, 0x46: 50.0,
                      0x48: self.import_wh / 1000, 0x4A: 0.0}
            data = bytearray(2 * count)
            for n in range(0, count, 2):
                struct.pack_into(">f", data, 2 * n, values.get(address + n, 0.0))
            reply = bytes([slave, function, 2 * count]) + bytes(data)
            self.rx += reply + struct.pack("<H", modbus.crc16(reply))
            return len(request)

    class Uart:
        def __init__(self, id, baudrate=9600, **kwargs):
            self.peer = Sdm() if id == 2 else vehicle
            if id != 2:
                vehicle.uart = self

        def any(self):
            return len(self.peer.rx)

        def read(self, n=None):
            rx = self.peer.rx
            n = len(rx) if n is None else min(n, len(rx))
            data = bytes(rx[:n])
            self.peer.rx = rx[n:]
            return data

        def readinto(self, buf, n=None):
            data = self.read(len(buf) if n is None else n)
            buf[:len(data)] = data
            return len(data)

        def write(self, data):
            return self.peer.write(data)

        def flush(self):
            pass

    class Adc:
        """The pilot sense pin (35): the vehicle's level while the PWM is high, -12 V while
        low. Other pins are the meter stand-in's channels."""

        ATTN_11DB = 3

        def __init__(self, pin, atten=3):
            self.other = None if pin.pin == 35 else machine_adc(pin, atten)
            cal = pilot.Calibration(1250, 12)
            # Each level's code worked out once: the stand-in's own arithmetic (big ints)
            # would otherwise be garbage in the charger's passes.
            self.codes = {state: cal.code(mv) for state, mv in pilot.LEVEL_MV.items()}
            self.low = cal.code(-12000)
            self.n = 0

        def read(self):
            if self.other is not None:
                return self.other.read()
            self.n = (self.n + 1) % 30
            duty = pwm[0].duty if pwm else 65535
            high = self.n * 65535 < duty * 30
            return self.codes[vehicle.state] if high else self.low

    vehicle = Vehicle()
    pwm = []

    def make_pwm(pin, freq=1000, duty_u16=65535):
        pwm.append(PWM(pin, freq, duty_u16))
        return pwm[-1]

    machine_adc = machine.ADC
    machine.Pin = Pin
    machine.PWM = make_pwm
    machine.ADC = Adc
    machine.UART = Uart
    return vehicle


class Vehicle:
    """A vehicle on UART 1 that authorizes, charges for `records` C records, stops and
    countersigns; no checks of its own (the charger's checks are what is measured)."""

    def __init__(self):
        self.state = "B"
        self.rx = bytearray()
        self.inbox = []
        self.records = 0
        self.stop_after = 0
        self.done = False
        self.uart = None
        self.pub = self.me = None
        self.session = None  # the offer's nonce and station, for the countersignature

    def prepare(self):
        """The vehicle's key and id, made before the measurement starts: k*G in one go is
        ~140 KB of garbage in one pass that is the vehicle's, not the charger's."""
        from energo import evproto, p256

        self.pub = evproto.spki_hex(p256.public_key(VEHICLE))
        self.me = evproto.key_id(self.pub, "vehicle")

    def write(self, data):
        self.inbox.append(bytes(data))
        return len(data)

    async def run(self, probe, charger):
        from energo import evproto

        while not self.done:
            await asyncio.sleep_ms(20)
            if self.state == "C" and charger.counter.last() >= self.stop_after > 0:
                self.stop_after = 0
                self.state = "B"
                self.rx += evproto.frame("stop")
            while self.inbox:
                probe.skip = True  # this pass did the vehicle's work: not the charger's
                self._answer(evproto.read_frame(self.inbox.pop(0)), charger)

    def _answer(self, f, charger):
        """Answer one frame. A method of its own so that the frame and what was read from it
        (an offer frame with its certificate is ~1.5 KB) are let go when it returns: the
        vehicle's heap is not the charger's, and the charger's passes run in between."""
        from energo import evproto

        if f["k"] == "offer":
            offer = evproto.open_message(f["offer"], "offer")
            self.session = (offer["nonce"], offer["station"])
            self.rx += evproto.frame("auth", auth=evproto.sign_message(VEHICLE, {
                "t": "auth", "vehicle": self.me, "pub": self.pub, "station": offer["station"],
                "nonce": offer["nonce"], "emax": 20000, "cmax": 5000000,
                "exp": offer["at"] + 900}))
        elif f["k"] == "grant":
            self.state = "C"
            self.stop_after = charger.counter.last() + self.records + 1
        elif f["k"] == "final":
            nonce, station = self.session
            self.rx += evproto.frame("meter", meter=evproto.sign_message(VEHICLE, {
                "t": "meter", "session": nonce, "vehicle": self.me, "station": station,
                "record": evproto.record_hash(f["record"]), "wh": 0}))
            self.done = True


def trust_file(charger):
    """The sync answer a service would have sent: certificate, allow-list, price."""
    from energo import evproto, p256

    key = evproto.spki_hex(p256.public_key(COMMUNITY))
    from energo import wallclock

    at = wallclock.now_ms() // 1000 + 86400
    vpub = evproto.spki_hex(p256.public_key(VEHICLE))
    cert = evproto.sign_message(COMMUNITY, {
        "t": "cert", "community": "bench", "station": charger.device_id, "pub": charger.spki,
        "owner": "owner", "fee": FEE, "exp": at})
    allow = evproto.sign_message(COMMUNITY, {
        "t": "allow", "community": "bench", "seq": 1, "exp": at,
        "vehicles": [{"id": evproto.key_id(vpub, "vehicle"), "pub": vpub, "limit": 2000000}]})
    with open(charger.trust.path, "w") as f:
        f.write(json.dumps({"key": key, "cert": cert, "allow": allow, "price": PRICE}))
    charger.trust.load()


async def main():
    board_path = sys.argv[1]
    records = int(sys.argv[2])
    interval_s = int(sys.argv[3])
    out = {"role": "charger", "heap_start_bytes": heap_total()}
    gc.threshold(-1)
    await pregrow()
    probe = PassProbe()
    interpreter = await settled()

    import socket  # noqa: F401

    import entropy
    import esp32  # noqa: F401
    import machine

    entropy.install()
    machine.prebuild()
    vehicle = hardware(machine)
    vehicle.records = records
    standins = await settled() - interpreter
    micropython.qstr_info()  # the role's names are counted from here (the host reads it)

    import umqtt.simple  # noqa: F401

    from energo import boardcfg, devcfg, wallclock
    from energo.charger import Charger
    modules = await settled() - interpreter - standins

    with open(board_path) as f:
        board = boardcfg.load(f.read(8192))
    settings = devcfg.check({"community": "bench", "mqtt": {"url": "mqtt://broker.invalid"},
                             "record_interval_s": interval_s, "sample_interval_ms": 1000})
    settings["ntp_host"] = None
    del boardcfg, devcfg
    started_ms = time.ticks_ms()
    charger = Charger(board, settings, machine, reset_cause=machine.reset_cause())
    charger.open()
    trust_file(charger)
    # This port's clock is the host's true time: what NTP would have set on a board.
    wallclock._synced = True
    boot_ms = time.ticks_diff(time.ticks_ms(), started_ms)
    booted = await settled() - interpreter - standins
    vehicle.prepare()

    task = asyncio.create_task(charger.run(machine.WDT(timeout=30000)))
    while charger.counter.last() < 1:
        await asyncio.sleep_ms(50)
    await settled()
    probe.on = True
    steady_ms = time.ticks_ms()
    first = charger.counter.last()
    await asyncio.create_task(vehicle.run(probe, charger))  # inside passes: see the header
    while not charger.pending:
        await asyncio.sleep_ms(50)
    probe.on = False
    steady_ms = time.ticks_diff(time.ticks_ms(), steady_ms)
    measured = charger.counter.last() - first
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    session = list(charger.pending.values())[0]
    after = await settled()  # what the role keeps once the session waits for settlement

    base = interpreter + standins
    out.update({
        "heap_end_bytes": heap_total(),
        "interpreter_baseline_bytes": interpreter,
        "standins_bytes": standins,
        "charger_modules_bytes": modules,
        "charger_boot_retained_bytes": booted,
        "charger_retained_heap_bytes": probe.retained - base,
        "charger_after_session_retained_bytes": after - base,
        "charger_peak_heap_bytes": probe.peak - base,
        "charger_peak_absolute_bytes": probe.peak,
        "charger_records": measured,
        "charger_session_records": len(charger.journal.records(session["session"])),
        "charger_session_state": session["state"],
        "charger_session_countersigned": session["meter"] is not None,
        "charger_passes": probe.passes,
        "charger_vehicle_passes_skipped": probe.skipped,
        "charger_steady_ms": steady_ms,
        "charger_boot_ms": boot_ms,
        "charger_session_errors": charger.ev_errors["ev_session"],
        "charger_link_connect_failures": charger.link.errors["connect"],
    })
    micropython.qstr_info()
    print(json.dumps(out))


await main()  # noqa: F704 - run.mjs --async runs this file with top-level await
