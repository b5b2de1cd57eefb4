"""Random communities: after every step the invariants hold, refused steps and
replays change nothing, and rounding neither creates nor loses a Wh or a µ."""
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from host_tools.settlement import MONEY, TSL, WATT, SettlementConfig
from host_tools.settlement.errors import LedgerError
from tests import test_settlement_support as support
from tests.support.services import wipe_database
from tests.test_settlement_support import T0_S, open_ledger, snapshot

key_path, shared_postgres_url = support.key_path, support.shared_postgres_url  # fixtures

NAMES = ["ann", "ben", "cat", "dan"]
ASSETS = [WATT, TSL, MONEY]

energy = st.integers(min_value=0, max_value=4000)
step = st.one_of(
    st.tuples(st.just("interval"), st.lists(st.tuples(energy, energy), min_size=4, max_size=4)),
    st.tuples(st.just("transfer"), st.integers(0, 3), st.integers(0, 2), st.sampled_from(ASSETS),
              st.integers(min_value=1, max_value=1500)),
    st.tuples(st.just("correction"), st.integers(0, 3), energy, energy),
    st.tuples(st.just("hold"), st.integers(0, 3), st.integers(min_value=1, max_value=60_000),
              st.integers(min_value=0, max_value=80_000)),
)
community = st.fixed_dictionaries({
    "members": st.integers(min_value=2, max_value=4),
    "capacities_wh": st.lists(st.integers(0, 9000), min_size=4, max_size=4),
    "config": st.builds(
        SettlementConfig,
        storage_fee_ppm=st.sampled_from([0, 200, 7_777, 100_000, 1_000_000]),
        retail_tariff_micro_per_kwh=st.integers(0, 400_000),
        feed_in_tariff_micro_per_kwh=st.integers(0, 200_000),
        bmax_wh=st.sampled_from([None, 0, 1_500, 10_000]),
        tsl_new_member_grant=st.sampled_from([0, 700, 5_000]),
        member_credit_limit_micro=st.sampled_from([0, 50_000]),
        fee_split_owners_percent=st.just(70), fee_split_education_percent=st.just(17),
        fee_split_operator_percent=st.just(13)),
    "steps": st.lists(step, min_size=4, max_size=12),
})


def _sum(ledger, asset, accounts):
    return sum(ledger.balance(account, asset) for account in accounts)


def run_scenario(url, key_path, scenario):
    wipe_database(url)
    ledger = open_ledger(url, key_path, config=scenario["config"])
    try:
        names = NAMES[:scenario["members"]]
        for name, capacity_wh in zip(names, scenario["capacities_wh"], strict=False):
            ledger.add_member(name, storage_capacity_wh=capacity_wh, at_s=T0_S)
        interval_s = T0_S
        for index, action in enumerate(scenario["steps"]):
            before = snapshot(ledger)
            kind = action[0]
            try:
                if kind == "interval":
                    _settle(ledger, interval_s, names, action[1])
                    interval_s += 900
                elif kind == "transfer":
                    _, i, j, asset, amount = action
                    payer, payee = names[i % len(names)], names[(i + 1 + j) % len(names)]
                    if payer == payee:
                        continue
                    legs = [(f"member:{payer}", f"member:{payee}", asset, amount)]
                    ledger.transfer(f"t{index}", legs)
                    replay_before = snapshot(ledger)
                    assert ledger.transfer(f"t{index}", legs).replayed
                    assert snapshot(ledger) == replay_before
                elif kind == "correction":
                    _, i, import_wh, export_wh = action
                    ledger.book_correction(f"c{index}", interval_s - 900, names[i % len(names)],
                                           import_wh, export_wh)
                else:
                    _, i, amount, capture = action
                    ledger.hold(f"h{index}", names[i % len(names)], amount)
                    if capture <= amount:
                        ledger.capture(f"h{index}", [("network_operator", capture)] if capture else [])
                    else:
                        ledger.release(f"h{index}")
                event(f"{kind} booked")
            except LedgerError as exc:
                event(f"{kind} refused: {type(exc).__name__}")
                assert snapshot(ledger) == before  # refused: nothing written
            report = ledger.check()
            assert report.ok, (action, report.problems)
        for asset in ASSETS:  # double entry: every asset sums to zero over all accounts
            assert _sum(ledger, asset, [row[0] for row in ledger.db.all("SELECT name FROM accounts")]) == 0
        assert ledger.verify_checkpoints().ok
    finally:
        ledger.close()


def _settle(ledger, interval_s, names, energies):
    metered = {name: tuple(energies[k]) for k, name in enumerate(names)}
    accounts = [row[0] for row in ledger.db.all("SELECT name FROM accounts WHERE name <> 'mint' "
                                                 "AND name <> 'burn'")]
    held_before = _sum(ledger, WATT, accounts)
    grid_before = ledger.balance("grid", MONEY)
    result = ledger.settle_interval(interval_s, metered)
    # Wh: what accounts hold changed by exactly minted − burned − sold; nothing else.
    assert _sum(ledger, WATT, accounts) - held_before == (
        result["minted_wh"] - result["burned_wh"] - result["sold_wh"])
    # µ: the grid received the bills and paid the feed-in, to the µ.
    assert ledger.balance("grid", MONEY) - grid_before == (
        result["grid_bill_micro"] - result["feed_in_micro"])
    assert result["storage_fee_wh"] == (
        result["fee_owners_wh"] + result["fee_education_wh"] + result["fee_operator_wh"])
    assert result["shortfall_wh"] + result["burned_wh"] == sum(e[0] for e in metered.values())
    after = snapshot(ledger)
    replay = ledger.settle_interval(interval_s, metered)
    assert replay["replayed"] and snapshot(ledger) == after
    assert {**replay, "replayed": False} == result


@given(scenario=community)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_communities_on_sqlite(tmp_path, key_path, scenario):
    run_scenario(f"sqlite:///{tmp_path / 'prop.db'}", key_path, scenario)


@pytest.mark.postgres
@given(scenario=community)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_communities_on_postgresql(shared_postgres_url, key_path, scenario):
    run_scenario(shared_postgres_url, key_path, scenario)


@pytest.mark.slow
@given(scenario=community)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_communities_soak(tmp_path, key_path, scenario):
    run_scenario(f"sqlite:///{tmp_path / 'soak.db'}", key_path, scenario)
