"""The community's arithmetic (ECONOMICS.md §1–§3) as pure integer functions.

Kept free of storage so each rule is tested on its own and the ledger only
decides *when* to apply them. No float ever appears: every division states how
it rounds, and every split hands out its total exactly.
"""


def _require_int(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def split_largest_remainder(total, weights):
    """Split `total` into parts proportional to `weights`, summing to `total` exactly.

    Each part is the floor of its exact share plus at most one: the units left
    over go to the largest fractional remainders, ties to the lower index (so
    callers order weights deterministically, e.g. by account name). A zero
    weight never receives anything.
    """
    _require_int("total", total)
    weights = list(weights)
    for weight in weights:
        _require_int("weight", weight)
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total:
            raise ValueError("cannot split a positive total over weights that are all zero")
        return [0] * len(weights)
    parts = [total * weight // weight_sum for weight in weights]
    remainders = [total * weight % weight_sum for weight in weights]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for index in order[:left]:
        parts[index] += 1
    return parts


def money_for_energy_micro(energy_wh, price_micro_per_kwh):
    """Price of `energy_wh` at `price_micro_per_kwh`, rounded half up to whole µ.

    The rounded amount is booked on both sides of one transfer, so rounding
    moves no µ into or out of existence; it only decides the bill's last µ.
    """
    _require_int("energy_wh", energy_wh)
    _require_int("price_micro_per_kwh", price_micro_per_kwh)
    return (energy_wh * price_micro_per_kwh + 500) // 1000


def storage_fee_wh(balance_wh, fee_ppm, carry_micro_wh):
    """The storage fee for one boundary, with the sub-Wh fraction carried forward.

    At the default 200 ppm a 2 kWh balance owes 0.4 Wh per interval: rounding
    each boundary down would never charge it, rounding up would overcharge 2.5×.
    So the exact fee accrues in millionths of a Wh; whole Wh are deducted and
    the fraction (always < 1 Wh) carries to the member's next boundary.
    Returns (fee_wh, new_carry_micro_wh).
    """
    _require_int("balance_wh", balance_wh)
    _require_int("fee_ppm", fee_ppm)
    _require_int("carry_micro_wh", carry_micro_wh)
    if carry_micro_wh >= 1_000_000:
        raise ValueError(f"carry_micro_wh must be below one Wh, got {carry_micro_wh}")
    if fee_ppm > 1_000_000:
        raise ValueError(f"fee_ppm must be at most 1000000, got {fee_ppm}")
    accrued = balance_wh * fee_ppm + carry_micro_wh
    # accrued < (balance_wh + 1) × 10⁶, so the fee never exceeds the balance.
    return accrued // 1_000_000, accrued % 1_000_000


def cap_wh(tsl_held, config):
    """A member's effective WATT cap: min(Bmax, TSL held × quota)."""
    _require_int("tsl_held", tsl_held)
    return min(config.bmax_effective_wh, tsl_held * config.quota_wh_per_tsl)


def interval_start_of(time_s, interval_s):
    """The start of the interval containing `time_s` (intervals align to the epoch)."""
    _require_int("time_s", time_s)
    return time_s - time_s % interval_s
