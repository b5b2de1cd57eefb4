# The charger's side of the service conversation (docs/charging-protocol.md, "The service"):
# the sync after every connect, the service's answers on <id>/ev/reply, and the closes of
# finished sessions, sent from the journal (again and again until the receipt comes).
#
# A mixin of energo.charger.Charger, kept apart so each module stays one concern. Closes are
# streamed from flash (energo.link.Stream): a session of many records never sits in RAM whole.
import json
import time

from energo import evproto
from energo.link import Stream

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

CLOSE_RETRY_MS = const(30000)  # an unanswered close is sent again
CLOSE_REFUSED_MS = const(600000)  # a refused one, after this much longer


def close_head(state):
    """The close request up to its records (records, then b']}' follow)."""
    return ('{"t":"close","session":%s,"offer":%s,"auth":%s,"meter":%s,"offline":%s,'
            '"records":[' % (json.dumps(state["session"]), json.dumps(state["offer"]),
                             json.dumps(state["auth"]), json.dumps(state.get("meter")),
                             "true" if state["offline"] else "false")).encode()


class ServiceSide:
    """Sync, replies and closes; needs the Charger's link, journal, trust and session."""

    async def _service(self):
        link = self.link
        if link.client is not None and link.client is not self.synced_client:
            if link.publish_ev(b'{"t":"sync"}'):  # after every connect
                self.synced_client = link.client
                self.synced = False
        self.trust.set_price(link.price)
        for _ in range(2):
            msg = link.take_ev()
            if msg is None:
                break
            await self._on_reply(msg)
        self._send_close()

    async def _on_reply(self, msg):
        try:
            obj = json.loads(msg)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            t = obj.get("t")
            if t == "sync":
                if await self.crypto(self.trust.apply_sync_steps(obj)):
                    print("session: certificate and allow-list updated")
                if obj.get("price") is not None:
                    self.trust.set_price(_price(obj["price"]))
                self.synced = True
            elif t in ("grant", "receipt") or (t == "reject" and obj.get("reject")):
                body = evproto.open_message(obj.get(t), t)
                if self.trust.key is None:  # nothing to check it with (none before a sync)
                    raise evproto.ProtocolError("bad-signature", "no community key yet")
                await self.crypto(evproto.verify_steps(obj[t], self.trust.key))
                if body["station"] != self.device_id:
                    raise evproto.ProtocolError("wrong-station", "%s for %s" % (t, body["station"]))
                await getattr(self, "_on_" + t)(obj[t], body)
            elif t == "reject":  # unsigned: the request named no session the service could read
                print("session: the service refused a request:", obj.get("reason"),
                      obj.get("detail"))
            elif t == "stop":
                s = self.session
                if self.phase == "charging" and s["session"] == obj.get("session"):
                    s["_asked"] = True
            else:
                raise ValueError("unknown reply %r" % (t,))
        except (ValueError, TypeError) as exc:  # ProtocolError is a ValueError
            self.ev_errors["ev_reply_bad"] += 1
            print("session: bad reply from the service:", exc)

    async def _on_grant(self, text, body):
        if self.phase != "authorizing" or body["session"] != self.nonce:
            return  # a repeat, or an answer that came too late
        if body["vehicle"] != self.auth_body["vehicle"] or body["price"] != \
                self.offer_body["price"] or body["fee"] != self.offer_body["fee"]:
            self._reject("malformed", "the service's grant does not match the request")
            return
        await self._start(text, body["hold"], body["emax"], False)

    async def _on_reject(self, text, body):
        nonce = body["session"]
        if self.phase == "authorizing" and nonce == self.nonce:
            self._reject(body["reason"], body["detail"], text)
        elif nonce in self.pending:  # a close refused: kept, and tried again much later
            self.ev_errors["ev_close_refused"] = self.ev_errors.get("ev_close_refused", 0) + 1
            print("session:", nonce, "close refused:", body["reason"], body["detail"])
            self.sent_ms[nonce] = time.ticks_add(time.ticks_ms(), CLOSE_REFUSED_MS)

    async def _on_receipt(self, text, body):
        nonce = body["session"]
        state = self.pending.pop(nonce, None)
        if state is None:
            return  # settled before: the service repeated itself
        index = self.journal.records(nonce)
        s = self.session
        if s is not None and s["session"] == nonce and self.evse.state != "A" and index:
            self.vehicle.send("receipt", receipt=text,
                              begin=self.journal.read_record(nonce, index[0]).decode(),
                              end=self.journal.read_record(nonce, index[-1]).decode())
        self.journal.forget(nonce)
        self.sent_ms.pop(nonce, None)
        print("session:", nonce, "settled:", body["wh"], "Wh", body["total_micro"], "µ")

    def _send_close(self):
        """Send the oldest unsettled session's close (again, after CLOSE_RETRY_MS)."""
        if not self.link.connected or not self.pending:
            return
        now = time.ticks_ms()
        for nonce in sorted(self.pending):
            last = self.sent_ms.get(nonce)
            if last is not None and time.ticks_diff(now, last) < CLOSE_RETRY_MS:
                continue
            state = self.pending[nonce]
            index = self.journal.records(nonce)
            if not index:  # nothing was ever recorded: nothing to settle
                self.pending.pop(nonce)
                self.journal.forget(nonce)
                return
            path = self.journal.records_path(nonce)
            parts = [close_head(state)]
            for n, entry in enumerate(index):
                parts.append(b',"' if n else b'"')
                parts.append((path, entry[1], entry[2]))
                parts.append(b'"')
            parts.append(b"]}")
            if self.link.publish_ev(Stream(parts)):
                self.sent_ms[nonce] = now
                print("session:", nonce, "close sent,", len(index), "records")
            return


def _price(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 40:
        raise ValueError("price must be an integer of µ/kWh")
    return value
