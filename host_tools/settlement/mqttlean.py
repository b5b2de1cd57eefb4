"""paho's MQTT client with incoming PUBLISH packets handed over as plain tuples.

Why: at the settlement service every meter record is one PUBLISH, and paho builds
two objects per message (an `MQTTMessage` and, inside it, an `MQTTMessageInfo` with
its own `threading.Condition`), logs it, and matches it against topic callbacks. In
the ingest worker that cost about as much CPU as verifying the record's signature,
on the same interpreter lock. `LeanClient` keeps everything else of paho (connect,
reconnect with back-off, keepalive, subscriptions, QoS1 publishing and its queue,
manual PUBACK) and replaces only the step from a received PUBLISH packet to the
application: `deliver(topic, payload, mid, qos)`. It also reads the socket in large
chunks: paho asks it for the command byte, the length bytes and the rest of every
packet separately, three system calls (each dropping and retaking the interpreter
lock) per message. And a PUBACK for one of its own publishes (the acks to devices)
is read as the packet id it is, not through paho's MQTT 5 property decoder.

The overrides reach into paho's packet state (`_in_packet`, `_handle_publish`,
`_handle_pubackcomp`, `_sock_recv`, `_sock`), which is private API; they are used
only with the paho release they were written against
(`PAHO_VERSION`) and only for MQTT 3.1.1 at QoS 0 or 1. Anywhere else the client
behaves exactly as paho's and `deliver` is reached through `on_message`, so an
upgrade of paho costs speed, never correctness.
"""
import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PAHO_VERSION = "2.2.0"
RECV_BYTES_MAX = 65536  # one read; a record is under 5 KB, so ~100 messages at most
_QOS_MASK = 0x06
# What a 3.1.1 PUBACK means in paho's MQTT 5 terms (success, no properties); never mutated.
_PUBACK_REASON = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


class LeanClient(mqtt.Client):
    """A paho client for one consumer of PUBLISH packets: `deliver(topic, payload, mid, qos)`.

    `deliver` runs on paho's network thread, as `on_message` would. Topic callbacks
    (`message_callback_add`) are refused: every message goes to `deliver`.
    """

    def __init__(self, *args, deliver, **kwargs):
        super().__init__(*args, **kwargs)
        if not callable(deliver):
            raise TypeError("deliver must be callable")
        self._deliver = deliver
        self.lean = paho.mqtt.__version__ == PAHO_VERSION and self._protocol != mqtt.MQTTv5
        self.on_message = self._deliver_message  # the general path, used when not lean
        self._rx = b""  # bytes read from the socket that paho has not asked for yet
        self._rx_at = 0
        self._rx_sock = None  # the connection they came from (a reconnect drops them)
        self._rx_refill = True

    def _deliver_message(self, client, userdata, message):
        self._deliver(message.topic, message.payload, message.mid, message.qos)

    def loop_read(self, max_packets=1):
        """paho's read step, then every packet already in our buffer.

        paho waits in select() on the socket before reading; bytes held in our buffer
        do not make the socket readable, so they are handled now. While draining, the
        socket is not read again: the drain ends with the buffer, and a packet cut at
        its end is completed when select() sees the rest.
        """
        rc = super().loop_read(max_packets)
        if not self.lean:
            return rc
        self._rx_refill = False
        try:
            while (rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None
                   and self._rx_sock is self._sock and self._rx_at < len(self._rx)):
                rc = super().loop_read(max_packets)
        finally:
            self._rx_refill = True
        return rc

    def _sock_recv(self, bufsize):
        if not self.lean:
            return super()._sock_recv(bufsize)
        if self._rx_sock is not self._sock:
            self._rx, self._rx_at, self._rx_sock = b"", 0, self._sock
        at = self._rx_at
        if at >= len(self._rx):
            if not self._rx_refill:
                raise BlockingIOError  # paho's "nothing to read now"
            data = super()._sock_recv(RECV_BYTES_MAX)
            if len(data) <= bufsize:  # all asked for (or b"": the broker closed)
                return data
            self._rx, at = data, 0
        end = at + bufsize
        self._rx_at = end
        return self._rx[at:end]

    def _handle_pubackcomp(self, cmd):
        """A PUBACK for one of our QoS 1 publishes (the acks to devices): packet id only.

        paho decodes MQTT 5 reason and property objects for every PUBACK, even on 3.1.1,
        where a PUBACK is nothing but the packet id; the shared success values stand in.
        """
        packet = self._in_packet["packet"]
        if not self.lean or cmd != "PUBACK":
            return super()._handle_pubackcomp(cmd)
        if len(packet) != 2:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_REASON, _PUBACK_PROPERTIES)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def message_callback_add(self, sub, callback):
        raise NotImplementedError("LeanClient hands every message to its deliver function")

    def _handle_publish(self):
        """PUBLISH (MQTT 3.1.1): 2-byte topic length, topic, packet id if QoS > 0, payload."""
        command = self._in_packet["command"]
        qos = (command & _QOS_MASK) >> 1
        if not self.lean or qos > 1:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        size = len(packet)
        if size < 2:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        start = topic_end + 2 if qos else topic_end
        if topic_end == 2 or start > size:  # MQTT 3.1.1: a topic is never empty
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        mid = (packet[topic_end] << 8) | packet[topic_end + 1] if qos else 0
        # Brokers refuse topics that are not UTF-8; a replacement character can only make
        # the ingest refuse the topic, never route it somewhere else.
        topic = bytes(packet[2:topic_end]).decode("utf-8", "replace")
        self._deliver(topic, bytes(packet[start:]), mid, qos)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
