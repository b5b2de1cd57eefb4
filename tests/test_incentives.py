"""Token incentives: the clean-energy award (ECONOMICS §7) and the trading-volume reward (§8),
with hand-computed cases and properties."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.exchange.incentives import (
    AwardConfig,
    DemandEnergy,
    IntervalUsage,
    MemberPeriod,
    TradingRewardPolicy,
    apply_account_cap,
    award_member,
    award_period,
    award_tokens,
    demand_energy,
    demand_factor_ppm,
    supply_factor_ppm,
    tokens_to_money_micro,
    volume_reward_tokens,
)

# ------------------------------------------------------------------ §7 factors, by hand


def test_demand_energy_sums_clean_share_and_shift_out_of_grid_intervals():
    rows = [
        IntervalUsage(1_000, 800, baseline_wh=1_000, grid_supplied=False),
        IntervalUsage(200, 0, baseline_wh=900, grid_supplied=True),  # shifted 700
        IntervalUsage(500, 500, baseline_wh=300, grid_supplied=True),  # used more: no shift
    ]
    energy = demand_energy(rows)
    assert (energy.total_wh, energy.clean_wh, energy.shifted_wh) == (1_700, 1_300, 700)
    # k1·1300/1700 + k2·700/1700 with k1 = 0.7, k2 = 0.3: (0.7·1300 + 0.3·700)/1700 = 0.658823…
    assert demand_factor_ppm(energy, 700_000, 300_000) == 658_823


def test_demand_factor_without_consumption_is_zero_and_shift_is_capped_at_total():
    assert demand_factor_ppm(DemandEnergy(0, 0, 0), 700_000, 300_000) == 0
    assert demand_factor_ppm(DemandEnergy(100, 100, 10_000), 700_000, 300_000) == 1_000_000


def test_supply_factor_by_hand_including_a_penalty_rounded_down():
    assert supply_factor_ppm(0, 1_000, 1_000_000) == 1_000_000  # clean generation
    assert supply_factor_ppm(250, 1_000, 800_000) == 600_000
    assert supply_factor_ppm(1_000, 1_000, 800_000) == 0
    # 1·(3 − 4)/3 = −0.3333…: rounded towards −∞.
    assert supply_factor_ppm(4, 3, 1_000_000) == -333_334


def test_award_piecewise_by_hand():
    config = AwardConfig(f1_ppm=-100_000, f2_ppm=300_000, alpha_tokens=50, beta_tokens=80,
                         period_tokens_max=60)
    assert award_tokens(-2_000_000, config) == -60  # ⌊50·(−2)⌋ = −100, capped at −N_max
    assert award_tokens(-333_334, config) == -17  # ⌊−16.6667⌋
    assert award_tokens(-100_000, config) == 0  # F1 itself pays nothing
    assert award_tokens(299_999, config) == 0
    assert award_tokens(300_000, config) == 24
    assert award_tokens(500_000, config) == 40
    assert award_tokens(1_000_000, config) == 60  # ⌊80⌋ capped at N_max


def test_account_cap_and_penalty_paid_from_tokens():
    assert apply_account_cap(95, 10, 100) == (5, 0)
    assert apply_account_cap(120, 10, 100) == (0, 0)
    assert apply_account_cap(7, -10, 100) == (-7, 3)
    assert apply_account_cap(70, -10, 100) == (-10, 0)


def test_award_period_for_a_small_community():
    config = AwardConfig(k1_ppm=1_000_000, k2_ppm=0, k3_ppm=1_000_000, f1_ppm=0,
                         f2_ppm=500_000, alpha_tokens=100, beta_tokens=100,
                         period_tokens_max=100, account_tokens_max=1_000)
    periods = {
        "clean": MemberPeriod(DemandEnergy(1_000, 900, 0)),  # F = 0.9 → 90
        "grey": MemberPeriod(DemandEnergy(1_000, 100, 0)),  # F = 0.1 → 0
        "gen": MemberPeriod(DemandEnergy(0, 0, 0), emissions_g=1_500, permit_g=1_000),  # −0.5
        "full": MemberPeriod(DemandEnergy(1_000, 1_000, 0)),  # 100, but only 30 of room
    }
    awards = award_period(periods, {"gen": 20, "full": 970}, config)
    assert {m: a.applied_tokens for m, a in awards.items()} == {
        "clean": 90, "full": 30, "gen": -20, "grey": 0}
    assert awards["gen"].factor_ppm == -500_000 and awards["gen"].period_tokens == -50
    assert awards["gen"].unpaid_penalty_tokens == 30
    assert list(awards) == sorted(periods)
    assert tokens_to_money_micro(90, 10_000) == 900_000


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        IntervalUsage(100, 200)
    with pytest.raises(ValueError):
        IntervalUsage(-1, 0)
    with pytest.raises(ValueError):
        IntervalUsage(1.5, 0)
    with pytest.raises(ValueError):
        supply_factor_ppm(10, 0, 1_000_000)
    with pytest.raises(ValueError):
        AwardConfig(f1_ppm=300_000, f2_ppm=300_000)
    with pytest.raises(ValueError):
        AwardConfig(f1_ppm=100_000, f2_ppm=300_000)  # not monotone: refused
    with pytest.raises(ValueError):
        AwardConfig(period_tokens_max=0)
    with pytest.raises(ValueError):
        MemberPeriod(DemandEnergy(1, 1, 0), emissions_g=1)
    with pytest.raises(ValueError):
        award_period({"": MemberPeriod(DemandEnergy(1, 1, 0))}, {}, AwardConfig())
    with pytest.raises(ValueError):
        demand_energy([(1, 2)])
    with pytest.raises(ValueError):
        tokens_to_money_micro(-1, 5)


# ------------------------------------------------------------------ §7 properties

configs = st.builds(
    lambda f1, f2, alpha, beta, n_max: AwardConfig(
        f1_ppm=-f1, f2_ppm=f2, alpha_tokens=alpha, beta_tokens=beta, period_tokens_max=n_max),
    st.integers(0, 2_000_000), st.integers(1, 2_000_000), st.integers(0, 10_000),
    st.integers(0, 10_000), st.integers(1, 5_000))
factors = st.integers(-5_000_000, 5_000_000)


@settings(max_examples=300, deadline=None)
@given(configs, factors, factors)
def test_award_is_bounded_and_monotone(config, f, g):
    low, high = sorted((f, g))
    a = award_tokens(low, config)
    b = award_tokens(high, config)
    assert -config.period_tokens_max <= a <= config.period_tokens_max
    assert a <= b
    if config.f1_ppm <= low < config.f2_ppm:
        assert a == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
       st.integers(0, 2_000_000), st.integers(0, 2_000_000))
def test_demand_factor_is_bounded_by_the_coefficients(total, clean, shifted, k1, k2):
    clean = min(clean, total)
    factor = demand_factor_ppm(DemandEnergy(total, clean, shifted), k1, k2)
    assert 0 <= factor <= k1 + k2


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 20_000), st.integers(-10_000, 10_000), st.integers(0, 20_000))
def test_account_cap_is_respected(balance, award, cap):
    applied, unpaid = apply_account_cap(balance, award, cap)
    assert balance + applied >= 0
    if award >= 0:
        assert 0 <= applied <= award
        assert balance + applied <= max(cap, balance)
        assert unpaid == 0
    else:
        assert award <= applied <= 0 and applied - unpaid == award


# ------------------------------------------------------------------ §8 trading-volume reward


def test_volume_reward_bands_by_hand():
    # A ≤ D/2 (A = 100, D = 400, P = 64)
    assert volume_reward_tokens(0, 100, 400, 64) == 0
    assert volume_reward_tokens(50, 100, 400, 64) == 16  # P/2 · 50/100
    assert volume_reward_tokens(100, 100, 400, 64) == 32
    assert volume_reward_tokens(250, 100, 400, 64) == 48  # P/2 · (1 + 150/300)
    assert volume_reward_tokens(400, 100, 400, 64) == 64
    assert volume_reward_tokens(10_000, 100, 400, 64) == 64
    # A > D/2 (A = 300, D = 400)
    assert volume_reward_tokens(150, 300, 400, 64) == 32  # P · 150/300
    assert volume_reward_tokens(201, 300, 400, 64) == 64
    # first week, no previous average
    assert volume_reward_tokens(200, 0, 400, 64) == 48


def test_difficulty_follows_participation_and_the_reward_halves():
    policy = TradingRewardPolicy(difficulty_wh=1_000, reward_tokens=64)
    week1 = policy.close_week({"a": 300, "b": 500, "c": 0})
    assert week1.traders == 2 and week1.average_wh == 400 and not week1.halved
    assert policy.difficulty_wh == 1_000  # no earlier count: unchanged
    week2 = policy.close_week({"a": 400, "b": 200, "c": 300, "d": 100})
    assert week2.difficulty_wh == 1_000
    assert week2.rewards == {"a": 32, "b": 16, "c": 24, "d": 8}  # A = 400 ≤ D/2
    assert policy.difficulty_wh == 2_000  # 1000 · 4 / 2
    week3 = policy.close_week({"a": 2_500, "b": 2_000})
    assert week3.halved and policy.reward_tokens == 32
    assert policy.difficulty_wh == 2_250  # restarts at that week's average
    assert week3.rewards == {"a": 64, "b": 64}


def test_disabled_policy_pays_nothing_and_bad_volumes_are_refused():
    policy = TradingRewardPolicy(enabled=False)
    assert policy.close_week({"a": 10}).rewards == {}
    policy = TradingRewardPolicy()
    state = (policy.difficulty_wh, policy.reward_tokens, policy.average_wh)
    for bad in ({"a": -1}, {"a": 1.5}, {"": 3}):
        with pytest.raises(ValueError):
            policy.close_week(bad)
        assert (policy.difficulty_wh, policy.reward_tokens, policy.average_wh) == state
    with pytest.raises(ValueError):
        TradingRewardPolicy(difficulty_wh=0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7),
       st.integers(1, 10**7), st.integers(0, 10**6))
def test_volume_reward_bounded_and_monotone(w1, w2, average, difficulty, reward):
    low, high = sorted((w1, w2))
    a = volume_reward_tokens(low, average, difficulty, reward)
    b = volume_reward_tokens(high, average, difficulty, reward)
    assert 0 <= a <= b <= reward


def test_award_member_combines_demand_and_supply():
    config = AwardConfig(k1_ppm=500_000, k2_ppm=0, k3_ppm=500_000, f2_ppm=600_000,
                         beta_tokens=100, period_tokens_max=100)
    period = MemberPeriod(DemandEnergy(1_000, 1_000, 0), emissions_g=0, permit_g=10)
    award = award_member("x", period, 0, config)
    assert (award.demand_ppm, award.supply_ppm, award.factor_ppm) == (500_000, 500_000, 1_000_000)
    assert award.applied_tokens == 100
