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
# Topics (ARCHITECTURE 4.2): energo/v1/<community>/<device>/{rec,ack,hello,state}.
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


class Link:
    """Connect, publish records QoS1, receive cumulative acks; never blocks past timeout_s."""

    def __init__(self, device_id, settings, timeout_s=5, clock=time, rand=None):
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
        self.client = None
        self.acked = None  # highest counter the service settled with no gap
        self.failures = 0
        self.next_try_ms = clock.ticks_ms()
        self.errors = {"connect": 0, "publish": 0, "ack_bad": 0, "ack_foreign": 0}
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
