# What a charger keeps on flash to serve vehicles while the service is unreachable: the
# community key, the station certificate, the signed allow-list and the last reference price,
# all from the service's `sync` answer (docs/charging-protocol.md).
#
# Why each is checked, and when. The community key comes from the service over the broker,
# whose credentials only our service and this device hold; it is pinned at the first sync, so
# a later answer with another key is refused (a community rotating its key re-provisions its
# chargers). The certificate must certify this station and this device key; an allow-list is
# taken only if the community signed it and its `seq` is not older than the one we have, so an
# old list (with a vehicle since removed) cannot be replayed. The file is written as a temp
# file, then renamed: a power cut leaves the old trust or the new.
import json
import os

from energo import evproto
from energo.evjournal import SESSIONS_MAX

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

FILE_BYTES_MAX = const(20000)


class Trust:
    """Community key, certificate, allow-list and price; `problems` says what was refused."""

    def __init__(self, path, station, spki):
        self.path = path
        self.station = station
        self.spki = spki
        self.key = None
        self.cert = None
        self.cert_body = None
        self.allow = None
        self.allow_body = None
        self.price = None
        self.problems = []

    @property
    def fee(self):
        return self.cert_body["fee"] if self.cert_body is not None else 0

    def load(self):
        """Read the file kept by save(); anything that no longer checks out is left out."""
        try:
            with open(self.path) as f:
                text = f.read(FILE_BYTES_MAX + 1)
            data = json.loads(text)
            if not isinstance(data, dict) or len(text) > FILE_BYTES_MAX:
                raise ValueError("not an object")
        except (OSError, ValueError) as exc:
            if not isinstance(exc, OSError):
                self.problems.append("trust file: %s" % exc)
            return False
        key = data.get("key")
        if isinstance(key, str):
            try:
                evproto.public_key(key)
                self.key = key
            except evproto.ProtocolError:
                self.problems.append("trust file: bad community key")
        from energo import p256

        p256.finish(self._take_steps(data.get("cert"), data.get("allow")))
        price = data.get("price")
        if not isinstance(price, bool) and isinstance(price, int) and price >= 0:
            self.price = price
        return self.key is not None

    def save(self):
        data = {"key": self.key, "cert": self.cert, "allow": self.allow, "price": self.price}
        with open(self.path + ".tmp", "w") as f:
            f.write(json.dumps(data))
            f.flush()
        os.rename(self.path + ".tmp", self.path)

    def apply_sync(self, reply):
        """Take a sync answer (a dict); True when something new was saved."""
        from energo import p256

        return p256.finish(self.apply_sync_steps(reply))

    def apply_sync_steps(self, reply):
        """apply_sync in slices (a steps-generator returning its result; p256.sliced):
        the certificate and the allow-list are verified while the charger's tasks run."""
        key = reply.get("community_key")
        if not isinstance(key, str):
            self.problems.append("sync: no community key")
            return False
        if self.key is not None and key != self.key:
            self.problems.append("sync: community key differs from the pinned one; refused")
            return False
        try:
            evproto.public_key(key)
        except evproto.ProtocolError:
            self.problems.append("sync: community key is not a P-256 key")
            return False
        before = (self.key, self.cert, self.allow)
        self.key = key
        yield from self._take_steps(reply.get("cert"), reply.get("allow"))
        if (self.key, self.cert, self.allow) == before:
            return False
        self.save()
        return True

    def set_price(self, price):
        """Remember the newest reference price for offers made while offline."""
        if price is not None and price != self.price:
            self.price = price
            self.save()

    def _take_steps(self, cert, allow):
        """Check and keep a certificate and an allow-list (each verified in slices)."""
        if self.key is None:
            return
        if cert is not None:
            try:
                body = evproto.open_message(cert, "cert")
                yield from evproto.verify_steps(cert, self.key)
                if body["station"] != self.station or body["pub"] != self.spki:
                    raise evproto.ProtocolError("wrong-station", "certificate is for %s"
                                                % body["station"])
                self.cert, self.cert_body = cert, body
            except evproto.ProtocolError as exc:
                self.problems.append("cert: %s" % exc)
        if allow is not None:
            try:
                body = evproto.open_message(allow, "allow")
                yield from evproto.verify_steps(allow, self.key)
                if self.allow_body is not None and body["seq"] < self.allow_body["seq"]:
                    raise evproto.ProtocolError("expired", "allow-list seq %d older than %d"
                                                % (body["seq"], self.allow_body["seq"]))
                self.allow, self.allow_body = allow, body
            except evproto.ProtocolError as exc:
                self.problems.append("allow: %s" % exc)

    def cert_valid(self, now_s):
        return self.cert_body is not None and self.cert_body["exp"] >= now_s

    def offline_decision(self, auth, now_s, price, fee, pending):
        """(hold, None, "") to serve the vehicle of a checked `auth` body offline, or
        (0, reason, detail): see "Offline sessions" in docs/charging-protocol.md."""
        return offline_decision(self.allow_body, auth, now_s, price, fee, pending)


def offline_decision(allow, auth, now_s, price, fee, pending, sessions_max=SESSIONS_MAX):
    """The offline rule on its own (a checked allow-list body, a checked auth body)."""
    if allow is None:
        return 0, "unknown-vehicle", "no allow-list on this charger"
    if allow["exp"] < now_s:
        return 0, "expired", "the allow-list expired at %d" % allow["exp"]
    entry = None
    for item in allow["vehicles"]:
        if item["id"] == auth["vehicle"]:
            entry = item
    if entry is None:
        return 0, "unknown-vehicle", "%s is not on the allow-list" % auth["vehicle"]
    if entry["pub"] != auth["pub"]:
        return 0, "unknown-vehicle", "%s has another key on the allow-list" % auth["vehicle"]
    if entry["limit"] <= 0:
        return 0, "limit-exceeded", "no offline credit for %s" % auth["vehicle"]
    if pending >= sessions_max:
        return 0, "limit-exceeded", "%d sessions wait to be settled" % pending
    hold = min(evproto.hold_for(auth["emax"], auth["cmax"], price, fee), entry["limit"])
    return hold, None, ""
