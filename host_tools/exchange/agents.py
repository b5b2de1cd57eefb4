"""Zero-intelligence trading agents for members who only set target prices (ECONOMICS §5).

A member who opts in sets a target buy price and a target sell price and, optionally, balance
thresholds (parts per million of their cap; defaults 80 % and 20 %). Once per interval the agent
looks at the balance:

* above the upper threshold, with no ask of its own open: an ask for the excess over the upper
  threshold, priced uniformly in [target sell, ceiling];
* below the lower threshold, with no bid of its own open: a bid for the deficit under the lower
  threshold, priced uniformly in [floor, target buy].

These are Gode & Sunder's budget-constrained (ZI-C) traders: a bid is never above the target buy
price and an ask never below the target sell price, so the agent never trades at a loss against
its targets. The unconstrained variant (ZI-U, for experiments only) draws from [floor, ceiling].
Orders are plain interval orders, so they expire at the interval's end and the next interval draws
afresh. Each agent owns a `random.Random` seeded from the runner's seed and the member id (via
SHA-256, not `hash()`, which varies between processes), so a run is reproducible.
"""
import hashlib
import random

from host_tools.exchange import errors
from host_tools.exchange.book import BUY, OPEN, SELL

PPM = 1_000_000


def draw_bid_price(rng, floor_micro_per_kwh, limit_micro_per_kwh):
    """A ZI bid price: uniform over the integers in [floor, limit]."""
    return rng.randint(floor_micro_per_kwh, limit_micro_per_kwh)


def draw_ask_price(rng, limit_micro_per_kwh, ceiling_micro_per_kwh):
    """A ZI ask price: uniform over the integers in [limit, ceiling]."""
    return rng.randint(limit_micro_per_kwh, ceiling_micro_per_kwh)


def derive_seed(runner_seed, member):
    """A per-member seed that is the same in every process for the same runner seed."""
    digest = hashlib.sha256(f"{runner_seed}:{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class AgentConfig:
    """What a member chooses when opting in. Validated here, at the edge."""

    __slots__ = ("member", "target_buy_micro_per_kwh", "target_sell_micro_per_kwh",
                 "floor_micro_per_kwh", "ceiling_micro_per_kwh", "upper_threshold_ppm",
                 "lower_threshold_ppm")

    def __init__(self, member, target_buy_micro_per_kwh, target_sell_micro_per_kwh,
                 floor_micro_per_kwh, ceiling_micro_per_kwh, upper_threshold_ppm=800_000,
                 lower_threshold_ppm=200_000):
        if type(member) is not str or not member:
            raise ValueError("member must be a non-empty string")
        prices = {
            "target_buy_micro_per_kwh": target_buy_micro_per_kwh,
            "target_sell_micro_per_kwh": target_sell_micro_per_kwh,
            "floor_micro_per_kwh": floor_micro_per_kwh,
            "ceiling_micro_per_kwh": ceiling_micro_per_kwh,
        }
        for name, value in prices.items():
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not floor_micro_per_kwh <= target_buy_micro_per_kwh <= ceiling_micro_per_kwh:
            raise ValueError("target buy price must lie within [floor, ceiling]")
        if not floor_micro_per_kwh <= target_sell_micro_per_kwh <= ceiling_micro_per_kwh:
            raise ValueError("target sell price must lie within [floor, ceiling]")
        for name, value in (("upper_threshold_ppm", upper_threshold_ppm),
                            ("lower_threshold_ppm", lower_threshold_ppm)):
            if type(value) is not int or not 0 <= value <= PPM:
                raise ValueError(f"{name} must be an integer in 0..{PPM}")
        if lower_threshold_ppm >= upper_threshold_ppm:
            raise ValueError("lower threshold must be below the upper threshold")
        self.member = member
        self.target_buy_micro_per_kwh = target_buy_micro_per_kwh
        self.target_sell_micro_per_kwh = target_sell_micro_per_kwh
        self.floor_micro_per_kwh = floor_micro_per_kwh
        self.ceiling_micro_per_kwh = ceiling_micro_per_kwh
        self.upper_threshold_ppm = upper_threshold_ppm
        self.lower_threshold_ppm = lower_threshold_ppm


class ZIAgent:
    """One member's agent: it adds an order on a side only when the member has none open there,
    so a member never has more than one agent order per side."""

    __slots__ = ("config", "constrained", "rng", "bid_order_id", "ask_order_id", "refused_count")

    def __init__(self, config, seed, constrained=True):
        self.config = config
        self.constrained = constrained
        self.rng = random.Random(seed)
        self.bid_order_id = None
        self.ask_order_id = None
        self.refused_count = 0

    def thresholds_wh(self, cap_wh):
        """(lower, upper) in Wh, rounded down."""
        config = self.config
        return (cap_wh * config.lower_threshold_ppm // PPM,
                cap_wh * config.upper_threshold_ppm // PPM)

    def act(self, exchange, port, interval_start_s):
        """Place this interval's orders, if any; returns the acks. Refusals are counted, not raised,
        so one member's problem (say, their own manual orders at the open-order limit) never stops
        the other agents."""
        config = self.config
        member = config.member
        balance_wh = port.balance_wh(member)
        lower_wh, upper_wh = self.thresholds_wh(port.cap_wh(member))
        qty_wh_max = exchange.config.qty_wh_max
        # "No ask open" means none at all, the member's own manual orders included (§5).
        open_sides = {order.is_buy for order in exchange.open_orders(member)
                      if order.status == OPEN}
        acks = []
        if balance_wh > upper_wh and False not in open_sides:
            if self.constrained:
                price = draw_ask_price(self.rng, config.target_sell_micro_per_kwh,
                                       config.ceiling_micro_per_kwh)
            else:
                price = draw_ask_price(self.rng, config.floor_micro_per_kwh,
                                       config.ceiling_micro_per_kwh)
            qty_wh = min(balance_wh - upper_wh, qty_wh_max)
            ack = self._submit(exchange, SELL, qty_wh, price, interval_start_s)
            if ack is not None:
                self.ask_order_id = ack.order_id
                acks.append(ack)
        elif balance_wh < lower_wh and True not in open_sides:
            if self.constrained:
                price = draw_bid_price(self.rng, config.floor_micro_per_kwh,
                                       config.target_buy_micro_per_kwh)
            else:
                price = draw_bid_price(self.rng, config.floor_micro_per_kwh,
                                       config.ceiling_micro_per_kwh)
            qty_wh = min(lower_wh - balance_wh, qty_wh_max)
            ack = self._submit(exchange, BUY, qty_wh, price, interval_start_s)
            if ack is not None:
                self.bid_order_id = ack.order_id
                acks.append(ack)
        return acks

    def _submit(self, exchange, side, qty_wh, price, interval_start_s):
        # The client id makes a retried run of the same interval idempotent.
        client_id = f"zi:{interval_start_s}:{side}"
        try:
            return exchange.submit(self.config.member, side, qty_wh, price, interval_start_s,
                                   client_id=client_id)
        except errors.ExchangeError:
            self.refused_count += 1
            return None


class AgentRunner:
    """All opted-in members' agents; the service calls `run_interval` once per interval."""

    def __init__(self, seed, agents_max=100_000):
        if type(seed) is not int:
            raise ValueError("seed must be an integer")
        self.seed = seed
        self.agents_max = agents_max
        self._agents = {}
        self._rng = random.Random(derive_seed(seed, "runner-order"))

    def opt_in(self, config, constrained=True):
        """Register (or replace) a member's agent. The agent's random stream is derived from the
        runner seed and the member, so re-registering reproduces the same draws."""
        if not isinstance(config, AgentConfig):
            raise ValueError("opt_in needs an AgentConfig")
        if config.member not in self._agents and len(self._agents) >= self.agents_max:
            raise ValueError(f"at most {self.agents_max} agents")
        agent = ZIAgent(config, derive_seed(self.seed, config.member), constrained)
        self._agents[config.member] = agent
        return agent

    def opt_out(self, member):
        if self._agents.pop(member, None) is None:
            raise ValueError(f"{member!r} has no agent")

    def agent(self, member):
        return self._agents[member]

    def members(self):
        return sorted(self._agents)

    def run_interval(self, exchange, port, interval_start_s):
        """Let every agent act once, in a seeded random order so no member is always first."""
        order = sorted(self._agents)
        self._rng.shuffle(order)
        acks = []
        for member in order:
            if port.has_member(member):
                acks.extend(self._agents[member].act(exchange, port, interval_start_s))
        return acks
