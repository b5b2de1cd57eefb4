# The charger role: a meter (the SDM630 behind the charge point, one record counter, outbox,
# acks) plus the charge-and-pay session of docs/charging-protocol.md.
#
# Two tasks on top of the meter's: the Evse's (pilot, contactor, RCD and their timing rules,
# which live there alone) and the session task, which talks to the vehicle (energo.evlink) and
# to the service (the link's <id>/ev topics) and drives one session at a time:
#   plug (B) -> offer -> auth -> grant (the service's, or offline from the signed allow-list)
#   -> TX B record, PWM + permit -> C records -> stop -> E (A after a fault) record -> final
#   -> the vehicle's countersignature (or a timeout) -> close to the service -> receipt.
# What must survive a power cut is journaled (energo.evjournal) before it takes effect: on
# boot a session that was charging ends with a TX P record carrying the register as the meter
# reads it then, and every session not yet settled is closed again until the service's
# receipt arrives. The service settles by session exactly once, so repeats are harmless.
#
# Every signature and verification is made in slices (Meter.crypto: p256.sliced, one at a
# time) so that the other tasks run in between and a loop pass holds little garbage. Records,
# periodic and session alike, are made one at a time (record_lock, held from the counter taken
# to the record stored): a session record may not overtake a periodic one half-signed
# (counters out of order, the XC chain forked). The Evse's task never waits on any of this.
import asyncio
import binascii
import json
import os
import time

from energo import evproto, p256, wallclock
from energo.evjournal import Journal, JournalError
from energo.evlink import VehicleLink
from energo.evservice import ServiceSide
from energo.evtrust import Trust
from energo.meter import Meter
from energo.sources import wait_steps

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

_TICK_MS = const(100)
# While a vehicle waits on the handshake (our offer out, its auth or the service's answer due)
# the session task ticks this often, and an idle one wakes this soon after the pilot changes:
# the plug-to-contactor time is otherwise mostly ticks spent waiting.
_FAST_TICK_MS = const(20)
_HANDSHAKE = ("offered", "authorizing")
AUTH_WAIT_MS = const(30000)  # the vehicle's auth after our offer
GRANT_WAIT_MS = const(20000)  # the service's grant or reject after we forwarded the auth
METER_WAIT_MS = const(20000)  # the vehicle's countersignature after the final record
STATUS_EVERY_MS = const(10000)
DONE_IN_B_MS = const(120000)  # back in B this long after charging: the vehicle is done
FAULT_RETRY_MS = const(60000)  # after a fault stop, the Evse is cleared this long later
OVERDRAW_MS = const(10000)  # two meter polls: a vehicle has 5 s to follow a lower PWM


def overdrawn(current_ma, offered_a):
    """Whether a vehicle draws more than the pilot offers it: over 110 % + 1 A (the meter's
    and the vehicle's tolerances); a vehicle that keeps this up for OVERDRAW_MS is cut off."""
    return offered_a > 0 and current_ma > offered_a * 1100 + 1000


def stop_reason(pilot, fault, asked, wh, emax, price, fee, hold, in_b_ms, done_in_b_ms):
    """Why a session being charged stops now: "A" (a fault: abort), "E" (unplugged, the
    vehicle's stop, back in B for good, energy or cost limit), or None to go on."""
    if fault is not None or pilot in ("E", "F"):
        return "A"
    if pilot == "A" or asked or in_b_ms >= done_in_b_ms:
        return "E"
    if wh >= emax or wh * price // 1000 + wh * fee // 1000 >= hold:
        return "E"
    return None


class Charger(ServiceSide, Meter):
    role = "charger"
    firmware_name = "energo-charger"
    idle_link_ms = 200  # a vehicle's handshake waits on the service's answers: never idle
    slice_pause_ms = 1  # and on the records and checks made in slices (Meter.crypto)
    _recording = None  # the session whose records are being made (keep_record journals them)
    _periodic = False  # the record being made is a periodic C record (it may not fill the log)

    def open(self):
        device_id = Meter.open(self)
        from energo.evse import Evse

        self.spki = binascii.hexlify(p256.spki_encode(self.keystore.public_key)).decode()
        self.link.ev = True
        self.evse = Evse(self.board, self.machine)
        cfg = self.board["vehicle_link"]
        uart = self.machine.UART(cfg["uart"], baudrate=cfg.get("baudrate", 115200),
                                 tx=cfg["tx"], rx=cfg["rx"])
        self.vehicle = VehicleLink(uart)
        self.record_lock = asyncio.Lock()  # one record at a time (see the header)
        self.journal = Journal(self.root + "/ev")
        self.trust = Trust(self.root + "/evtrust.json", device_id, self.spki)
        self.trust.load()
        self.session = None  # the journaled state of the session at the plug
        self.phase = "idle"  # idle, offered, authorizing, charging, ending, done
        self.deadline = None
        self.fault_ms = None
        self.offer = self.offer_body = self.auth = self.auth_body = self.final = None
        self.nonce = None
        self.auth_checked = False  # the vehicle's signature on self.auth, checked here
        self.pending = {}  # nonce -> state of sessions waiting to be settled
        self.boot_end = []  # sessions a power cut interrupted: each gets a TX P record first
        self.sent_ms = {}  # nonce -> ticks of the last close sent
        self.synced_client = None  # the MQTT client our last sync request went out on
        self.synced = False  # a sync answer arrived on the current connection
        self.ev_errors = {"ev_rejected": 0, "ev_reply_bad": 0, "ev_unexpected": 0,
                          "ev_session": 0}
        for state in self.journal.open():
            self._recover(state)
        for problem in self.journal.problems + self.trust.problems:
            print("session:", problem)
        return device_id

    def _recover(self, state):
        """A session found in the journal at boot: drop records no outbox knows, queue it."""
        nonce = state["session"]
        self.journal.trim_records(nonce, self.outbox.last_counter())
        if state["state"] == "charging":
            self.boot_end.append(state)
            return
        if state["state"] == "ending":  # cut while waiting for the countersignature
            state["state"] = "closing"
            self.journal.save(state)
        self.pending[nonce] = state

    # --- records -----------------------------------------------------------------------------

    async def periodic_record(self):
        """Periodic records: T<n> with the session id while a session is metered, else F<n>."""
        async with self.record_lock:
            if self.boot_end:
                return False  # the interrupted session's TX P comes first (its T<n> contiguous)
            state = self._recording
            if state is None:
                return await self.make_record_in_slices("F", "C", ())
            try:
                self._periodic = True
                return await self.make_record_in_slices("T", "C", (("XS", state["session"]),))
            except JournalError as exc:  # the session's log is full: end it (room kept for E)
                print("session:", exc)
                state["_asked"] = True
                return False
            finally:
                self._periodic = False

    def keep_record(self, counter, record):
        if self._recording is not None:
            self.journal.append_record(self._recording["session"], counter, record,
                                       1 if self._periodic else 0)

    async def _session_record(self, state, tx):
        """One T record of a session (TX B/C/E/A/P), journaled before it reaches the outbox."""
        async with self.record_lock:
            self._recording = state
            record = False
            try:
                record = await self.make_record_in_slices("T", tx, (("XS", state["session"]),))
            finally:
                if tx in "EAP" and record:
                    self._recording = None
                elif tx == "B" and not record:
                    self._recording = None
            return record

    # --- the session task --------------------------------------------------------------------

    async def session_task(self):
        while True:
            self._mark("session", _TICK_MS)
            try:
                await self.step()
            except (OSError, JournalError, evproto.ProtocolError) as exc:
                self.ev_errors["ev_session"] += 1  # flash trouble: retried on the next tick
                print("session: step failed:", exc)
            await self._nap()

    async def _nap(self):
        """Wait for the next tick: _FAST_TICK_MS during a handshake, else up to _TICK_MS,
        cut short when the Evse sees another pilot state (a plug-in gets its offer at once)."""
        pilot = self.evse.state
        waited = 0
        while waited < _TICK_MS:
            await asyncio.sleep_ms(_FAST_TICK_MS)
            waited += _FAST_TICK_MS
            if self.phase in _HANDSHAKE or self.evse.state != pilot:
                return

    async def step(self):
        """One tick: end interrupted sessions, service replies, vehicle frames, the phase."""
        if self.boot_end:
            if not self.source.ready:
                return  # the TX P record carries the register as the meter reads it now
            await self._end_interrupted(self.boot_end[0])
            self.boot_end.pop(0)
        if self.phase == "authorizing":
            self.link.poll()  # the service's answer, now rather than at the link's next tick
        await self._service()
        for fr in self.vehicle.poll():
            # A pass of its own for each frame's handling (a signed message's checks make
            # ~6 KB of garbage, the frame's parse ~4 KB): see make_record_in_slices.
            await asyncio.sleep_ms(self.slice_pause_ms)
            await self._on_frame(fr, time.ticks_ms())
        now = time.ticks_ms()
        await getattr(self, "_in_" + self.phase)(self.evse.state, now)

    async def _end_interrupted(self, state):
        print("session:", state["session"], "ended by a power cut: TX P")
        try:
            if not await self._session_record(state, "P"):
                raise OSError("cannot store the TX P record yet")
        except JournalError as exc:  # its log cannot take it (a counter skipped at boot):
            self._recording = None  # close it as it is rather than stop recording for good
            print("session: no TX P:", exc)
        state["state"] = "closing"
        state["stop"] = "P"
        self.journal.save(state)
        self.pending[state["session"]] = state

    def _wait(self, now, ms):
        self.deadline = time.ticks_add(now, ms)

    def _expired(self, now):
        return self.deadline is not None and time.ticks_diff(now, self.deadline) >= 0

    async def _in_idle(self, pilot, now):
        if self.evse.fault is not None:
            self._to_done("fault %s" % self.evse.fault)  # cleared there, after a while
            return
        if pilot not in ("B", "C"):
            return
        price = self.link.price
        if price is None and (self.synced or not self.link.connected):
            # The price kept on flash is for offline sessions; online, an offer waits for
            # this connection's sync answer (the price may have changed while we were off).
            price = self.trust.price
        at = wallclock.now_ms() // 1000
        if price is None or wallclock.sync_status() != "S" or not self.trust.cert_valid(at):
            return  # no certificate, price or true time yet: the vehicle waits in B
        self.nonce = evproto.new_nonce(os.urandom)
        body = {"station": self.device_id, "nonce": self.nonce, "price": price,
                "fee": self.trust.fee, "imax": self.evse.max_a, "at": at}
        self.offer = await self.sign("offer", body)
        self.offer_body = body  # what was signed; reading the signed text back makes ~6 KB
        print("session: offer", self.nonce)
        self.vehicle.send("offer", offer=self.offer, cert=self.trust.cert)
        self.phase = "offered"
        self._wait(now, AUTH_WAIT_MS)

    async def sign(self, t, body):
        """A signed message of type t (set in body) made with the device key, which never
        leaves it."""
        body["t"] = t
        text = evproto.write_body(body)
        return evproto.join_signed(text, await self.crypto(self.keystore.sign_steps(text)))

    async def _in_offered(self, pilot, now):
        if pilot == "A":
            self._to_done(None)
        elif self._expired(now):
            self._reject("expired", "no authorization within %d s" % (AUTH_WAIT_MS // 1000))

    async def _in_authorizing(self, pilot, now):
        if pilot == "A":
            self._to_done("unplugged while authorizing")
        elif self._expired(now):
            if self.link.connected:
                self._reject("expired", "no answer from the service")
            else:
                await self._offline()  # the link broke while we waited: decide here

    async def _in_charging(self, pilot, now):
        s = self.session
        if s.get("_stop"):
            await self._stop(s["_stop"], now)  # the stop record could not be stored yet
            return
        wh = self.import_wh - s["wh0"]
        if pilot == "B":
            if s.get("_b") is None:
                s["_b"] = now
        else:
            s["_b"] = None
        in_b_ms = 0 if s.get("_b") is None else time.ticks_diff(now, s["_b"])
        self._watch_current(s, now)
        why = stop_reason(pilot, self.evse.fault, s.get("_asked"), wh, s["emax"], s["price"],
                          s["fee"], s["hold"], in_b_ms, DONE_IN_B_MS)
        if why is not None:
            await self._stop(why, now)
        elif time.ticks_diff(now, s.get("_status", 0)) >= STATUS_EVERY_MS or "_status" not in s:
            s["_status"] = now
            total = evproto.cost(max(wh, 0), s["price"], s["fee"], s["hold"])[2]
            self.vehicle.send("status", wh=max(wh, 0), cost=total, i=int(self.evse.offered_a))

    def _watch_current(self, s, now):
        """Trip the Evse (overcurrent) when the vehicle keeps drawing more than offered."""
        current_ma, offered_a = self.source.instant.current_ma, self.evse.offered_a
        if not (self.evse.contactor and overdrawn(current_ma, offered_a)):
            s["_over"] = None
        elif s.get("_over") is None:
            s["_over"] = now
        elif time.ticks_diff(now, s["_over"]) >= OVERDRAW_MS:
            print("session: overcurrent:", current_ma, "mA drawn,", offered_a, "A offered")
            self.evse.trip("overcurrent")

    async def _in_ending(self, pilot, now):
        if self._expired(now):
            print("session: no countersignature; closing without it")
            self._to_closing()

    async def _in_done(self, pilot, now):
        if self.evse.fault is not None:  # after a fault: try again once its cause has gone
            if self.fault_ms is None:
                self.fault_ms = now
            elif time.ticks_diff(now, self.fault_ms) >= FAULT_RETRY_MS:
                self.fault_ms = now if not self.evse.clear() else None
            return
        self.fault_ms = None
        if pilot == "A":
            self.phase = "idle"
            self.session = None
            self.deadline = None

    def _to_done(self, why):
        """The handshake's texts and bodies go (~1 KB): the journaled state keeps what settling
        needs, and a session waiting for its receipt should not hold them until the next plug."""
        if why:
            print("session:", why)
        self.phase = "done"
        self.deadline = None
        self.offer = self.offer_body = self.auth = self.auth_body = self.final = None

    def _reject(self, reason, detail, signed=None):
        self.ev_errors["ev_rejected"] += 1
        print("session: rejected:", reason, detail)
        self.vehicle.send("reject", reason=reason, detail=detail[:evproto.DETAIL_MAX],
                          reject=signed)
        self._to_done(None)

    # --- vehicle frames ----------------------------------------------------------------------

    async def _on_frame(self, fr, now):
        kind = fr["k"]
        if kind == "auth" and self.phase == "offered":
            await self._on_auth(fr["auth"], now)
        elif kind == "stop" and self.phase == "charging":
            self.session["_asked"] = True
        elif kind == "meter" and self.phase == "ending":
            await self._on_meter(fr["meter"])
        elif kind == "error":
            print("session: vehicle reports", fr["reason"], fr["detail"])
        else:
            self.ev_errors["ev_unexpected"] += 1

    async def _on_auth(self, text, now):
        try:
            body = evproto.open_message(text, "auth")
            if body["station"] != self.device_id:
                raise evproto.ProtocolError("wrong-station", "auth for %s" % body["station"])
            if body["nonce"] != self.nonce:
                raise evproto.ProtocolError("nonce-mismatch", "auth for another offer")
            if body["exp"] < self.offer_body["at"]:
                raise evproto.ProtocolError("expired", "auth expired at %d" % body["exp"])
        except evproto.ProtocolError as exc:
            self._reject(exc.reason, exc.detail)
            return
        self.auth, self.auth_body, self.auth_checked = text, body, False
        # Online the service decides: it checks the signature against the vehicle's account
        # and answers with a grant or a reject that it signs, and that signature is the one we
        # check. Ours (~90 slices, a third of the way to the contactor) is made only when we
        # decide ourselves (_offline).
        if self.link.connected and self.link.publish_ev(
                json.dumps({"t": "authorize", "offer": self.offer, "auth": text})):
            self.phase = "authorizing"
            self._wait(now, GRANT_WAIT_MS)
        else:
            await self._offline()

    async def _offline(self):
        offer, auth = self.offer_body, self.auth_body
        if not self.auth_checked:
            try:  # it holds the key it names
                await self.crypto(evproto.verify_steps(self.auth, auth["pub"]))
            except evproto.ProtocolError as exc:
                self._reject(exc.reason, exc.detail)
                return
            self.auth_checked = True
        hold, reason, detail = self.trust.offline_decision(
            auth, offer["at"], offer["price"], offer["fee"], len(self.pending))
        if reason is not None:
            self._reject(reason, detail)
            return
        grant = await self.sign("grant", {"session": self.nonce, "station": self.device_id,
                                    "vehicle": auth["vehicle"], "price": offer["price"],
                                    "fee": offer["fee"], "hold": hold, "emax": auth["emax"]})
        print("session: offline grant, hold", hold)
        await self._start(grant, hold, auth["emax"], True)

    async def _start(self, grant, hold, emax, offline):
        offer, auth = self.offer_body, self.auth_body
        state = {"session": self.nonce, "state": "charging", "offer": self.offer,
                 "auth": self.auth, "grant": grant, "offline": offline, "hold": hold,
                 "emax": emax, "price": offer["price"], "fee": offer["fee"],
                 "vehicle": auth["vehicle"], "vpub": auth["pub"], "wh0": self.import_wh,
                 "stop": None, "meter": None}
        self.journal.save(state)  # first: a cut from here on ends the session with TX P
        if not await self._session_record(state, "B"):
            self.journal.forget(self.nonce)
            self._reject("malformed", "the charger cannot record a session now")
            return
        self.session = state
        self.vehicle.send("grant", grant=grant)
        self.evse.offer(self.evse.max_a)
        self.evse.permit(True)
        self.phase = "charging"
        print("session:", self.nonce, "charging for", auth["vehicle"])

    async def _stop(self, tx, now):
        s = self.session
        self.evse.permit(False)
        if self.evse.fault is None:
            self.evse.offer(0)
        try:  # the stop record carries the register as it is now, not one poll ago
            self.import_wh, self.export_wh = await wait_steps(self.source.sample_steps())
        except self.source.faults:
            self.errors["sample"] += 1
        s["_stop"] = tx
        record = await self._session_record(s, tx)
        if not record:
            return
        for key in ("_stop", "_b", "_asked", "_status", "_over"):
            s.pop(key, None)
        s["state"] = "ending"
        s["stop"] = tx
        self.journal.save(s)
        print("session:", s["session"], "stopped, TX", tx)
        self.final = record.decode()
        self.vehicle.send("final", record=self.final)
        self.phase = "ending"
        self._wait(now, METER_WAIT_MS)

    async def _on_meter(self, text):
        s = self.session
        try:
            body = evproto.open_message(text, "meter")
            await self.crypto(evproto.verify_steps(text, s["vpub"]))
            if body["session"] != s["session"] or body["station"] != self.device_id or \
                    body["vehicle"] != s["vehicle"]:
                raise evproto.ProtocolError("wrong-station", "countersignature of another session")
            if body["record"] != evproto.record_hash(self.final):
                raise evproto.ProtocolError("bad-records", "countersigned another record")
        except evproto.ProtocolError as exc:
            self.vehicle.send("error", reason=exc.reason, detail=exc.detail[:evproto.DETAIL_MAX])
            return
        s["meter"] = text
        self._to_closing()

    def _to_closing(self):
        s = self.session
        s["state"] = "closing"
        self.journal.save(s)
        self.pending[s["session"]] = s
        self.sent_ms.pop(s["session"], None)
        self._to_done(None)

    # --- status and tasks ----------------------------------------------------------------------

    def error_sources(self):
        return Meter.error_sources(self) + (self.vehicle.errors, self.ev_errors)

    def hello(self):
        out = Meter.hello(self)
        out["ev_pending"] = len(self.pending) + len(self.boot_end)
        return out

    async def run(self, wdt=None):
        tasks = [asyncio.create_task(t) for t in (
            self.sample_task(), self.record_task(), self.link_task(), self.supervisor(wdt),
            self.evse.run(), self.session_task())]
        await asyncio.gather(*tasks)
