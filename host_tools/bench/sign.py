"""ECDSA P-256 signing and verification: our firmware code on MicroPython and CPython vs OpenSSL."""
import json
import os
import statistics
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from energo import p256
from host_tools import micropython
from host_tools.errors import UsageError

NAME = "sign"
_SCRIPT = os.path.join(os.path.dirname(micropython.__file__), "sign_timing.py")


def add_arguments(parser):
    parser.add_argument("--runs", type=int, default=50,
                        help="timed runs per measurement (at least 20; default 50)")


def _median_ms(fn, runs):
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 4)


def run(args):
    runs = args.runs
    if not 20 <= runs <= 10000:
        raise UsageError("--runs must be between 20 and 10000")
    reason = micropython.unavailable_reason()
    if reason:
        raise UsageError(f"cannot run MicroPython: {reason}")
    result = micropython.run(_SCRIPT, [runs])
    if result.returncode != 0:
        raise UsageError(f"MicroPython run failed: {result.stderr.strip()[-300:]}")
    mpy = json.loads(result.stdout.strip().splitlines()[-1])

    priv = p256.generate_private_key()
    p256.public_key(priv)  # build the comb table before timing
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    cpython_sign_ms = _median_ms(lambda i: p256.sign(priv, b"m%d" % i), runs)
    openssl_sign_ms = _median_ms(lambda i: key.sign(b"m%d" % i, ec.ECDSA(hashes.SHA256())), runs)
    openssl_verify_ms = _median_ms(
        lambda i: key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA256())), runs)
    return {
        "micropython_sign_ms": mpy["sign_us"] / 1000,
        "micropython_verify_ms": mpy["verify_us"] / 1000,
        "micropython_runs": mpy["runs"],
        "cpython_sign_ms": cpython_sign_ms,
        "openssl_sign_ms": openssl_sign_ms,
        "openssl_verify_ms": openssl_verify_ms,
    }
