"""A Gode–Sunder experiment run on our own auction, to check the claim ECONOMICS §5 relies on.

Gode and Sunder (1993) showed that budget-constrained zero-intelligence traders (ZI-C) in a double
auction reach almost all of the available surplus, while unconstrained ones (ZI-U) lose a clear
part of it. We repeat the experiment with the community's engine as it is (`Exchange` over a
`MemoryPort`), not with a separate toy auction, so the result says something about our market:

* Each buyer holds units with redemption values, each seller units with costs (a stepped demand
  and supply schedule, `Schedule`). A unit is 1 kWh (1000 Wh); values and costs are µ/kWh.
* A trading period is a number of steps. In each step one trader who still has units is chosen
  uniformly at random; it cancels its open order, if any, and submits a fresh limit order for its
  next unit (buyers trade their most valuable unit first, sellers their cheapest): ZI-C draws a bid
  in [floor, value] or an ask in [cost, ceiling]; ZI-U draws from [floor, ceiling].
* Orders rest in the continuous double auction (price-time priority, trade at the resting price),
  instead of Gode–Sunder's rule of clearing the book after each trade; a trader replacing its order
  on every turn gives the same effect of stale quotes disappearing.
* Sellers hold their units as WATT (so every ask is covered) and buyers' caps equal their demand,
  so the community rules never bind and the only thing measured is the traders' behaviour.

Allocative efficiency = realised surplus / maximum surplus, where realised surplus sums
(value − cost) of the units that actually traded — which can be negative for ZI-U trades.
Given enough steps ZI-U traders trade every unit, extra-marginal ones included, so their
efficiency settles at (Σ values − Σ costs) / maximum surplus whatever the seed (79.8 % in
`stepped_market`); ZI-C traders cannot trade an extra-marginal pair at a loss and stay near 98 %.
"""
import random

from host_tools.exchange.agents import draw_ask_price, draw_bid_price
from host_tools.exchange.book import BUY, OPEN, SELL, Exchange, ExchangeConfig
from host_tools.exchange.port import MemoryPort

PPM = 1_000_000
UNIT_WH = 1000


class Schedule:
    """Redemption values per buyer and costs per seller, one list per trader, in µ/kWh."""

    def __init__(self, buyer_values, seller_costs, floor_micro_per_kwh, ceiling_micro_per_kwh):
        for traders in (buyer_values, seller_costs):
            if not traders or any(not units for units in traders):
                raise ValueError("every trader needs at least one unit")
            for units in traders:
                for price in units:
                    if type(price) is not int or not (
                            floor_micro_per_kwh <= price <= ceiling_micro_per_kwh):
                        raise ValueError(f"unit price {price!r} outside [floor, ceiling]")
        # Buyers trade their most valuable unit first, sellers their cheapest.
        self.buyer_values = [sorted(units, reverse=True) for units in buyer_values]
        self.seller_costs = [sorted(units) for units in seller_costs]
        self.floor_micro_per_kwh = floor_micro_per_kwh
        self.ceiling_micro_per_kwh = ceiling_micro_per_kwh

    def max_surplus(self):
        """The competitive-equilibrium surplus: pair the highest values with the lowest costs."""
        values = sorted((v for units in self.buyer_values for v in units), reverse=True)
        costs = sorted(c for units in self.seller_costs for c in units)
        return sum(v - c for v, c in zip(values, costs, strict=False) if v > c)


def stepped_market():
    """Six buyers and six sellers with three units each, on a 1..200 price scale times 1000.

    Equilibrium: 13 units trade, at a price between 100 000 and 110 000 µ/kWh; the extra-marginal
    units close to the equilibrium are where ZI-U traders lose surplus.
    """
    scale = 1000
    buyers = [[190, 170, 150], [180, 160, 120], [175, 140, 100], [165, 130, 85],
              [155, 110, 70], [145, 95, 60]]
    sellers = [[30, 50, 80], [40, 60, 95], [45, 70, 110], [55, 85, 125], [65, 100, 140],
               [75, 115, 150]]
    return Schedule([[v * scale for v in u] for u in buyers],
                    [[c * scale for c in u] for u in sellers], 1 * scale, 200 * scale)


class PeriodResult:
    __slots__ = ("surplus_micro", "max_surplus_micro", "trade_count", "efficiency_ppm")

    def __init__(self, surplus_micro, max_surplus_micro, trade_count):
        self.surplus_micro = surplus_micro
        self.max_surplus_micro = max_surplus_micro
        self.trade_count = trade_count
        self.efficiency_ppm = surplus_micro * PPM // max_surplus_micro


def run_period(schedule, seed, constrained=True, steps=3000):
    """One trading period with fresh traders; returns the realised and maximum surplus.

    Surplus is in micro-units per kWh traded; since every unit is 1 kWh, that is micro-units.
    """
    if type(steps) is not int or steps <= 0:
        raise ValueError("steps must be a positive integer")
    rng = random.Random(seed)
    port = MemoryPort()
    traders = []
    for index, values in enumerate(schedule.buyer_values):
        member = f"b{index}"
        port.add_member(member, cap_wh=len(values) * UNIT_WH)
        traders.append([member, True, values, 0, None])
    for index, costs in enumerate(schedule.seller_costs):
        member = f"s{index}"
        total_wh = len(costs) * UNIT_WH
        port.add_member(member, cap_wh=total_wh, balance_wh=total_wh)
        traders.append([member, False, costs, 0, None])
    by_member = {t[0]: t for t in traders}
    exchange = Exchange(port, ExchangeConfig(
        price_micro_per_kwh_max=schedule.ceiling_micro_per_kwh,
        initial_price_micro_per_kwh=schedule.floor_micro_per_kwh))
    floor = schedule.floor_micro_per_kwh
    ceiling = schedule.ceiling_micro_per_kwh
    surplus = 0
    trade_count = 0
    for _ in range(steps):
        active = [t for t in traders if t[3] < len(t[2])]
        if not active:
            break
        trader = active[rng.randrange(len(active))]
        member, is_buyer, prices, next_unit, order_id = trader
        if order_id is not None and exchange.order(order_id).status == OPEN:
            exchange.cancel(member, order_id)
        unit_price = prices[next_unit]
        if is_buyer:
            limit = unit_price if constrained else ceiling
            price = draw_bid_price(rng, floor, limit)
        else:
            limit = unit_price if constrained else floor
            price = draw_ask_price(rng, limit, ceiling)
        ack = exchange.submit(member, BUY if is_buyer else SELL, UNIT_WH, price, 0)
        trader[4] = ack.order_id
        for trade in ack.trades:
            buyer = by_member[trade.buyer]
            seller = by_member[trade.seller]
            # Every order is exactly one unit and cover and room are whole units, so each trade
            # is one whole unit: the buyer's next value against the seller's next cost.
            assert trade.qty_wh == UNIT_WH, "partial unit in a one-unit market"
            surplus += buyer[2][buyer[3]] - seller[2][seller[3]]
            buyer[3] += 1
            seller[3] += 1
            trade_count += 1
    return PeriodResult(surplus, schedule.max_surplus(), trade_count)


def efficiency_over_seeds(schedule, seeds, constrained=True, steps=3000):
    """Mean allocative efficiency (ppm, rounded down) and the per-seed results."""
    results = [run_period(schedule, seed, constrained, steps) for seed in seeds]
    mean_ppm = sum(r.efficiency_ppm for r in results) // len(results)
    return mean_ppm, results
