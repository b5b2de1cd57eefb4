"""The charger's MQTT additions on CPython: its topics, the bounded reply inbox, the price, and a
close streamed from flash that arrives byte for byte as the JSON the service parses."""
import json

import pytest

from energo import link as link_mod
from energo.evjournal import Journal
from energo.evservice import close_head
from energo.link import Link, Stream, parse_price

SETTINGS = {"community": "demo", "mqtt_host": "127.0.0.1", "mqtt_port": 1, "mqtt_user": None,
            "mqtt_password": None}
NONCE = "0123456789abcdef0123456789abcdef"


class _Clock:
    """MicroPython's ticks, frozen: these tests never reach the backoff."""

    @staticmethod
    def ticks_ms():
        return 0

    @staticmethod
    def ticks_add(a, b):
        return a + b

    @staticmethod
    def ticks_diff(a, b):
        return a - b


def _link():
    return Link("c-0123456789ab", SETTINGS, clock=_Clock, ev=True)


def test_topics():
    link = _link()
    assert link.topic_ev == "energo/v1/demo/c-0123456789ab/ev"
    assert link.topic_ev_reply == "energo/v1/demo/c-0123456789ab/ev/reply"
    assert link.topic_price == "energo/v1/demo/price"


def test_replies_are_kept_in_order_and_bounded():
    link = _link()
    topic = link.topic_ev_reply.encode()
    for n in range(6):
        link._on_message(topic, b'{"t":"grant","n":%d}' % n)
    assert link.errors["ev_inbox_full"] == 2
    assert [json.loads(link.take_ev())["n"] for _ in range(4)] == [0, 1, 2, 3]
    assert link.take_ev() is None
    link._on_message(topic, b"")
    link._on_message(topic, b"x" * (link_mod.EV_REPLY_BYTES_MAX + 1))
    assert link.errors["ev_reply_bad"] == 2 and link.take_ev() is None


def test_a_meter_link_ignores_ev_topics():
    link = Link("m-0123456789ab", SETTINGS, clock=_Clock)
    link._on_message(b"energo/v1/demo/m-0123456789ab/ev/reply", b'{"t":"grant"}')
    link._on_message(b"energo/v1/demo/price", b'{"price_micro_per_kwh":1}')
    assert link.take_ev() is None and link.price is None
    assert link.errors["ack_foreign"] == 2


@pytest.mark.parametrize("payload, price", [
    (b'{"interval_start_s":0,"price_micro_per_kwh":250000}', 250000),
    (b'{"price_micro_per_kwh":0}', 0),
    (b'{"price_micro_per_kwh":-1}', None),
    (b'{"price_micro_per_kwh":2.5}', None),
    (b'{"price_micro_per_kwh":true}', None),
    (b"[250000]", None),
    (b"not json", None),
    (b"", None),
    (b'{"price_micro_per_kwh":1,"pad":"' + b"x" * 600 + b'"}', None),
])
def test_parse_price(payload, price):
    assert parse_price(payload) == price


def test_a_bad_price_keeps_the_last_good_one():
    link = _link()
    link._on_message(b"energo/v1/demo/price", b'{"price_micro_per_kwh":250000}')
    link._on_message(b"energo/v1/demo/price", b'{"price_micro_per_kwh":"cheap"}')
    assert link.price == 250000 and link.errors["ev_reply_bad"] == 1


class _Sock:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += bytes(data)
        return len(data)


def test_a_close_streamed_from_the_journal_is_the_json_the_service_reads(tmp_path):
    journal = Journal(str(tmp_path / "ev"))
    journal.open()
    records = [b'OCMF|{"PG":"T%d","RD":[{"TX":"B"}],"X":"a\\\\b"}|{"SD":"00"}' % n
               + b"y" * (n * 300) for n in (1, 2, 3)]
    for n, record in enumerate(records, 1):
        journal.append_record(NONCE, n, record)
    state = {"session": NONCE, "offer": 'o"1|ab', "auth": "a|cd", "meter": None,
             "offline": True}
    path = journal.records_path(NONCE)
    parts = [close_head(state)]
    for n, entry in enumerate(journal.records(NONCE)):
        parts += [b',"' if n else b'"', (path, entry[1], entry[2]), b'"']
    parts.append(b"]}")
    stream = Stream(parts)
    sock = _Sock()
    timed = link_mod._TimedSocket.__new__(link_mod._TimedSocket)
    timed._sock = sock
    assert timed.write(stream) == len(stream)
    assert len(sock.data) == len(stream), "umqtt.simple announces len() as the length"
    got = json.loads(sock.data)
    assert got["records"] == [r.decode() for r in records]
    assert (got["t"], got["session"], got["offer"], got["offline"], got["meter"]) == (
        "close", NONCE, 'o"1|ab', True, None)
