"""A simulated electric vehicle: battery, pilot behaviour, its own key and wallet, the link.

It is the other party of docs/charging-protocol.md on a charger's vehicle-link UART: it checks
the station's offer and certificate against the community key before it signs an
authorization, asks for energy (pilot C) only after a grant and only while the PWM is on,
sends `stop` when its target is reached, countersigns the charger's final record after
checking it against what its battery received, verifies the receipt and keeps every receipt
file (accepted or refused) for `energo verify`. Its battery is the world's EV model
(`sim_board.world_models.Ev`), driven through the hooks there; the energy that went into the
battery is the ground truth it compares the charger's meter with.

`misbehave` scripts one of the attacks and faults the charger and the service must refuse:

- `replay-auth`: sends the authorization of an earlier session (or one recorded elsewhere);
- `tamper-offer`: the offer is changed in transit (its price), the vehicle must refuse it;
- `tamper-receipt`: the receipt is changed in transit (its energy), the vehicle must refuse
  it and so must `energo verify` on the file it keeps;
- `other-station`: an authorization bound to another station;
- `expired-auth`: an authorization that expired before the offer was made;
- `forged-auth`: an authorization naming this vehicle's key but signed with another one;
- `ignore-limit`: draws `excess_a` more than the pilot offers once charging;
- `garbage`, `oversized`: a line that is not a frame / longer than the link allows, instead
  of the authorization.

Threads: `start()` runs `step()` on a thread of its own; tests may instead call `step()`
themselves. `plug`, `unplug`, `pause` and `resume` may be called from any thread.
"""
import json
import os
import random
import threading
import time

from energo import evproto, identity, p256
from sim_board import vehicle_checks as checks
from sim_board.vehicle_link import LinkPeer, ev_control
from sim_board.world_models import pilot_current_a

MISBEHAVIOURS = ("replay-auth", "tamper-offer", "tamper-receipt", "other-station",
                 "expired-auth", "forged-auth", "ignore-limit", "garbage", "oversized")
_FROM_CHARGER = ("offer", "grant", "reject", "status", "final", "receipt", "error")
_POLL_S = 0.002  # real seconds between looks at the pilot while no frame arrives


def _number(name, value, lo, hi, integer=False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        raise ValueError(f"vehicle {name}: expected {'an integer' if integer else 'a number'} "
                         f"{lo}..{hi}, got {value!r}")
    return value


class Vehicle:
    """One vehicle with its key (`id`, `pub_hex`), wallet and session limits (see module doc)."""

    def __init__(self, community_key, wallet, *, emax_wh=20000, cmax_micro=10_000_000,
                 auth_ttl_s=900, target_wh=None, target_soc=None, soc_start=0.3,
                 misbehave=None, excess_a=10.0, seed=None, receipts_dir=None,
                 unplug_after_s=None):
        try:
            self.community_key = evproto.spki_hex(community_key)
        except evproto.ProtocolError:
            raise ValueError("vehicle community_key: expected the community's P-256 public "
                             f"key (hex SPKI), got {community_key!r:.40}") from None
        if not isinstance(wallet, str) or not wallet:
            raise ValueError("vehicle wallet: expected the member name that pays")
        self.wallet = wallet
        self.emax_wh = _number("emax_wh", emax_wh, 1, 10**7, integer=True)
        self.cmax_micro = _number("cmax_micro", cmax_micro, 1, 10**12, integer=True)
        self.auth_ttl_s = _number("auth_ttl_s", auth_ttl_s, 1, 86400, integer=True)
        self.target_wh = None if target_wh is None else _number("target_wh", target_wh, 1, 10**7)
        self.target_soc = None if target_soc is None else _number("target_soc", target_soc, 0, 1)
        self.soc_start = _number("soc_start", soc_start, 0, 1)
        self.excess_a = _number("excess_a", excess_a, 0.1, 80)
        self.unplug_after_s = None if unplug_after_s is None else _number(
            "unplug_after_s", unplug_after_s, 0, 86400)
        if misbehave is not None and misbehave not in MISBEHAVIOURS:
            raise ValueError(f"vehicle misbehave: one of {', '.join(MISBEHAVIOURS)}, "
                             f"got {misbehave!r}")
        self.misbehave = misbehave
        rng = random.Random(seed) if seed is not None else None
        self._urandom = rng.randbytes if rng is not None else os.urandom
        self.priv = p256.generate_private_key(self._urandom)
        pub = p256.public_key(self.priv)
        self.id = identity.device_id(pub, "vehicle")
        self.pub_hex = evproto.spki_hex(pub)
        self.receipts_dir = receipts_dir
        self.site = self.link = self.clock = None
        self.contactor = None  # optional probe: is the charger's contactor closed?
        self.sessions = []  # one dict per plug-in, newest last (see _new_session)
        self.log = []  # (world seconds, what)
        self.last_auth = None  # the newest honest authorization, for `replay-auth`
        self.schedule = []  # [(world seconds, soc)]: plug-ins to come (sim_board.vehicle_scenario)
        self._lock = threading.RLock()
        self._thread = None
        self._stop = threading.Event()

    def registration(self):
        """What the service's vehicle registry needs: id, public key, paying member."""
        return {"id": self.id, "pub": self.pub_hex, "member": self.wallet}

    # ---- wiring -------------------------------------------------------------------------------

    def connect(self, site, link, clock, contactor=None):
        """Sit on `site`'s EV model, talk over `link` (a LinkPeer), tell time with `clock()`."""
        if site.ev is None:
            raise ValueError(f"site {site.name!r} has no EV for the vehicle to be")
        self.site, self.link, self.clock, self.contactor = site, link, clock, contactor
        return self

    def attach(self, board, board_world):
        """Plug this vehicle's link into an emulated charger's `vehicle_link` UART."""
        cfg = board.config.get("vehicle_link")
        if not isinstance(cfg, dict) or cfg.get("uart") not in (1, 2):
            raise ValueError(f"board {board.name!r} has no vehicle_link UART")
        if board.uart_ports.get(cfg["uart"]) is not None:
            raise ValueError(f"board {board.name!r}: UART{cfg['uart']} is already wired")
        link = LinkPeer(cfg.get("baudrate", 115200), clock=board.clock)
        board.uart_ports[cfg["uart"]] = link
        pin = board.config.get("evse", {}).get("contactor")
        return self.connect(board_world.site, link, board.clock.true_time_s,
                            contactor=lambda: bool(board.pin_outputs.get(pin, 0)))

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"vehicle-{self.id}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self):
        while not self._stop.is_set():
            self.link.wait_readable(_POLL_S)
            try:
                self.step()
            except Exception as exc:  # a vehicle bug must show, not silently stop the vehicle
                self._note(f"vehicle error: {exc!r}")
                time.sleep(0.05)

    # ---- the driver's actions -------------------------------------------------------------------

    def plug(self, at_s=None, soc=None):
        """Plug in at world time `at_s` (default now); pilot B until a grant."""
        with self._lock:
            t = self.clock() if at_s is None else at_s
            soc = self.soc_start if soc is None else _number("soc", soc, 0, 1)

            def change(ev):
                ev.set_ignore_limit(None)
                ev.set_asking(False)
                ev.plug(t, soc)
            ev_control(self.site, self.clock(), change)
            self._note(f"plug at {t:.3f}")

    def unplug(self, at_s=None):
        """Pull the cable at world time `at_s` (default now): pilot A, the link goes quiet."""
        with self._lock:
            t = self.clock() if at_s is None else at_s
            ev_control(self.site, self.clock(), lambda ev: ev.unplug(t))
            self._note(f"unplug at {t:.3f}")

    def pause(self):
        """Stop asking for energy (C to B) without ending the session."""
        with self._lock:
            ev_control(self.site, self.clock(), lambda ev: ev.set_asking(False))

    def resume(self):
        """Ask again after a pause (B to C, while the PWM is on)."""
        with self._lock:
            ev_control(self.site, self.clock(), lambda ev: ev.set_asking(True))

    @property
    def session(self):
        return self.sessions[-1] if self.sessions else None

    def _note(self, what):
        self.log.append((self.clock() if self.clock else 0.0, what))

    def _new_session(self, plug_s, now):
        s = {"plug_s": plug_s, "state": "plugged", "vehicle": self.id,
             "vehicle_pub": self.pub_hex, "offer": None, "cert": None, "offer_text": None,
             "cert_text": None, "auth_text": None, "grant": None, "refused": None,
             "rejected": None, "errors_in": [], "statuses": [], "offline": None,
             "offer_s": None, "grant_s": None, "ask_s": None, "contactor_s": None,
             "stop_s": None, "end_s": None, "unplug_s": None, "countersigned_hash": None,
             "meter_text": None, "receipt": None, "receipt_path": None, "sign_s": 0.0,
             "verify_s": 0.0, "battery_wh": 0.0}
        self.sessions.append(s)
        if len(self.sessions) > 256:
            self.sessions.pop(0)
        self._note(f"session starts (plugged at {plug_s:.3f})")
        return s

    # ---- one step -------------------------------------------------------------------------------

    def step(self):
        """Read the link, react to the pilot and the battery; never blocks."""
        with self._lock:
            now = self.clock()
            if self.schedule and now >= self.schedule[0][0] and \
                    self.site.ev_pilot_state(now) == "A":
                self.plug(soc=self.schedule.pop(0)[1])
            with self.site.world.lock:
                self.site.ev_pilot_state(now)  # brings the battery's energy up to now
                ev = self.site.ev
                session = ev.session_at(now)
                duty = ev.duty_pct
                battery_wh = ev.session_energy_wh
                full = ev.full()
            if session is None:
                self.link.discard_input()  # no cable, no modem signal
                s = self.session
                if s is not None and s["unplug_s"] is None:
                    s["unplug_s"] = now
                return
            s = self.session
            if s is None or s["plug_s"] != session[0]:
                s = self._new_session(session[0], now)
            s["battery_wh"] = battery_wh
            if s["contactor_s"] is None and self.contactor is not None and self.contactor():
                s["contactor_s"] = now
            for line in self.link.lines():
                self._on_line(s, line, now)
            self._pilot(s, now, duty, battery_wh, full)

    def _pilot(self, s, now, duty, battery_wh, full):
        if s["state"] == "granted" and pilot_current_a(duty) > 0.0:
            offered_a = pilot_current_a(duty)

            def ask(ev):
                ev.set_asking(True)
                if self.misbehave == "ignore-limit":
                    ev.set_ignore_limit(min(80.0, offered_a + self.excess_a))
            ev_control(self.site, now, ask)
            s["state"], s["ask_s"] = "charging", now
            self._note("asking for energy (C)")
        elif s["state"] == "charging":
            reached = (battery_wh >= (self.target_wh or float("inf"))
                       or battery_wh >= s["grant"]["emax"] or full)
            if self.target_soc is not None:
                ev = self.site.ev
                reached = reached or ev.soc_wh >= self.target_soc * ev.capacity_wh
            if reached:
                ev_control(self.site, now, lambda ev: ev.set_asking(False))
                s["state"], s["stop_s"] = "stopping", now
                self._send(evproto.frame("stop"))
                self._note(f"target reached ({battery_wh:.0f} Wh): stop")
        elif s["end_s"] is not None and self.unplug_after_s is not None and \
                now >= s["end_s"] + self.unplug_after_s:
            ev_control(self.site, now, lambda ev: ev.unplug(now))
            s["unplug_s"] = now
            self._note(f"unplugged: session {s['state']}")

    # ---- frames ------------------------------------------------------------------------------------

    def _send(self, line):
        self.link.send(line)

    def _refuse(self, s, exc):
        s["refused"] = exc.reason
        s["state"], s["end_s"] = "refused", self.clock()
        ev_control(self.site, self.clock(), lambda ev: ev.set_asking(False))
        self._note(f"refused: {exc.reason}: {exc.detail}")
        self._send(evproto.frame("error", reason=exc.reason, detail=exc.detail[:200]))

    def _on_line(self, s, line, now):
        if line is None:  # dropped by the link: longer than a line may be
            self._send(evproto.frame("error", reason="oversized",
                                     detail=f"line longer than {evproto.LINE_MAX} bytes"))
            return
        try:
            f = evproto.read_frame(line)
        except evproto.ProtocolError as exc:
            self._note(f"bad frame: {exc.reason}")
            self._send(evproto.frame("error", reason=exc.reason, detail=exc.detail[:200]))
            return
        handler = getattr(self, "_on_" + f["k"]) if f["k"] in _FROM_CHARGER else None
        if handler is None:
            self._send(evproto.frame("error", reason="malformed",
                                     detail=f"a vehicle does not take {f['k']} frames"))
            return
        handler(s, f, now)

    def _on_error(self, s, f, now):
        s["errors_in"].append(f["reason"])
        self._note(f"charger error: {f['reason']}: {f['detail']}")

    def _on_status(self, s, f, now):
        s["statuses"].append((now, f["wh"], f["cost"], f["i"]))
        del s["statuses"][:-64]

    def _on_reject(self, s, f, now):
        s["rejected"] = f["reason"]
        if s["state"] not in ("done", "refused"):
            s["state"], s["end_s"] = "rejected", now
        ev_control(self.site, now, lambda ev: ev.set_asking(False))
        self._note(f"rejected: {f['reason']}: {f['detail']}")

    def _on_offer(self, s, f, now):
        if s["state"] == "authorizing" and s["offer_text"] == f["offer"]:
            self._send(evproto.frame("auth", auth=s["auth_text"]))  # our auth was lost: again
            return
        if s["state"] in ("granted", "charging", "stopping") and s["offer"] is not None and \
                s["offer_text"] != f["offer"]:
            # the charger started over (a restart cut our session): a new session, same cable
            ev_control(self.site, now, lambda ev: ev.set_asking(False))
            s = self._new_session(s["plug_s"], now)
        if s["state"] not in ("plugged", "authorizing"):
            return  # finished or refused on this plug-in: a new offer needs a new plug-in
        offer_text = f["offer"]
        if self.misbehave == "tamper-offer":
            offer_text = checks.tamper_offer(offer_text)
        t0 = time.perf_counter()
        try:
            offer, cert = checks.check_offer(offer_text, f["cert"], self.community_key, now)
        except evproto.ProtocolError as exc:
            s["verify_s"] += time.perf_counter() - t0
            self._refuse(s, exc)
            return
        s["verify_s"] += time.perf_counter() - t0
        s.update(offer=offer, cert=cert, offer_text=offer_text, cert_text=f["cert"],
                 state="authorizing", offer_s=now)
        line = self._auth_line(s, offer)
        self._send(line)

    def _auth_line(self, s, offer):
        body = {"t": "auth", "vehicle": self.id, "pub": self.pub_hex, "station": offer["station"],
                "nonce": offer["nonce"], "emax": self.emax_wh, "cmax": self.cmax_micro,
                "exp": offer["at"] + self.auth_ttl_s}
        m = self.misbehave
        if m == "garbage":
            return b"\x00\xffthis is not a frame {\"k\":\n"
        if m == "oversized":
            return b'{"k":"auth","auth":"' + b"a" * (evproto.LINE_MAX + 100) + b'"}\n'
        if m == "other-station":
            body["station"] = identity.device_id(p256.public_key(
                p256.generate_private_key(self._urandom)), "charger")
        elif m == "expired-auth":
            body["exp"] = offer["at"] - 1
        t0 = time.perf_counter()
        if m == "replay-auth" and self.last_auth is not None:
            text = self.last_auth
        elif m == "replay-auth":  # none of our own yet: one recorded from another session
            text = evproto.sign_message(self.priv, dict(body, nonce=evproto.new_nonce(
                self._urandom)))
        elif m == "forged-auth":  # our key in the body, someone else's signature
            text = evproto.sign_message(p256.generate_private_key(self._urandom), body)
        else:
            text = evproto.sign_message(self.priv, body)
        s["sign_s"] += time.perf_counter() - t0
        if m is None or m in ("tamper-receipt", "ignore-limit"):
            self.last_auth = text
        s["auth_text"] = text
        return evproto.frame("auth", auth=text)

    def _on_grant(self, s, f, now):
        if s["state"] != "authorizing":
            return
        t0 = time.perf_counter()
        try:
            grant, offline = checks.check_grant(f["grant"], self.community_key,
                                                s["cert"]["pub"], s["offer"], self.id,
                                                self.emax_wh, self.cmax_micro)
        except evproto.ProtocolError as exc:
            s["verify_s"] += time.perf_counter() - t0
            self._refuse(s, exc)
            return
        s["verify_s"] += time.perf_counter() - t0
        s.update(grant=grant, state="granted", grant_s=now, offline=offline)
        self._note(f"granted{' offline' if offline else ''}: hold {grant['hold']}")

    def _on_final(self, s, f, now):
        if s["state"] not in ("charging", "stopping", "granted"):
            return
        ev_control(self.site, now, lambda ev: ev.set_asking(False))
        status_wh = s["statuses"][-1][1] if s["statuses"] else None
        t0 = time.perf_counter()
        try:
            digest = checks.check_final(f["record"], s["cert"]["pub"], s["offer"]["nonce"],
                                        status_wh, s["battery_wh"])
        except evproto.ProtocolError as exc:
            s["verify_s"] += time.perf_counter() - t0
            self._refuse(s, exc)
            return
        s["verify_s"] += time.perf_counter() - t0
        body = {"t": "meter", "session": s["offer"]["nonce"], "vehicle": self.id,
                "station": s["offer"]["station"], "record": digest,
                "wh": int(round(s["battery_wh"]))}
        s["meter_text"] = evproto.sign_message(self.priv, body)
        s["countersigned_hash"] = digest
        s["state"] = "final"
        self._send(evproto.frame("meter", meter=s["meter_text"]))
        self._note(f"countersigned the final record ({body['wh']} Wh in the battery)")

    def _on_receipt(self, s, f, now):
        if s["grant"] is None or s["state"] in ("done",):
            return
        if self.misbehave == "tamper-receipt":
            f = dict(f, receipt=checks.tamper_receipt(f["receipt"]))
        refused = None
        try:
            s["receipt"] = checks.check_receipt(f, self.community_key, s, s["battery_wh"])
        except evproto.ProtocolError as exc:
            refused = exc
        s["receipt_path"] = self._keep_receipt(s, f, refused is not None)
        if refused is not None:
            self._refuse(s, refused)
            return
        s["state"], s["end_s"] = "done", now
        self._note(f"receipt accepted: {s['receipt']['total_micro']} µ")

    def _keep_receipt(self, s, f, refused):
        """The receipt file of docs/charging-protocol.md, named by session (and 'refused')."""
        doc = {"receipt": f["receipt"], "cert": s["cert_text"], "records": [f["begin"], f["end"]],
               "meter": s["meter_text"], "vehicle_pub": self.pub_hex,
               "community_key": self.community_key}
        if self.receipts_dir is None:
            return None
        os.makedirs(self.receipts_dir, exist_ok=True)
        name = s["offer"]["nonce"] + (".refused" if refused else "") + ".json"
        path = os.path.join(self.receipts_dir, name)
        with open(path, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1)
        return path
