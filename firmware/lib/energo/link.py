# The device's MQTT link, on micropython-lib's umqtt.simple (installed on the
# board, not part of this tree).
#
# umqtt.simple has no timeouts of its own: connect() makes a socket without
# one, and wait_msg() switches the socket back to blocking after every read,
# so a QoS1 publish waits forever for a PUBACK that never comes. We hand it
# sockets whose "blocking" means "blocking with our timeout", so every socket
# operation ends within timeout_s and failures surface as OSError. A failure
# drops the connection; reconnects back off exponentially with jitter.
#
# Topics (ARCHITECTURE 4.2): energo/v1/<community>/<device>/{rec,ack,hello,state}; a charger
# (ev=True) also publishes on <device>/ev and takes <device>/ev/reply and the community's
# retained price into a bounded inbox its role drains.
import json
import time

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

_ACK_BYTES_MAX = const(64)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(300000)
_KEEPALIVE_S = const(60)
EV_REPLY_BYTES_MAX = const(16384)  # a sync reply: certificate and a full allow-list
_EV_INBOX_MAX = const(4)
_PRICE_BYTES_MAX = const(512)
_CHUNK_BYTES = const(256)


class _TimedSocket:
    """A socket for umqtt.simple whose blocking mode always carries a timeout."""

    def __init__(self, sock, timeout_s):
        self._sock = sock
        self._timeout_s = timeout_s
        sock.settimeout(timeout_s)

    def setblocking(self, flag):
        if flag:
            self._sock.settimeout(self._timeout_s)
        else:
            self._sock.setblocking(False)

    def connect(self, addr):
        self._sock.connect(addr)

    def read(self, n):
        return self._sock.read(n)

    def write(self, data, length=None):
        if isinstance(data, Stream):
            return data.write_to(self._sock)
        if length is None:
            return self._sock.write(data)
        return self._sock.write(memoryview(data)[:length])

    def close(self):
        self._sock.close()


class _TimedSocketModule:
    """Stands in for the socket module inside umqtt.simple (socket() and getaddrinfo())."""

    def __init__(self, real, timeout_s):
        self._real = real
        self._timeout_s = timeout_s

    def socket(self, *args):
        return _TimedSocket(self._real.socket(*args), self._timeout_s)

    def getaddrinfo(self, host, port, *args):
        return self._real.getaddrinfo(host, port, *args)


def topic_base(community, device_id):
    return "energo/v1/%s/%s/" % (community, device_id)


class Stream:
    """A message written in pieces: bytes, or (path, offset, length) read from flash in small
    chunks and written as the inside of a JSON string (quotes and backslashes escaped; the
    records it carries are ASCII). umqtt.simple takes len() of it and hands it to our
    socket's write(), so a close with a whole session's records is never in RAM at once."""

    def __init__(self, parts):
        self.parts = parts
        self.size = 0
        for part in parts:
            if isinstance(part, tuple):
                self.size += part[2] + self._each(part, None)
            else:
                self.size += len(part)

    def __len__(self):
        return self.size

    @staticmethod
    def _each(part, sock):
        """Read a file part in chunks; write it escaped to sock (if any). Returns the escapes."""
        path, offset, left = part
        buf = bytearray(_CHUNK_BYTES)
        extra = 0
        with open(path, "rb") as f:
            f.seek(offset)
            while left:
                n = f.readinto(memoryview(buf)[:min(left, _CHUNK_BYTES)])
                if not n:
                    raise OSError("file shrank while sending")
                chunk = bytes(buf[:n])
                escaped = chunk.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                extra += len(escaped) - n
                if sock is not None:
                    sock.write(escaped)
                left -= n
        return extra

    def write_to(self, sock):
        for part in self.parts:
            if isinstance(part, tuple):
                self._each(part, sock)
            else:
                sock.write(part)
        return self.size


class Link:
    """Connect, publish records QoS1, receive cumulative acks; never blocks past timeout_s."""

    def __init__(self, device_id, settings, timeout_s=5, clock=time, rand=None, ev=False):
        self.device_id = device_id
        self.settings = settings
        self.timeout_s = timeout_s
        self.clock = clock
        self.rand = rand
        base = topic_base(settings["community"], device_id)
        self.topic_rec = base + "rec"
        self.topic_ack = base + "ack"
        self.topic_hello = base + "hello"
        self.topic_state = base + "state"
        self.ev = ev
        self.topic_ev = base + "ev"
        self.topic_ev_reply = base + "ev/reply"
        self.topic_price = "energo/v1/%s/price" % settings["community"]
        self.inbox = []  # ev replies (bytes), oldest first, at most _EV_INBOX_MAX
        self.price = None  # the community's reference price (µ/kWh) as last published
        self.client = None
        self.acked = None  # highest counter the service settled with no gap
        self.failures = 0
        self.next_try_ms = clock.ticks_ms()
        self.errors = {"connect": 0, "publish": 0, "ack_bad": 0, "ack_foreign": 0,
                       "ev_reply_bad": 0, "ev_inbox_full": 0}
        self.last_error = None

    @property
    def connected(self):
        return self.client is not None

    def _backoff(self):
        self.failures += 1
        delay = _BACKOFF_MIN_MS << min(self.failures - 1, 9)
        delay = min(delay, _BACKOFF_MAX_MS)
        if self.rand is not None:
            delay = delay // 2 + self.rand(delay // 2 + 1)  # jitter: 50-100 %
        self.next_try_ms = self.clock.ticks_add(self.clock.ticks_ms(), delay)

    def _broken(self, kind):
        """A socket operation failed: count it, drop the connection, back off."""
        self.errors[kind] += 1
        self._drop()
        self._backoff()
        return False

    def _drop(self):
        client = self.client
        self.client = None
        if client is not None:
            try:
                client.sock.close()
            except (OSError, AttributeError):
                pass

    def connect(self, hello):
        """Try to connect if the backoff allows; True when connected. `hello` is a dict."""
        if self.client is not None:
            return True
        if self.clock.ticks_diff(self.clock.ticks_ms(), self.next_try_ms) < 0:
            return False
        import socket

        import umqtt.simple

        simple = umqtt.simple
        simple.socket = _TimedSocketModule(socket, self.timeout_s)
        s = self.settings
        client = simple.MQTTClient(self.device_id, s["mqtt_host"], s["mqtt_port"],
                                   s["mqtt_user"], s["mqtt_password"], keepalive=_KEEPALIVE_S)
        client.set_callback(self._on_message)
        client.set_last_will(self.topic_state, b"offline", retain=True, qos=1)
        try:
            client.connect(clean_session=True)
            self.client = client
            client.publish(self.topic_state, b"online", True, 1)
            client.publish(self.topic_hello, json.dumps(hello).encode(), False, 1)
            client.subscribe(self.topic_ack, 1)
            if self.ev:
                client.subscribe(self.topic_ev_reply, 1)
                client.subscribe(self.topic_price, 1)
        except (OSError, IndexError, AssertionError, simple.MQTTException) as exc:
            # IndexError/AssertionError: umqtt.simple's reaction to a closed or odd reply.
            self.last_error = "%s %s" % (type(exc).__name__, exc)
            return self._broken("connect")
        self.failures = 0
        return True

    def publish(self, record):
        """Publish one record QoS1 (waits for PUBACK); False and disconnected on failure."""
        if self.client is None:
            return False
        try:
            self.client.publish(self.topic_rec, record, False, 1)
        except (OSError, IndexError, AssertionError):
            return self._broken("publish")
        return True

    def publish_ev(self, message):
        """Publish one request (bytes, str or Stream) on <device>/ev, QoS1; False on failure."""
        if self.client is None:
            return False
        if isinstance(message, str):
            message = message.encode()
        try:
            self.client.publish(self.topic_ev, message, False, 1)
        except (OSError, IndexError, AssertionError):
            return self._broken("publish")
        return True

    def take_ev(self):
        """The oldest ev reply received (bytes), or None."""
        if self.inbox:
            return self.inbox.pop(0)
        return None

    def poll(self, messages_max=4):
        """Handle up to messages_max pending messages (acks); False if the link broke."""
        if self.client is None:
            return False
        try:
            for _ in range(messages_max):
                if self.client.check_msg() is None:
                    break
        except (OSError, IndexError, AssertionError):
            return self._broken("publish")
        return True

    def ping(self):
        if self.client is not None:
            try:
                self.client.ping()
            except OSError:
                self._broken("publish")

    def _on_message(self, topic, msg):
        if self.ev and self._on_ev(bytes(topic), msg):
            return
        if bytes(topic) != self.topic_ack.encode():
            self.errors["ack_foreign"] += 1
            return
        ack = parse_ack(msg)
        if ack is None:
            self.errors["ack_bad"] += 1
            return
        # The role checks the ack against the counters it has produced before trusting it.
        if self.acked is None or ack > self.acked:
            self.acked = ack

    def _on_ev(self, topic, msg):
        """Keep a charger's replies and price; True when the topic was one of them."""
        if topic == self.topic_ev_reply.encode():
            if not msg or len(msg) > EV_REPLY_BYTES_MAX:
                self.errors["ev_reply_bad"] += 1
            elif len(self.inbox) >= _EV_INBOX_MAX:
                self.errors["ev_inbox_full"] += 1  # the service repeats what matters
            else:
                self.inbox.append(bytes(msg))
            return True
        if topic == self.topic_price.encode():
            price = parse_price(msg)
            if price is None:
                self.errors["ev_reply_bad"] += 1
            else:
                self.price = price
            return True
        return False

    def close(self):
        if self.client is not None:
            try:
                self.client.publish(self.topic_state, b"offline", True, 0)
                self.client.disconnect()
            except OSError:
                pass
            self.client = None


def parse_ack(msg):
    """The counter in an ack message b'{"ack": n}', or None if the message is malformed."""
    if not msg or len(msg) > _ACK_BYTES_MAX:
        return None
    try:
        obj = json.loads(msg)
    except (ValueError, TypeError):
        return None
    if not isinstance(obj, dict):
        return None
    ack = obj.get("ack")
    if isinstance(ack, bool) or not isinstance(ack, int) or not 0 <= ack < 1 << 40:
        return None
    return ack


def parse_price(msg):
    """The reference price (µ/kWh) of a price message, or None if it is malformed."""
    if not msg or len(msg) > _PRICE_BYTES_MAX:
        return None
    try:
        obj = json.loads(msg)
    except (ValueError, TypeError):
        return None
    price = obj.get("price_micro_per_kwh") if isinstance(obj, dict) else None
    if isinstance(price, bool) or not isinstance(price, int) or not 0 <= price < 1 << 40:
        return None
    return price
