"""Shared helpers for the settlement tests (no tests here).

`ledger_url` runs a test on SQLite and on PostgreSQL (the latter through the
`postgres_url` fixture of conftest: skipped locally when unreachable, required
in CI). `wipe_database` (tests.support.services) empties a database between
hypothesis examples, because a fresh PostgreSQL database per example would be
far too slow.
"""
import pytest

from host_tools.settlement import Ledger, SettlementConfig
from tests.support.services import wipe_database

T0_S = 1_795_000_500 - 1_795_000_500 % 900  # an aligned interval start in late 2026
CLOCK_MS = T0_S * 1000

@pytest.fixture(scope="session")
def shared_postgres_url():
    """One scratch PostgreSQL database for all settlement tests, wiped before each use.

    Creating a database costs far more than dropping a dozen tables, and these tests
    run on a shared two-core machine. Same skip/fail rule as conftest's `postgres_url`.
    """
    from tests.conftest import need
    from tests.support import services

    admin_url = services.postgres_admin_url()
    need(services.postgres_reachable(admin_url), f"PostgreSQL not reachable at {admin_url}")
    with services.scratch_database(admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = request.getfixturevalue("shared_postgres_url")
    wipe_database(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    """For input-validation tests: the refusal happens before SQL, one backend is enough."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def key_path(tmp_path):
    return str(tmp_path / "service-key.pem")


def open_ledger(url, key_path, config=None, clock_ms=CLOCK_MS):
    return Ledger.open(url, config=config, key_path=key_path, clock_ms=lambda: clock_ms)


def snapshot(ledger):
    """Everything a replay must leave untouched: balances, chain head, counts."""
    db = ledger.db
    return (
        sorted(map(tuple, db.all("SELECT account, asset, amount FROM balances"))),
        tuple(db.one("SELECT seq, hash FROM chain_head WHERE id = 1")),
        db.one("SELECT COUNT(*) FROM transfers")[0],
        db.one("SELECT COUNT(*) FROM checkpoints")[0],
    )


def config(**overrides):
    return SettlementConfig(**overrides)
