"""Token incentives: the clean-energy award (ECONOMICS §7) and the trading-volume reward (§8).

Everything is integer arithmetic so an award can be recomputed by anyone from the ledger's data and
come out identical:

* Fractions (shares, factors, coefficients k1, k2, k3 and thresholds F1, F2) are fixed-point
  parts per million: 1_000_000 ppm = 1.0. A factor is computed exactly as a rational number and
  rounded once, down (towards −∞), so a member is never credited with a fraction they did not earn.
* α and β are tokens per 1.0 of factor; ⌊α × F⌋ is `alpha_tokens * factor_ppm // 1_000_000`,
  which with Python's floor division is the true floor also for negative F.
* Tokens are integer token units; energy is Wh; emissions are integer grams.

Choices the source documents leave open, made explicit here:

* f(E_shifted) is the shifted share of consumption, min(E_shifted, E_total) / E_total, so both
  demand terms are shares in [0, 1] and k1, k2 weigh them.
* E_shifted is measured against a baseline: in every grid-supplied interval, the part of the
  member's baseline consumption (e.g. their usual load for that time of day) that they did not use.
* A member's factor is F = F_demand + F_supply (F_supply only for members with an allowance) and
  the award is computed once from F, so the per-period cap N_max bounds the total.
* The award must be monotone in F (a cleaner member never earns less); with α, β ≥ 0 that holds
  exactly when F1 ≤ 0 ≤ F2, which the configuration enforces. A penalty therefore arises only from
  a negative factor, i.e. emissions above the allowance.
* The per-account cap bounds a member's token balance: an award is cut to the room below the cap.
  A penalty is paid from the token balance and cannot take it below zero; the unpaid part is
  reported so the community can decide what to do with it.
"""
from fractions import Fraction

PPM = 1_000_000


def _require_int(name, value, minimum=None):
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


# --------------------------------------------------------------------------- §7 clean energy


class IntervalUsage:
    """One interval of a member's consumption, as the ledger records it."""

    __slots__ = ("consumption_wh", "community_wh", "baseline_wh", "grid_supplied")

    def __init__(self, consumption_wh, community_wh, baseline_wh=0, grid_supplied=False):
        _require_int("consumption_wh", consumption_wh, 0)
        _require_int("community_wh", community_wh, 0)
        _require_int("baseline_wh", baseline_wh, 0)
        if type(grid_supplied) is not bool:
            raise ValueError("grid_supplied must be a boolean")
        if community_wh > consumption_wh:
            raise ValueError("community_wh cannot exceed consumption_wh")
        self.consumption_wh = consumption_wh
        self.community_wh = community_wh
        self.baseline_wh = baseline_wh
        self.grid_supplied = grid_supplied


class DemandEnergy:
    """A member's period totals for the demand-side factor."""

    __slots__ = ("total_wh", "clean_wh", "shifted_wh")

    def __init__(self, total_wh, clean_wh, shifted_wh):
        _require_int("total_wh", total_wh, 0)
        _require_int("clean_wh", clean_wh, 0)
        _require_int("shifted_wh", shifted_wh, 0)
        if clean_wh > total_wh:
            raise ValueError("clean_wh cannot exceed total_wh")
        self.total_wh = total_wh
        self.clean_wh = clean_wh
        self.shifted_wh = shifted_wh


def demand_energy(intervals):
    """Sum a period's intervals into E_total, E_clean and E_shifted (see the module notes)."""
    total_wh = clean_wh = shifted_wh = 0
    for usage in intervals:
        if not isinstance(usage, IntervalUsage):
            raise ValueError("demand_energy needs IntervalUsage rows")
        total_wh += usage.consumption_wh
        clean_wh += usage.community_wh
        if usage.grid_supplied and usage.baseline_wh > usage.consumption_wh:
            shifted_wh += usage.baseline_wh - usage.consumption_wh
    return DemandEnergy(total_wh, clean_wh, shifted_wh)


def demand_factor_ppm(energy, k1_ppm, k2_ppm):
    """F_demand = k1·E_clean/E_total + k2·min(E_shifted, E_total)/E_total, in ppm, rounded down.

    No consumption means no demand-side contribution (0), not a division by zero.
    """
    _require_int("k1_ppm", k1_ppm, 0)
    _require_int("k2_ppm", k2_ppm, 0)
    if energy.total_wh == 0:
        return 0
    shifted_wh = min(energy.shifted_wh, energy.total_wh)
    return (k1_ppm * energy.clean_wh + k2_ppm * shifted_wh) // energy.total_wh


def supply_factor_ppm(emissions_g, permit_g, k3_ppm):
    """F_supply = k3·(S_permit − S)/S_permit, in ppm, rounded towards −∞.

    Negative when emissions exceed the allowance, k3 when the generator emitted nothing.
    """
    _require_int("emissions_g", emissions_g, 0)
    _require_int("permit_g", permit_g, 1)
    _require_int("k3_ppm", k3_ppm, 0)
    return k3_ppm * (permit_g - emissions_g) // permit_g


class AwardConfig:
    """§7 parameters; defaults are a modest scheme, every value is configuration."""

    __slots__ = ("k1_ppm", "k2_ppm", "k3_ppm", "f1_ppm", "f2_ppm", "alpha_tokens",
                 "beta_tokens", "period_tokens_max", "account_tokens_max")

    def __init__(self, k1_ppm=700_000, k2_ppm=300_000, k3_ppm=1_000_000, f1_ppm=0,
                 f2_ppm=300_000, alpha_tokens=100, beta_tokens=100, period_tokens_max=100,
                 account_tokens_max=10_000):
        for name, value in (("k1_ppm", k1_ppm), ("k2_ppm", k2_ppm), ("k3_ppm", k3_ppm),
                            ("alpha_tokens", alpha_tokens), ("beta_tokens", beta_tokens),
                            ("account_tokens_max", account_tokens_max)):
            _require_int(name, value, 0)
        _require_int("period_tokens_max", period_tokens_max, 1)
        _require_int("f1_ppm", f1_ppm)
        _require_int("f2_ppm", f2_ppm)
        if not f1_ppm < f2_ppm:
            raise ValueError("thresholds need F1 < F2")
        if not f1_ppm <= 0 <= f2_ppm:
            raise ValueError("thresholds need F1 <= 0 <= F2, or the award would not be monotone")
        self.k1_ppm = k1_ppm
        self.k2_ppm = k2_ppm
        self.k3_ppm = k3_ppm
        self.f1_ppm = f1_ppm
        self.f2_ppm = f2_ppm
        self.alpha_tokens = alpha_tokens
        self.beta_tokens = beta_tokens
        self.period_tokens_max = period_tokens_max
        self.account_tokens_max = account_tokens_max


def award_tokens(factor_ppm, config):
    """The piecewise award N(F) of §7, before the per-account cap; within ±N_max."""
    _require_int("factor_ppm", factor_ppm)
    if factor_ppm < config.f1_ppm:
        return max(config.alpha_tokens * factor_ppm // PPM, -config.period_tokens_max)
    if factor_ppm < config.f2_ppm:
        return 0
    return min(config.beta_tokens * factor_ppm // PPM, config.period_tokens_max)


class MemberPeriod:
    """A member's period: demand totals, and emissions against an allowance if they have one."""

    __slots__ = ("demand", "emissions_g", "permit_g")

    def __init__(self, demand, emissions_g=None, permit_g=None):
        if not isinstance(demand, DemandEnergy):
            raise ValueError("demand must be a DemandEnergy")
        if (emissions_g is None) != (permit_g is None):
            raise ValueError("emissions_g and permit_g go together")
        self.demand = demand
        self.emissions_g = emissions_g
        self.permit_g = permit_g


class Award:
    __slots__ = ("member", "demand_ppm", "supply_ppm", "factor_ppm", "period_tokens",
                 "applied_tokens", "unpaid_penalty_tokens")

    def __init__(self, member, demand_ppm, supply_ppm, factor_ppm, period_tokens, applied_tokens,
                 unpaid_penalty_tokens):
        self.member = member
        self.demand_ppm = demand_ppm
        self.supply_ppm = supply_ppm
        self.factor_ppm = factor_ppm
        self.period_tokens = period_tokens
        self.applied_tokens = applied_tokens
        self.unpaid_penalty_tokens = unpaid_penalty_tokens

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


def apply_account_cap(balance_tokens, award, account_tokens_max):
    """(applied, unpaid penalty): an award cut to the room under the cap, a penalty to the
    balance."""
    _require_int("balance_tokens", balance_tokens, 0)
    _require_int("award", award)
    if award >= 0:
        return min(award, max(0, account_tokens_max - balance_tokens)), 0
    paid = min(-award, balance_tokens)
    return -paid, -award - paid


def award_member(member, period, balance_tokens, config):
    """One member's §7 award for a period."""
    if not isinstance(period, MemberPeriod):
        raise ValueError("period must be a MemberPeriod")
    demand_ppm = demand_factor_ppm(period.demand, config.k1_ppm, config.k2_ppm)
    supply_ppm = 0
    if period.permit_g is not None:
        supply_ppm = supply_factor_ppm(period.emissions_g, period.permit_g, config.k3_ppm)
    factor_ppm = demand_ppm + supply_ppm
    tokens = award_tokens(factor_ppm, config)
    applied, unpaid = apply_account_cap(balance_tokens, tokens, config.account_tokens_max)
    return Award(member, demand_ppm, supply_ppm, factor_ppm, tokens, applied, unpaid)


def award_period(periods, balances_tokens, config):
    """Every member's award for a period, in member order. Members without a balance start at 0."""
    awards = {}
    for member in sorted(periods):
        if type(member) is not str or not member:
            raise ValueError(f"invalid member id {member!r}")
        awards[member] = award_member(member, periods[member], balances_tokens.get(member, 0),
                                      config)
    return awards


def tokens_to_money_micro(tokens, rate_micro_per_token):
    """Exchange incentive tokens for money at the configured rate (both integers, exact)."""
    _require_int("tokens", tokens, 0)
    _require_int("rate_micro_per_token", rate_micro_per_token, 0)
    return tokens * rate_micro_per_token


# --------------------------------------------------------------------------- §8 trading volume


def volume_reward_tokens(volume_wh, average_wh, difficulty_wh, reward_tokens):
    """P_i of §8 for one member, rounded down; always within [0, P] and monotone in W_i.

    `average_wh` is the previous week's average volume A (0 in the first week, where only the
    middle band can pay), `difficulty_wh` the week's D (> 0).
    """
    _require_int("volume_wh", volume_wh, 0)
    _require_int("average_wh", average_wh, 0)
    _require_int("difficulty_wh", difficulty_wh, 1)
    _require_int("reward_tokens", reward_tokens, 0)
    w = volume_wh
    a = average_wh
    d = difficulty_wh
    p = reward_tokens
    if w == 0:
        return 0
    if 2 * a <= d:
        if w <= a:
            return int(Fraction(p, 2) * Fraction(w, a) // 1)
        if w <= d:
            return int(Fraction(p, 2) * (1 + Fraction(w - a, d - a)) // 1)
        return p
    if 2 * w <= d:
        return int(Fraction(p * w, a) // 1)
    return p


class WeekResult:
    __slots__ = ("rewards", "difficulty_wh", "reward_tokens", "average_wh", "traders", "halved")

    def __init__(self, rewards, difficulty_wh, reward_tokens, average_wh, traders, halved):
        self.rewards = rewards
        self.difficulty_wh = difficulty_wh
        self.reward_tokens = reward_tokens
        self.average_wh = average_wh
        self.traders = traders
        self.halved = halved


class TradingRewardPolicy:
    """The optional weekly trading-volume reward of §8, with its difficulty and halving.

    State before week N: D_N, P, A_(N−1) (previous week's average volume over members who traded)
    and the trader counts n_(N−1), n_(N−2). Closing week N pays P_i from A_(N−1) and D_N, then:
    if the week's average volume reached D_N the reward halves and D_(N+1) = that average;
    otherwise D_(N+1) = D_N × n_N / n_(N−1), rounded down, kept when a count is zero, never < 1.
    """

    def __init__(self, difficulty_wh=10_000, reward_tokens=64, enabled=True, members_max=100_000):
        _require_int("difficulty_wh", difficulty_wh, 1)
        _require_int("reward_tokens", reward_tokens, 0)
        if type(enabled) is not bool:
            raise ValueError("enabled must be a boolean")
        self.enabled = enabled
        self.difficulty_wh = difficulty_wh
        self.reward_tokens = reward_tokens
        self.average_wh = 0
        self.traders_previous = 0
        self.members_max = members_max

    def close_week(self, volumes_wh):
        """Pay the week's rewards and move the difficulty on. Validates all input first."""
        if len(volumes_wh) > self.members_max:
            raise ValueError(f"more than {self.members_max} members")
        for member, volume in volumes_wh.items():
            if type(member) is not str or not member:
                raise ValueError(f"invalid member id {member!r}")
            _require_int(f"volume of {member}", volume, 0)
        difficulty = self.difficulty_wh
        reward = self.reward_tokens
        rewards = {}
        if self.enabled:
            for member in sorted(volumes_wh):
                rewards[member] = volume_reward_tokens(volumes_wh[member], self.average_wh,
                                                       difficulty, reward)
        traded = [v for v in volumes_wh.values() if v > 0]
        traders = len(traded)
        average = sum(traded) // traders if traders else 0
        halved = traders > 0 and average >= difficulty
        if halved:
            self.reward_tokens = reward // 2
            self.difficulty_wh = max(1, average)
        elif traders and self.traders_previous:
            self.difficulty_wh = max(1, difficulty * traders // self.traders_previous)
        self.average_wh = average
        self.traders_previous = traders
        return WeekResult(rewards, difficulty, reward, average, traders, halved)
