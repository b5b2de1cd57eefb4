"""The embedded MQTT broker: amqtt with Energo's per-device credentials and ACL.

Why embedded: a community (or a test) can run the whole system without
installing Mosquitto.  The access rules are the ones in `host_tools.broker_auth`,
the same data the generated Mosquitto files are rendered from, so a device
meets the same broker behaviour either way: it logs in as its device id with
the password derived from the community's broker secret, and may publish only
under its own id.

amqtt 0.12.1 needs three things added, all in `EnergoBroker`:
- credentials are checked on the CONNECT packet *before* amqtt looks up an
  existing session of that client id: amqtt copies the will, username and
  password of a reconnecting client onto the live session before its auth
  plugins run, so a refused client could otherwise rewrite another's session;
- the will topic is checked against the ACL at CONNECT (amqtt publishes wills
  without asking the topic plugins, which would let a device publish under
  another id by dying);
- MQTT shared subscriptions (`$share/<group>/<filter>`): each message goes to
  one member of the group, so several settlement workers split the uplink.

Devices come from `devices_fn() -> iterable of (device_id, role)` (the device
registry in production).  It is re-read when an unknown username connects, at
most once per `reload_interval_ms`, so new enrollments work without a restart.
"""
import asyncio
import dataclasses
import logging
import signal
import threading
import time
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.utils import gen_client_id

from host_tools import broker_auth
from host_tools.broker_auth import READ, SETTLEMENT_USER, WRITE, BrokerAuthError

log = logging.getLogger("energo.broker")

DEFAULT_PORT = 1883
CONNECTIONS_MAX = 10_000
# Same as max_packet_size in the generated mosquitto.conf; an OCMF record is < 2 KiB.
PACKET_SIZE_MAX = 65_536
DEVICES_MAX = 1_000_000
RELOAD_INTERVAL_MS = 1_000
_STOP_TIMEOUT_S = 10.0
_SHARED_FILTERS_MAX = 10_000


class DeviceAccess:
    """Who may connect to the broker of one community, and what each may touch.

    Holds the community's rules, the broker secret and the set of enrolled
    device ids.  `devices_fn` is blocking (a database read); the broker calls
    it off the event loop.
    """

    def __init__(self, community, secret, devices_fn, reload_interval_ms=RELOAD_INTERVAL_MS,
                 clock_ms=None):
        self.community = broker_auth.validate_community(community)
        broker_auth.derive_password(secret, SETTLEMENT_USER)  # validates the secret's size
        self.secret = bytes(secret)
        self.grants = broker_auth.rules(community)
        self.devices_fn = devices_fn
        self.reload_interval_ms = reload_interval_ms
        self.clock_ms = clock_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self.device_ids = frozenset()
        self.skipped_count = 0
        self._loaded_at_ms = None
        self._reload_lock = None

    def load(self):
        """Read the device list now; entries without broker access are skipped and counted."""
        device_ids, skipped = set(), 0
        for entry in self.devices_fn():
            try:
                device_id, role = entry
                broker_auth.validate_device(device_id, role)
            except (TypeError, ValueError):
                skipped += 1  # vehicles, or a malformed row: never credentials
                continue
            device_ids.add(device_id)
            if len(device_ids) > DEVICES_MAX:
                raise BrokerAuthError(f"more than {DEVICES_MAX} devices enrolled", "too_many")
        self.device_ids = frozenset(device_ids)
        self.skipped_count = skipped
        self._loaded_at_ms = self.clock_ms()
        return len(self.device_ids)

    async def _refresh(self):
        """Re-read the registry for an unknown username, rate-limited so strangers can't flood it."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            now_ms = self.clock_ms()
            if self._loaded_at_ms is not None and now_ms - self._loaded_at_ms < self.reload_interval_ms:
                return
            try:
                await asyncio.to_thread(self.load)
            except Exception as exc:  # noqa: BLE001 - a registry outage must not stop the broker
                self._loaded_at_ms = self.clock_ms()
                log.warning("device registry not readable, keeping %d known devices: %s",
                            len(self.device_ids), exc)

    async def is_known(self, username):
        if username == SETTLEMENT_USER:
            return True
        if not broker_auth.is_device_id(username):
            return False
        if username not in self.device_ids:
            await self._refresh()
        return username in self.device_ids

    async def authorize_connect(self, username, password, client_id, will_topic=None):
        """None when the CONNECT may proceed, else the reason it is refused (for the log)."""
        if not username:
            return "anonymous"
        # The password first: only a holder of a derived password (someone the service
        # enrolled) can make the broker read the registry.
        if not broker_auth.check_password(self.secret, username, password):
            return f"wrong password for {username!r}"
        if not await self.is_known(username):
            return f"unknown user {username!r}"
        if not client_id_allowed(username, client_id):
            return f"client id {client_id!r} not allowed for {username!r}"
        if will_topic is not None and not self.permits(username, will_topic, WRITE):
            return f"will topic {will_topic!r} not allowed for {username!r}"
        return None

    def permits(self, username, topic, access):
        return broker_auth.permits(self.grants, username, topic, access)


def client_id_allowed(username, client_id):
    """Client ids are partitioned by user, so no client can take over another's session.

    A device uses its id (or `<id>-<suffix>`) as client id, as the firmware
    does; the settlement user may use any id that is not shaped like a device's.
    """
    if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
        return False
    if username == SETTLEMENT_USER:
        return not broker_auth.is_device_id(client_id[:14])
    return client_id == username or client_id.startswith(username + "-")


def registry_devices(db_url):
    """A `devices_fn` over the device registry in the ledger database at `db_url`.

    Each call opens the database afresh, so it may run on any thread (the
    broker reads it off its event loop) and always sees committed enrollments.
    """

    def devices():
        from host_tools.settlement import Ledger
        from host_tools.settlement.registry import Registry

        ledger = Ledger.open(db_url, create=False)
        try:
            return [(device["device_id"], device["role"]) for device in Registry(ledger).list()]
        finally:
            ledger.close()

    return devices


# --- amqtt plugins ----------------------------------------------------------------------------

class EnergoAuthPlugin(BaseAuthPlugin):
    """amqtt auth plugin: device id + derived password, or the settlement user."""

    @dataclasses.dataclass
    class Config:
        access: Any = None

    async def authenticate(self, *, session):
        access = self.config.access
        will_topic = session.will_topic if session.will_flag else None
        reason = await access.authorize_connect(session.username, session.password,
                                                session.client_id, will_topic)
        if reason is not None:
            log.info("refused connection from %s: %s", session.remote_address, reason)
        return reason is None


class EnergoTopicPlugin(BaseTopicPlugin):
    """amqtt topic plugin: the community's ACL for publish, subscribe and delivery."""

    @dataclasses.dataclass
    class Config:
        access: Any = None

    async def topic_filtering(self, *, session=None, topic=None, action=None):
        if session is None or topic is None:
            return False
        allowed = self.config.access.permits(
            session.username, topic, WRITE if action == Action.PUBLISH else READ)
        if not allowed and action != Action.RECEIVE:
            log.info("refused %s of %r by %r", action, topic, session.username)
        return allowed


# --- the broker -------------------------------------------------------------------------------

class PacketTooLarge(ConnectionError):
    """A client announced a packet above PACKET_SIZE_MAX; its connection is dropped."""


class _LimitedReader(StreamReaderAdapter):
    """amqtt reads a packet's body in one `read(remaining_length)`; refuse huge ones up front,
    before buffering up to the 256 MiB MQTT allows."""

    async def read(self, n=-1):
        if n < 0 or n > PACKET_SIZE_MAX:
            self.feed_eof()
            raise PacketTooLarge(f"packet of {n} bytes refused (limit {PACKET_SIZE_MAX})")
        return await super().read(n)


class EnergoBroker(Broker):
    """amqtt's broker with the pre-session credential check and shared subscriptions."""

    def __init__(self, access, host="127.0.0.1", port=DEFAULT_PORT,
                 connections_max=CONNECTIONS_MAX):
        self.access = access
        plugin_config = {"access": access}
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}",
                                      "max_connections": connections_max}},
            "plugins": {f"{__name__}.EnergoAuthPlugin": plugin_config,
                        f"{__name__}.EnergoTopicPlugin": plugin_config},
        }
        super().__init__(config, plugin_namespace=f"amqtt.energo.{id(self)}")
        self._share_next = {}

    async def stream_connected(self, reader, writer, listener_name):
        await self._client_connected(listener_name, _LimitedReader(reader),
                                     StreamWriterAdapter(writer))

    def bound_port(self):
        """The TCP port actually listened on (useful with port 0)."""
        return self._servers["default"].instance.sockets[0].getsockname()[1]

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        # Parse the CONNECT and check it before any existing session is touched (see module doc).
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager)
        except PacketTooLarge as exc:
            await writer.close()
            raise MQTTError(str(exc)) from None
        will_topic = incoming.will_topic if incoming.will_flag else None
        reason = await self.access.authorize_connect(
            incoming.username, incoming.password, incoming.client_id, will_topic)
        if reason is not None:
            log.info("refused connection from %s:%s: %s", remote_address, remote_port, reason)
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError(f"not authorized: {reason}")
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
            session = incoming
        elif incoming.client_id in self._sessions:
            # Same client id means same user (client ids are partitioned by user), so the
            # reconnecting client may resume its stored session with its new settings.
            session, _ = self._sessions[incoming.client_id]
            for name in ("will_flag", "will_retain", "will_message", "will_topic", "will_qos",
                         "keep_alive", "username", "password"):
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            incoming.parent = 0
            session = incoming
        delay_s = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay_s, int):
            session.keep_alive += delay_s
        return handler, session

    def _targets(self, topic):
        """(session, qos) pairs a message on `topic` goes to: every plain subscriber, plus
        one member per shared-subscription group, taken in turn among the connected ones."""
        targets, groups = [], {}
        for topic_filter, subscriptions in self._subscriptions.items():
            if topic_filter.startswith("$share/"):
                # A shared subscription is its group *and* filter: "$share/g/a" and
                # "$share/g/b" each get their own copy of a message matching both.
                parts = topic_filter.split("/", 2)
                if len(parts) == 3 and subscriptions and self._matches(topic, parts[2]):
                    groups[topic_filter] = subscriptions
            elif self._matches(topic, topic_filter):
                targets.extend(subscriptions)
        if len(self._share_next) > _SHARED_FILTERS_MAX:
            self._share_next.clear()  # forget turns of long-gone groups; only fairness is lost
        for shared_filter, members in groups.items():
            connected = [m for m in members if m[0].transitions.state == "connected"]
            pool = connected or members
            turn = self._share_next.get(shared_filter, 0)
            self._share_next[shared_filter] = turn + 1
            targets.append(pool[turn % len(pool)])
        return targets

    async def _run_broadcast(self, running_tasks):
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for session, subscription_qos in self._targets(topic):
            qos = broadcast.get("qos", subscription_qos)
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            connected = session.transitions.state == "connected"
            if not connected:
                # A persistent session keeps QoS 1/2 messages until its client is back.
                if not session.clean_session and qos in (1, 2) and not session.is_anonymous:
                    await self._retain_broadcast_message(broadcast, qos, session)
                continue
            handler = self._get_handler(session)
            if handler:
                running_tasks.append(asyncio.ensure_future(
                    handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)))


async def serve(access, host, port, stop_event, on_ready=None):
    """Run the broker until `stop_event` is set; `on_ready(port)` once it listens."""
    broker = EnergoBroker(access, host, port)
    await broker.start()
    try:
        if on_ready is not None:
            on_ready(broker.bound_port())
        await stop_event.wait()
    finally:
        await asyncio.wait_for(broker.shutdown(), _STOP_TIMEOUT_S)


def run_until_signalled(access, host, port, on_ready=None):
    """Serve until SIGINT or SIGTERM, then shut down cleanly (for `energo broker`)."""

    async def main():
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop_event.set)
        try:
            await serve(access, host, port, stop_event, on_ready)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    asyncio.run(main())


class EmbeddedBroker:
    """The embedded broker on its own thread, for tests and in-process tools.

    ``with EmbeddedBroker(access) as broker:`` listens on a free loopback
    port; `.host`, `.port` and `.url` match the Mosquitto test fixture's.
    """

    def __init__(self, access, host="127.0.0.1", port=0, start_timeout_s=10.0):
        self.access = access
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._loop = None
        self._stop_event = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    def _run(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            await serve(self.access, self.host, self.port, self._stop_event, self._started)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        finally:
            self._ready.set()

    def _started(self, port):
        self.port = port
        self._ready.set()

    def __enter__(self):
        self.access.load()
        self._thread = threading.Thread(target=self._run, name="energo-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s) or self._error is not None:
            self.__exit__(None, None, None)
            raise RuntimeError(f"embedded broker did not start: {self._error!r}")
        return self

    def __exit__(self, *exc):
        if self._loop is not None and self._stop_event is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S + 5)
