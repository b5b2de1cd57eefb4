"""`energo bench ingest`: its devices' MQTT client, and small end-to-end runs."""
import argparse
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host_tools.bench import ingest as bench
from host_tools.errors import UsageError


def _packet(kind, body):
    return bytes([kind << 4]) + bench._remaining_length(len(body)) + body


@given(bodies=st.lists(st.tuples(st.integers(1, 14), st.binary(max_size=300)), max_size=8),
       big=st.integers(0, 3 * 128**3))
def test_packets_split_back_as_written(bodies, big):
    bodies = bodies + [(3, b"x" * (big % 20_000))]
    stream = b"".join(_packet(kind, body) for kind, body in bodies)
    at, got = 0, []
    while at < len(stream):
        kind, body, at = bench._split_packet(stream, at, 1 << 20)
        got.append((kind, body))
    assert got == bodies
    for cut in range(len(stream) - 1, max(0, len(stream) - 40), -1):
        # a cut stream never yields a packet that was not written whole
        at, whole = 0, 0
        while (found := bench._split_packet(stream[:cut], at, 1 << 20)) is not None:
            at, whole = found[2], whole + 1
        assert whole < len(bodies)


@pytest.mark.parametrize("stream, message", [
    (b"\x30\xff\xff\xff\xff\x01", "bad packet length"),
    (b"\x30\x80\x80\x80\x01", "packet of"),
])
def test_broken_streams_are_refused(stream, message):
    with pytest.raises(UsageError, match=message):
        bench._split_packet(stream, 0, 1 << 20)


def _args(**overrides):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


@pytest.mark.parametrize("bad", [{"workers": 0}, {"devices": 0}, {"records": 5},
                                 {"grace_s": -1}])
def test_arguments_are_checked(bad):
    with pytest.raises(UsageError):
        bench.run(_args(**{"devices": 5, "records": 100, **bad}))


@pytest.mark.mosquitto
@pytest.mark.parametrize("workers, publisher", [(2, "lean"), (1, "paho")])
def test_a_small_run_settles_every_record_once(workers, publisher):
    result = bench.run(_args(devices=5, records=100, workers=workers, publisher=publisher))
    assert result["records"] == 95 and result["workers"] == workers
    assert result["publisher"] == publisher
    assert result["readings_per_s"] > 0 and result["verify_only_per_s"] > 0
    assert result["service_cpu_s"] > 0  # the workers were counted (reaped by the service)
    assert len(result["worker_status"]) == workers
    settled = sum(int(re.match(r"settled (\d+) duplicates (\d+)", line).group(1))
                  for line in result["worker_status"])
    assert settled == 100  # baselines included: each (device, counter) once, across workers
    assert all("rejected {}" in line for line in result["worker_status"])
