"""Shared pytest fixtures: paths, the conformance data, real brokers and databases.

Services a user meets (Mosquitto, PostgreSQL) are real. When one is missing a
test skips — except with CI=true, where a missing service is a failure.
"""
import os
import pathlib

import pytest

from tests.support import services

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition, reason):
    """Skip when `condition` is false — or fail with CI=true, where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def conformance_dir():
    need(CONFORMANCE.is_dir(), f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


@pytest.fixture
def mosquitto(tmp_path):
    """A private Mosquitto on a free loopback port; yields (host, port)."""
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    with services.Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database (dropped afterwards); yields its URL."""
    url = services.postgres_admin_url()
    need(services.postgres_reachable(url), f"PostgreSQL not reachable at {url}")
    with services.scratch_database(url) as db_url:
        yield db_url
