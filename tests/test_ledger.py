"""The ledger API the exchange and HTTP API use, on SQLite and PostgreSQL:
members, atomic idempotent transfers, floors and caps, holds, schema and config."""
import threading

import pytest

from host_tools.settlement import MONEY, TSL, WATT, Ledger, Leg, SettlementConfig
from host_tools.settlement import ledger as ledger_module
from host_tools.settlement.errors import (
    CapExceeded,
    ConfigError,
    DatabaseUrlError,
    HoldError,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidTransfer,
    LedgerError,
    MemberExists,
    SchemaError,
    UnknownAccount,
)
from host_tools.settlement.store import Database
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger, snapshot

ledger_url, sqlite_url, key_path = support.ledger_url, support.sqlite_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures

A, B = "member:alice", "member:bob"


def _two_members(url, key_path):
    ledger = open_ledger(url, key_path)
    ledger.add_member("alice", at_s=T0_S)
    ledger.add_member("bob", storage_capacity_wh=4000, at_s=T0_S)
    # Give alice energy and money the way the rules do: export, then a feed-in sale.
    ledger.settle_interval(T0_S, {"alice": (0, 2500)})
    return ledger


@pytest.fixture
def ledger(ledger_url, key_path):
    ledger = _two_members(ledger_url, key_path)
    yield ledger
    ledger.close()


@pytest.fixture
def sqlite_ledger(sqlite_url, key_path):
    ledger = _two_members(sqlite_url, key_path)
    yield ledger
    ledger.close()


def test_genesis_mints_the_fixed_tsl_supply_once(ledger_url, key_path):
    with open_ledger(ledger_url, key_path) as ledger:
        assert ledger.balance("education_pool", TSL) == 1_000_000_000
        assert ledger.balance("mint", TSL) == -1_000_000_000
    with open_ledger(ledger_url, key_path) as again:  # reopening mints nothing
        assert again.balance("mint", TSL) == -1_000_000_000
        assert again.check().ok


def test_new_member_gets_the_grant_from_the_pool(ledger):
    assert ledger.balances(A) == {WATT: 2000, TSL: 5000, MONEY: 40_000}
    assert ledger.balance("education_pool", TSL) == 1_000_000_000 - 10_000
    assert ledger.cap_wh("alice") == 2000
    with pytest.raises(MemberExists):
        ledger.add_member("alice")
    with pytest.raises(InvalidTransfer):
        ledger.add_member("bad name")
    with pytest.raises(InvalidTransfer):
        ledger.add_member("carol", storage_capacity_wh=-1)
    members = {m["name"]: m for m in ledger.members()}
    assert members["bob"]["storage_capacity_wh"] == 4000
    assert members["alice"]["watt_wh"] == 2000
    assert ledger.storage_owners() == [("storage:bob", 4000)]


def test_grant_shrinks_when_the_pool_runs_low(ledger_url, key_path):
    config = SettlementConfig(tsl_supply=7000, tsl_new_member_grant=5000)
    with open_ledger(ledger_url, key_path, config=config) as ledger:
        assert ledger.add_member("a")["tsl_granted"] == 5000
        assert ledger.add_member("b")["tsl_granted"] == 2000
        assert ledger.add_member("c")["tsl_granted"] == 0
        assert ledger.balance("mint", TSL) == -7000
        assert ledger.check().ok


def test_transfer_is_atomic_and_idempotent(ledger):
    legs = [(A, B, WATT, 300), (B, A, MONEY, 0 + 1)]
    with pytest.raises(InsufficientBalance):  # bob has no money: the whole transfer is refused
        ledger.transfer("trade-1", legs, at_s=T0_S + 900)
    assert ledger.balance(A, WATT) == 2000 and ledger.transfer_info("trade-1") is None
    result = ledger.transfer("trade-1", [(A, B, WATT, 300)], at_s=T0_S + 900, kind="trade",
                             meta={"price_micro_per_kwh": 100_000})
    assert (result.replayed, result.entry_count, result.interval_start_s) == (False, 1, T0_S + 900)
    before = snapshot(ledger)
    again = ledger.transfer("trade-1", [(A, B, WATT, 300)], at_s=T0_S + 900, kind="trade")
    assert again.replayed and again.first_seq == result.first_seq
    assert snapshot(ledger) == before
    with pytest.raises(IdempotencyConflict):
        ledger.transfer("trade-1", [(A, B, WATT, 301)], kind="trade")
    assert snapshot(ledger) == before
    assert ledger.balance(B, WATT) == 300
    assert ledger.transfer_info("trade-1")["legs"] == [Leg(A, B, WATT, 300)]


def test_transfer_ids_are_unique_in_the_schema(ledger):
    """Idempotency rests on a UNIQUE constraint, not only on the lookup in the code."""
    ledger.transfer("t-unique", [(A, B, WATT, 1)])
    with pytest.raises(Exception) as caught:
        with ledger.db.transaction():
            ledger.db.execute("INSERT INTO transfers (transfer_id, kind, interval_start_s, first_seq, "
                              "leg_count, digest, meta) VALUES ('t-unique', 'x', 0, 0, 0, '', '{}')")
    assert "unique" in str(caught.value).lower() or "constraint" in str(caught.value).lower()
    assert ledger.check().ok


def test_booking_into_a_closed_interval_goes_to_the_open_one(ledger):
    result = ledger.transfer("late", [(A, B, WATT, 5)], at_s=T0_S + 10)
    assert result.interval_start_s == T0_S + 900  # T0 is closed


@pytest.mark.parametrize("legs, error", [
    ([], InvalidTransfer),
    ([(A, A, WATT, 1)], InvalidTransfer),
    ([(A, B, "EUR", 1)], InvalidTransfer),
    ([(A, B, WATT, 0)], InvalidTransfer),
    ([(A, B, WATT, -5)], InvalidTransfer),
    ([(A, B, WATT, 1.0)], InvalidTransfer),
    ([(A, B, WATT, True)], InvalidTransfer),
    ([(A, B, WATT)], InvalidTransfer),
    ([(A, "member:nobody", WATT, 1)], UnknownAccount),
    ([("mint", A, WATT, 1)], InvalidTransfer),
    ([(A, "burn", WATT, 1)], InvalidTransfer),
    ([(A, "fee_pool", WATT, 1)], InvalidTransfer),
    ([(A, B, WATT, 2001)], InsufficientBalance),
    ([(A, B, TSL, 5001)], InsufficientBalance),
    ([(B, A, MONEY, 1)], InsufficientBalance),
])
def test_bad_transfers_are_refused_and_change_nothing(sqlite_ledger, legs, error):
    ledger = sqlite_ledger
    before = snapshot(ledger)
    with pytest.raises(error):
        ledger.transfer("bad-1", legs)
    assert snapshot(ledger) == before


@pytest.mark.parametrize("kwargs", [
    {"transfer_id": "#iv:1:mint:alice"}, {"transfer_id": ""}, {"transfer_id": "x" * 161},
    {"transfer_id": 7}, {"kind": "mint"}, {"kind": "Bad Kind"}, {"meta": [1]},
    {"meta": {"blob": "x" * 5000}}, {"meta": {"f": {1, 2}}}, {"at_s": -1}, {"at_s": 1.5},
])
def test_bad_transfer_arguments_are_refused(sqlite_ledger, kwargs):
    ledger = sqlite_ledger
    args = {"transfer_id": "ok-id", "legs": [(A, B, WATT, 1)]}
    args.update(kwargs)
    before = snapshot(ledger)
    with pytest.raises(InvalidTransfer):
        ledger.transfer(args.pop("transfer_id"), args.pop("legs"), **args)
    assert snapshot(ledger) == before


def test_cap_refuses_a_buy_above_it(ledger):
    ledger.settle_interval(T0_S + 900, {"bob": (0, 2000)})
    assert ledger.balance(A, WATT) == ledger.balance(B, WATT) == 2000
    before = snapshot(ledger)
    with pytest.raises(CapExceeded):
        ledger.transfer("too-much", [(B, A, WATT, 1)])
    assert snapshot(ledger) == before
    # Limits apply to the transfer's end state: a swap within the caps is fine.
    ledger.transfer("swap", [(A, B, WATT, 100), (B, A, WATT, 100)])
    # Giving TSL away lowers the cap; the excess is then sold at the next close.
    ledger.transfer("tsl-away", [(A, B, TSL, 4000)])
    assert ledger.cap_wh("alice") == 1000
    result = ledger.settle_interval(T0_S + 1800, {})
    assert result["sold_wh"] == 1000
    # 0.4 + 0.4 + 0.2 Wh of carried storage fee make the first whole Wh.
    assert result["storage_fee_wh"] == 1 and ledger.balance(A, WATT) == 999


def test_credit_limit_allows_buying_on_credit(ledger_url, key_path):
    config = SettlementConfig(member_credit_limit_micro=1_000)
    with open_ledger(ledger_url, key_path, config=config) as ledger:
        ledger.add_member("alice")
        ledger.add_member("bob")
        ledger.transfer("credit", [(B, A, MONEY, 1_000)])
        assert ledger.balance(B, MONEY) == -1_000
        with pytest.raises(InsufficientBalance):
            ledger.transfer("more", [(B, A, MONEY, 1)])


def test_holds_capture_and_release(ledger):
    before_money = ledger.balance(A, MONEY)
    ledger.hold("sess-1", "alice", 30_000)
    assert ledger.balance(A, MONEY) == before_money - 30_000
    assert ledger.hold("sess-1", "alice", 30_000)["replayed"]
    with pytest.raises(HoldError):
        ledger.hold("sess-1", "alice", 30_001)
    with pytest.raises(InsufficientBalance):
        ledger.hold("sess-2", "alice", before_money)  # only 10 000 µ left
    with pytest.raises(HoldError):
        ledger.capture("sess-1", [(B, 30_001)])
    result = ledger.capture("sess-1", [(B, 20_000), ("network_operator", 1_500)])
    assert (result["captured_micro"], result["released_micro"]) == (21_500, 8_500)
    assert ledger.balance(A, MONEY) == before_money - 21_500
    assert ledger.balance(B, MONEY) == 20_000
    before = snapshot(ledger)
    assert ledger.capture("sess-1", [(B, 20_000), ("network_operator", 1_500)])["replayed"]
    assert snapshot(ledger) == before
    with pytest.raises(HoldError):
        ledger.capture("sess-1", [(B, 1)])
    with pytest.raises(HoldError):
        ledger.release("sess-1")
    ledger.hold("sess-3", "alice", 5_000)
    assert ledger.release("sess-3")["released_micro"] == 5_000
    assert ledger.release("sess-3")["replayed"]
    with pytest.raises(InvalidTransfer):  # hold accounts are not open to transfers
        ledger.transfer("steal", [("hold:sess-3", B, MONEY, 1)])
    with pytest.raises(HoldError):
        ledger.capture("nope", [])
    assert ledger.check().ok, ledger.check().problems


def test_config_is_fixed_at_creation(ledger_url, key_path):
    with open_ledger(ledger_url, key_path, config=SettlementConfig(storage_fee_ppm=300)):
        pass
    with open_ledger(ledger_url, key_path) as ledger:  # no config: the stored one is used
        assert ledger.config.storage_fee_ppm == 300
    with pytest.raises(ConfigError):
        open_ledger(ledger_url, key_path, config=SettlementConfig(storage_fee_ppm=200))


def test_schema_version_is_checked(ledger_url, key_path):
    open_ledger(ledger_url, key_path).close()
    db = Database(ledger_url)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(SchemaError, match="version 99"):
        open_ledger(ledger_url, key_path)


def test_bad_urls_and_missing_ledgers(tmp_path):
    for url in ("", "mysql://x/y", "sqlite://relative", "ledger.db"):
        with pytest.raises(DatabaseUrlError):
            Ledger.open(url)
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_concurrent_writers_book_each_transfer_once(ledger_url, key_path, ledger):
    """Two connections replaying the same ids: every id is booked exactly once."""
    errors = []

    def worker():
        try:
            with open_ledger(ledger_url, key_path) as mine:
                for i in range(15):
                    mine.transfer(f"race-{i}", [(A, B, WATT, 10)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert ledger.balance(B, WATT) == 150
    assert ledger.check().ok


def test_restricted_kinds_and_names_are_public_knowledge():
    # The exchange relies on these names; keep them stable.
    assert ledger_module.member_account("x") == "member:x"
    assert ledger_module.storage_account("x") == "storage:x"
    assert set(ledger_module.SYSTEM_ACCOUNTS) == {
        "grid", "education_pool", "network_operator", "mint", "burn", "fee_pool"}
