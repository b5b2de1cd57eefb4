"""The community's arithmetic: exact splits, rounding, the storage fee carry, caps, config."""
import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.settlement import SettlementConfig, rules
from host_tools.settlement.errors import ConfigError

weights_strategy = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30)


@given(total=st.integers(min_value=0, max_value=10**15), weights=weights_strategy)
@settings(max_examples=300)
def test_split_is_exact_and_fair(total, weights):
    if sum(weights) == 0:
        if total:
            with pytest.raises(ValueError):
                rules.split_largest_remainder(total, weights)
        else:
            assert rules.split_largest_remainder(0, weights) == [0] * len(weights)
        return
    parts = rules.split_largest_remainder(total, weights)
    assert sum(parts) == total
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(total * weight, sum(weights))
        assert abs(part - exact) < 1
        assert part >= 0
        if weight == 0:
            assert part == 0
    # Deterministic: the same input always gives the same split.
    assert rules.split_largest_remainder(total, list(weights)) == parts


@given(total=st.integers(min_value=0, max_value=10**6),
       weights=st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=10))
def test_split_gives_leftover_units_to_the_largest_remainders(total, weights):
    parts = rules.split_largest_remainder(total, weights)
    weight_sum = sum(weights)
    bumped = [i for i, (p, w) in enumerate(zip(parts, weights, strict=True)) if p * weight_sum > total * w]
    kept = [i for i in range(len(weights)) if i not in bumped]
    remainder = [total * w % weight_sum for w in weights]
    for i in bumped:
        for j in kept:
            # Nobody left out had a strictly larger remainder, and ties went to the lower index.
            assert remainder[j] < remainder[i] or (remainder[j] == remainder[i] and j > i)


def test_split_known_values():
    assert rules.split_largest_remainder(145, [80, 10, 10]) == [116, 15, 14]
    assert rules.split_largest_remainder(116, [6000, 3000]) == [77, 39]
    assert rules.split_largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert rules.split_largest_remainder(2, [0, 5, 5]) == [0, 1, 1]


@pytest.mark.parametrize("bad", [(-1, [1]), (1.5, [1]), (True, [1]), (3, [1, -2]), (3, ["1"])])
def test_split_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        rules.split_largest_remainder(*bad)


def test_money_rounds_half_up():
    assert rules.money_for_energy_micro(700, 300_000) == 210_000
    assert rules.money_for_energy_micro(1, 1_500) == 2  # 1.5 µ → 2
    assert rules.money_for_energy_micro(1, 1_499) == 1
    assert rules.money_for_energy_micro(0, 300_000) == 0
    with pytest.raises(ValueError):
        rules.money_for_energy_micro(-1, 300_000)
    with pytest.raises(ValueError):
        rules.money_for_energy_micro(1.0, 300_000)


@given(balances=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=200),
       ppm=st.integers(min_value=0, max_value=1_000_000))
def test_storage_fee_carry_loses_nothing_over_time(balances, ppm):
    """Σ whole-Wh fees + the final carry equals the exact fee over all boundaries."""
    carry = 0
    paid = 0
    for balance in balances:
        fee, carry = rules.storage_fee_wh(balance, ppm, carry)
        assert 0 <= fee <= balance
        assert 0 <= carry < 1_000_000
        paid += fee
    assert paid * 1_000_000 + carry == sum(balance * ppm for balance in balances)


def test_storage_fee_default_rate_is_charged_at_small_balances():
    carry, paid = 0, 0
    for _ in range(5):
        fee, carry = rules.storage_fee_wh(2000, 200, carry)
        paid += fee
    assert (paid, carry) == (2, 0)  # 5 × 0.4 Wh


def test_cap_is_min_of_bmax_and_quota():
    config = SettlementConfig()
    assert config.bmax_effective_wh == 2000  # 300 $ / (0.75 × 200 $/kWh) = 2 kWh
    assert rules.cap_wh(5000, config) == 2000
    assert rules.cap_wh(1500, config) == 1500
    assert rules.cap_wh(0, config) == 0
    assert rules.cap_wh(10, SettlementConfig(bmax_wh=5, quota_wh_per_tsl=3)) == 5
    derived = SettlementConfig(storage_cost_per_member_micro=450_000_000,
                               storage_price_micro_per_kwh=150_000_000)
    assert derived.bmax_effective_wh == 4000


def test_interval_start():
    assert rules.interval_start_of(1_795_000_799, 900) == 1_795_000_500
    assert rules.interval_start_of(900, 900) == 900


@pytest.mark.parametrize("overrides", [
    {"interval_s": 0}, {"interval_s": 7}, {"interval_s": 1000}, {"storage_fee_ppm": 1_000_001},
    {"fee_split_owners_percent": 70}, {"retail_tariff_micro_per_kwh": -1},
    {"retail_tariff_micro_per_kwh": 1.5}, {"tsl_supply": True}, {"bmax_wh": "2000"},
    {"storage_price_micro_per_kwh": 0},
])
def test_config_refuses_bad_values(overrides):
    with pytest.raises(ConfigError):
        SettlementConfig(**overrides)


def test_config_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"storage_fee_ppm": 500, "bmax_wh": 3000}))
    loaded = SettlementConfig.load(path)
    assert (loaded.storage_fee_ppm, loaded.bmax_effective_wh) == (500, 3000)
    assert SettlementConfig.from_dict(loaded.to_dict()) == loaded
    path.write_text(json.dumps({"storage_fee": 500}))
    with pytest.raises(ConfigError, match="unknown settlement config keys: storage_fee"):
        SettlementConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SettlementConfig.load(path)
    with pytest.raises(ConfigError, match="cannot read"):
        SettlementConfig.load(tmp_path / "missing.json")
