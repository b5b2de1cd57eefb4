# The meter role: measure, keep the register, sign a record every interval,
# keep it in the outbox until the settlement service acknowledges it.
#
# Four asyncio tasks: sampling (ADC windows or Modbus polls), records (one
# signed OCMF record per interval), the MQTT link (connect with backoff,
# backlog oldest first at a bounded rate, cumulative acks), and a supervisor
# that feeds the watchdog only while every task keeps reporting progress.
import asyncio
import binascii
import gc
import hashlib
import time

import energo
from energo import ocmf, p256, wallclock
from energo.counter import RecordCounter
from energo.keystore import Keystore
from energo.link import Link
from energo.outbox import Outbox, OutboxFull, capacity_for_filesystem
from energo.register import EnergyRegister
from energo.sources import make_source, wait_steps

FIRMWARE_NAME = "energo-meter"
FIRMWARE_VERSION = "0.1.0"
_NTP_RETRY_MS = 600000
_STATUS_EVERY_S = 600
_BACKLOG_PER_S = 5  # records published per second while catching up
_BUSY_LINK_MS = 1000 // _BACKLOG_PER_S
_TASK_STALL_MS = 60000  # a task silent this long past its own period stops the watchdog feed
_WDT_TIMEOUT_MS = 30000
_SIG_HEAD = b'|{"SA":"' + ocmf.SA_P256.encode() + b'","SD":"'


class Meter:
    role = "meter"
    firmware_name = FIRMWARE_NAME
    # With nothing to send and nothing awaiting its ack, the link looks for messages once a
    # second: enough for the keepalive and an ack, a new record waits at most that long, and
    # the radio and the CPU are idle four fifths of the ticks they would otherwise spend.
    idle_link_ms = 1000
    # The pause between two slices of a record's signature (make_record_in_slices): nothing
    # waits on a meter's record, so the pause is long enough for every other task to run and
    # the event loop to finish its pass (MicroPython's WebAssembly port collects garbage only
    # between passes; an ADC window can take a few ms). A charger, whose vehicle waits, uses 2.
    slice_pause_ms = 10

    def __init__(self, board, settings, machine, root="/data", reset_cause=None):
        self.board = board
        self.settings = settings
        self.machine = machine
        self.root = root
        self.reset_cause = reset_cause
        self.alive = {}
        self.errors = {"sample": 0, "outbox_full": 0, "ack_ahead": 0, "no_reading": 0}
        self.prev_sig_hash = None
        self._ntp_tried = None
        self.crypto_lock = asyncio.Lock()  # one stepwise signature or check at a time (crypto)

    def open(self):
        """Open key, register, outbox and counter; returns the device id."""
        import os

        try:
            os.mkdir(self.root)
        except OSError:
            pass  # exists already
        self.keystore = Keystore(self.root, self.role)
        self.keystore.open()
        if not self.keystore.ready():
            raise RuntimeError("no usable device key: %s" % self.keystore.problems)
        self.register = EnergyRegister(self.root)
        self.register.load()
        self.outbox = Outbox(self.root, capacity_bytes=capacity_for_filesystem(_fs_bytes(self.root)))
        self.outbox.open()
        self.counter = RecordCounter(self.register, self.outbox)
        self.counter.open()
        self.source = make_source(self.board, self.machine)
        imp, exp = self._boot_registers()
        self.source.set_registers(imp, exp)
        self.import_wh, self.export_wh = imp, exp
        self.device_id = self.keystore.device_id
        self.link = Link(self.device_id, self.settings, rand=_jitter)
        self.sent_counter = self.outbox.acked()
        # Boot-only code (~18 KB as .mpy): main.py read the configuration with the first two,
        # and _boot_registers() read the newest record with the OCMF and JSON readers.
        energo.release("boardcfg", "devcfg", "ocmfread", "jsonread")
        return self.device_id

    def _boot_registers(self):
        """Start from the larger of the saved register and the newest signed record."""
        imp, exp = self.register.import_wh, self.register.export_wh
        newest = self.outbox.peek_last()
        if newest is not None:
            try:
                rec = ocmf.parse(newest[1])
                imp = max(imp, rec.readings[0].energy_wh())
                exp = max(exp, rec.readings[1].energy_wh())
                self.prev_sig_hash = _sig_hash(rec.signature)
            except (ocmf.OcmfError, IndexError):
                pass
        return imp, exp

    def hello(self):
        return {"fw": FIRMWARE_VERSION, "key": self.keystore.fingerprint,
                "last": self.counter.last(), "reset": self.reset_cause,
                "skipped": list(self.counter.skipped) if self.counter.skipped else None,
                "backlog": self.outbox.count()}

    def _mark(self, name, period_ms=0):
        """Task `name` is alive; it promises to report again within period_ms + the margin."""
        self.alive[name] = (time.ticks_ms(), period_ms + _TASK_STALL_MS)

    # --- tasks -----------------------------------------------------------------------------

    async def sample_task(self):
        while True:
            self._mark("sample", self.settings["sample_interval_ms"])
            try:  # a Modbus poll waits on the bus with the event loop running
                imp, exp = await wait_steps(self.source.sample_steps())
                self.import_wh, self.export_wh = imp, exp
                self.register.maybe_save(imp, exp, time.ticks_ms(), self.counter.last())
            except self.source.faults:  # a bus fault must not stop metering: count, go on
                self.errors["sample"] += 1
            await asyncio.sleep_ms(self.settings["sample_interval_ms"])

    def make_record(self, pg="F", tx="C", tail=()):
        """Sign and store the next record; the record's bytes, or False when the outbox is
        full (retried later) or the source has no reading yet (a record never carries a
        guessed register). A charger passes pg "T", its TX and the session's vendor keys."""
        begun = self._begin_record(pg, tx, tail)
        if not begun:
            return False
        return self._end_record(begun[0], begun[1], self.keystore.sign(begun[1]))

    async def make_record_in_slices(self, pg="F", tx="C", tail=()):
        """make_record, with the signature made in slices (p256.sign_steps) and the event
        loop run between them. Why: a signature is ~0.5 s of pure Python on an ESP32, which
        would hold every other task up for that long, and all its garbage (~150 KB) would
        pile up where nothing else runs; a slice makes ~5 KB. The pause (slice_pause_ms) is
        never 0, so the loop finishes a pass between slices even with nothing else ready.
        Only one record is made at a time: record_task is the only caller in the meter role
        (a charger holds its record_lock around every call)."""
        begun = self._begin_record(pg, tx, tail)
        if not begun:
            return False
        # p256.sliced pauses before the first slice too: the payload's garbage is one as well
        sig = await self.crypto(self.keystore.sign_steps(begun[1]))
        return self._end_record(begun[0], begun[1], sig)

    async def crypto(self, steps):
        """Run a stepwise signature or verification (p256.sliced, slice_pause_ms between the
        slices) once no other one runs. Two at once finish no sooner, and their slices would
        fall due together now and then: one loop pass would then hold both slices' garbage."""
        async with self.crypto_lock:
            return await p256.sliced(steps, self.slice_pause_ms)

    def _begin_record(self, pg, tx, tail):
        """(counter, payload bytes) of the next record, or False (see make_record)."""
        if not self.source.ready:
            self.errors["no_reading"] += 1
            return False
        if self.outbox.is_full():
            self.errors["outbox_full"] += 1
            return False
        counter = self.counter.next_counter()
        now = wallclock.now_ms()
        sync = wallclock.sync_status()
        readings = [ocmf.reading(now, tx, self.import_wh, ocmf.OBIS_IMPORT, sync),
                    ocmf.reading(now, tx, self.export_wh, ocmf.OBIS_EXPORT, sync)]
        inst = self.source.instant
        extra = [("XP", inst.power_mw), ("XU", inst.voltage_mv), ("XI", inst.current_ma),
                 ("XF", inst.pf_milli)]
        if self.prev_sig_hash is not None:
            extra.insert(0, ("XC", self.prev_sig_hash))
        extra.extend(tail)
        mm = self.board.get("meter", "adc").upper()
        payload = ocmf.build_payload((self.firmware_name, self.device_id, FIRMWARE_VERSION),
                                     "%s%d" % (pg, counter), ("Energo", mm, self.device_id),
                                     readings, extra)
        # Encoded once: the bytes signed are the bytes stored, and a second copy of a ~600-byte
        # payload (and of the whole record as text) is garbage every interval.
        return counter, payload.encode()

    def _end_record(self, counter, payload, sig):
        """Store the signed record; its bytes, or False when the outbox is full."""
        record = b"".join((b"OCMF|", payload, _SIG_HEAD, binascii.hexlify(sig), b'"}'))
        try:
            self.keep_record(counter, record)
            self.outbox.append(counter, record)
        except OutboxFull:
            self.errors["outbox_full"] += 1
            return False
        self.counter.commit(counter)
        self.prev_sig_hash = _sig_hash(sig)
        return record

    def keep_record(self, counter, record):
        """Called with each signed record before it goes to the outbox (a charger journals
        its session records here)."""

    async def record_task(self):
        interval_ms = self.settings["record_interval_s"] * 1000
        while True:
            self._mark("record", self.settings["record_interval_s"] * 1000)
            now = wallclock.now_ms()
            await asyncio.sleep_ms(interval_ms - now % interval_ms)
            await self.periodic_record()
            gc.collect()

    async def periodic_record(self):
        """The record of each interval (a charger decides what kind; see Charger)."""
        await self.make_record_in_slices()

    async def link_task(self):
        while True:
            self._mark("link")
            if not self.link.connected:
                if self.link.connect(self.hello()):
                    self.sent_counter = self.outbox.acked()
                    print("link: connected; backlog", self.outbox.count())
                else:
                    if self.link.last_error:
                        print("link: connect failed:", self.link.last_error)
                        self.link.last_error = None
                    await asyncio.sleep_ms(500)
                    continue
            self._ntp()
            self._publish_backlog()
            self.link.poll()
            self._apply_ack()
            await asyncio.sleep_ms(self._link_pause_ms())

    def _link_pause_ms(self):
        """The backlog rate while records wait to be sent or acked; idle_link_ms otherwise."""
        if self.outbox.last_counter() > self.outbox.acked():
            return _BUSY_LINK_MS
        return self.idle_link_ms

    def _ntp(self):
        """Set the clock from NTP once the network is up; retried until it works."""
        if wallclock.sync_status() == "S" or not self.settings.get("ntp_host"):
            return
        now = time.ticks_ms()
        if self._ntp_tried is not None and time.ticks_diff(now, self._ntp_tried) < _NTP_RETRY_MS:
            return
        self._ntp_tried = now
        if wallclock.sync(self.settings["ntp_host"]):
            print("clock: set from NTP", self.settings["ntp_host"])

    def _publish_backlog(self):
        if self.outbox.last_counter() <= self.sent_counter:
            return  # nothing new: no flash read (this runs five times a second)
        pending = self.sent_counter - self.outbox.acked() + 1
        for counter, record in self.outbox.peek(max(1, pending)):
            if counter <= self.sent_counter:
                continue
            if not self.link.publish(record):
                return
            self.sent_counter = counter
            return  # one per tick keeps the rate bounded

    def _apply_ack(self):
        ack = self.link.acked
        if ack is None or ack <= self.outbox.acked():
            return
        last = self.outbox.last_counter()
        if ack > last:
            self.errors["ack_ahead"] += 1  # the service claims a record we never made
            ack = last
        self.outbox.ack(ack)

    def error_sources(self):
        """The error counters the status line sums (dicts, or objects with .errors)."""
        return (self.errors, self.link.errors, self.source, getattr(self.source, "master", None))

    def status(self):
        """One console line: what a technician with a serial cable wants to know."""
        errors = {}
        for source in self.error_sources():
            counts = source if isinstance(source, dict) else getattr(source, "errors", {})
            for key in counts:
                if counts[key]:
                    errors[key] = errors.get(key, 0) + counts[key]
        return "status: counter %d backlog %d acked %d import %d export %d link %s errors %s" % (
            self.counter.last(), self.outbox.count(), self.outbox.acked(), self.import_wh,
            self.export_wh, "up" if self.link.connected else "down",
            ",".join("%s=%d" % (k, errors[k]) for k in sorted(errors)) or "none")

    async def supervisor(self, wdt):
        beat = 0
        while True:
            beat += 1
            if beat % _STATUS_EVERY_S == 0:
                print(self.status())
            now = time.ticks_ms()
            stalled = [n for n, (t, limit) in self.alive.items()
                       if time.ticks_diff(now, t) > limit]
            if not stalled and wdt is not None:
                wdt.feed()
            await asyncio.sleep_ms(1000)

    async def run(self, wdt=None):
        # If any task fails, gather raises and main.py resets the board: nothing to clean up.
        tasks = [asyncio.create_task(t) for t in (self.sample_task(), self.record_task(),
                                                  self.link_task(), self.supervisor(wdt))]
        await asyncio.gather(*tasks)


def _fs_bytes(root):
    import os

    st = os.statvfs(root)
    return st[0] * st[2]


def _sig_hash(sig):
    return binascii.hexlify(hashlib.sha256(sig).digest()).decode()


def _jitter(n):
    import os

    return int.from_bytes(os.urandom(4), "big") % n if n > 0 else 0
