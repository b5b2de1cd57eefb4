"""`energo bench handshake`: a short run (3 sessions) through the real broker, service and
charger firmware prints one JSON object with the plug-to-contactor figures."""
import json
import subprocess
import sys

import pytest

from tests.conftest import need
from tests.support import services

pytestmark = pytest.mark.mosquitto

KEYS = {"plug_to_contactor_ms_p50", "plug_to_contactor_ms_p99", "plug_to_contactor_ms_max",
        "crypto_ms_p50", "crypto_share", "vehicle_crypto_ms_p50", "charger_crypto_ms_p50",
        "service_crypto_ms_p50", "baseline_crypto_ms", "sessions", "sessions_failed",
        "target_p99_ms", "target_met", "speed", "firmware", "settled_by_service",
        "plug_to_offer_ms_p50", "offer_to_grant_ms_p50", "grant_to_contactor_ms_p50"}


def test_handshake_bench_three_sessions():
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    done = subprocess.run([sys.executable, "-m", "host_tools.cli", "bench", "handshake",
                           "--json", "--sessions", "3", "--speed", "1"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == KEYS
    assert result["sessions"] == 3 and result["sessions_failed"] == 0
    p50, p99 = result["plug_to_contactor_ms_p50"], result["plug_to_contactor_ms_p99"]
    # the contactor may close only after the offer, auth and grant crossed the link twice
    assert 0 < p50 <= p99 <= result["plug_to_contactor_ms_max"]
    parts = [result[k] for k in ("plug_to_offer_ms_p50", "offer_to_grant_ms_p50",
                                 "grant_to_contactor_ms_p50")]
    assert all(part > 0 for part in parts) and sum(parts) <= 3 * p99
    assert 0 < result["crypto_ms_p50"] < p99
    assert 0 < result["crypto_share"] < 1
    assert result["vehicle_crypto_ms_p50"] > 0 and result["charger_crypto_ms_p50"] > 0
    assert result["service_crypto_ms_p50"] > 0 and result["baseline_crypto_ms"] > 0


def test_handshake_bench_refuses_bad_arguments():
    done = subprocess.run([sys.executable, "-m", "host_tools.cli", "bench", "handshake",
                           "--sessions", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--sessions 3..1000" in done.stderr


def test_crypto_timer_times_every_slice_of_a_steps_generator():
    import types

    from energo import p256
    from host_tools.bench.handshake import _CryptoTimer

    module = types.SimpleNamespace(sign_steps=p256.sign_steps)
    timer = _CryptoTimer()
    timer.wrap_steps(module, "sign_steps", "charger")
    digest = bytes(range(32))
    steps = module.sign_steps(bytes([7] * 32), digest)
    assert p256.finish(steps) == p256.sign_digest(bytes([7] * 32), digest)
    # one event per slice, the last one included, all on the charger's side
    yields = sum(1 for _ in p256.sign_steps(bytes([7] * 32), digest))
    assert len(timer.events) == yields + 1
    assert {side for side, _, _ in timer.events} == {"charger"}
    assert timer.within("charger", 0, float("inf")) > 0
    timer.restore()
    assert module.sign_steps is p256.sign_steps

