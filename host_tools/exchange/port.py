"""What the exchange needs from the settlement ledger, and an in-memory ledger that provides it.

The matching engine never reaches into ledger tables: it asks four questions (is this a member,
what is their WATT balance, what is their cap, how much money do they hold) and hands over one
`Trade` per fill. Keeping the boundary this small lets the engine run against `MemoryPort` in
tests and benchmarks and against the double-entry ledger in the service, with the same code.

Money rule (kept here so both sides of the boundary apply the same one): a trade of `qty_wh` at
`price_micro_per_kwh` is worth `qty_wh * price_micro_per_kwh // 1000` micro-units, rounded down
(in the buyer's favour, by less than one micro-unit). The buyer is debited and the seller credited
with that same integer, so money is conserved exactly; nothing is split, so no remainder exists.
"""
from typing import Protocol


class SettlementError(ValueError):
    """The ledger refused a trade; `code` is stable so callers can map it without parsing text."""

    code = "settlement_refused"

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


def trade_value_micro(qty_wh, price_micro_per_kwh):
    """Money for a fill: one integer used for both the buyer's debit and the seller's credit."""
    return qty_wh * price_micro_per_kwh // 1000


class Trade:
    """One fill between a buy and a sell order, settled as a single atomic ledger transaction.

    `maker_order_id` is the order whose price the trade used (the one that was in the book first).
    """

    __slots__ = (
        "trade_id",
        "interval_start_s",
        "buyer",
        "seller",
        "qty_wh",
        "price_micro_per_kwh",
        "value_micro",
        "buy_order_id",
        "sell_order_id",
        "maker_order_id",
    )

    def __init__(
        self,
        trade_id,
        interval_start_s,
        buyer,
        seller,
        qty_wh,
        price_micro_per_kwh,
        buy_order_id,
        sell_order_id,
        maker_order_id,
    ):
        self.trade_id = trade_id
        self.interval_start_s = interval_start_s
        self.buyer = buyer
        self.seller = seller
        self.qty_wh = qty_wh
        self.price_micro_per_kwh = price_micro_per_kwh
        self.value_micro = qty_wh * price_micro_per_kwh // 1000
        self.buy_order_id = buy_order_id
        self.sell_order_id = sell_order_id
        self.maker_order_id = maker_order_id

    @property
    def idempotency_id(self):
        """The ledger transfer id: a re-delivered trade is recognised, never applied twice."""
        return f"trade:{self.trade_id}"

    def as_tuple(self):
        return (
            self.trade_id,
            self.interval_start_s,
            self.buyer,
            self.seller,
            self.qty_wh,
            self.price_micro_per_kwh,
            self.value_micro,
            self.buy_order_id,
            self.sell_order_id,
            self.maker_order_id,
        )

    def __eq__(self, other):
        return isinstance(other, Trade) and self.as_tuple() == other.as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def __repr__(self):
        return (
            f"Trade(id={self.trade_id}, {self.seller}->{self.buyer}, {self.qty_wh} Wh"
            f" @ {self.price_micro_per_kwh} µ/kWh = {self.value_micro} µ)"
        )


class SettlementPort(Protocol):
    """The ledger as the exchange sees it. Balances are derived by the ledger, never cached here.

    `settle_trade` must move `qty_wh` WATT seller→buyer and `value_micro` money buyer→seller in one
    transaction, and must be idempotent by `trade.trade_id` (the same trade again is a no-op; a
    different trade under a used id is refused).
    """

    def has_member(self, member: str) -> bool: ...

    def balance_wh(self, member: str) -> int: ...

    def cap_wh(self, member: str) -> int: ...

    def money_micro(self, member: str) -> int: ...

    def settle_trade(self, trade: Trade) -> None: ...


class MemoryPort:
    """A complete in-memory ledger for the exchange's two assets, for tests and benchmarks.

    It enforces what the real ledger enforces: a WATT balance never goes below zero, a trade never
    pushes a buyer above their cap, a trade id is applied at most once. Money may go negative:
    members are billed for what they buy (ECONOMICS §1), the exchange does not extend credit checks.
    """

    __slots__ = ("_balance_wh", "_cap_wh", "_money_micro", "_settled", "trade_count")

    def __init__(self):
        self._balance_wh = {}
        self._cap_wh = {}
        self._money_micro = {}
        self._settled = {}
        self.trade_count = 0

    def add_member(self, member, cap_wh, balance_wh=0, money_micro=0):
        if not isinstance(member, str) or not member:
            raise SettlementError("member id must be a non-empty string", "invalid_member")
        for name, value in (("cap_wh", cap_wh), ("balance_wh", balance_wh)):
            if type(value) is not int or value < 0:
                raise SettlementError(f"{name} must be a non-negative integer", "invalid_amount")
        if type(money_micro) is not int:
            raise SettlementError("money_micro must be an integer", "invalid_amount")
        if balance_wh > cap_wh:
            raise SettlementError("balance_wh above cap_wh", "above_cap")
        if member in self._cap_wh:
            raise SettlementError(f"member {member!r} already exists", "duplicate_member")
        self._cap_wh[member] = cap_wh
        self._balance_wh[member] = balance_wh
        self._money_micro[member] = money_micro

    def has_member(self, member):
        return member in self._cap_wh

    def balance_wh(self, member):
        return self._balance_wh[member]

    def cap_wh(self, member):
        return self._cap_wh[member]

    def money_micro(self, member):
        return self._money_micro[member]

    def members(self):
        return sorted(self._cap_wh)

    def mint_wh(self, member, energy_wh):
        """Metered production arriving (or, negative, consumption burned); stays within [0, cap]."""
        if type(energy_wh) is not int:
            raise SettlementError("energy_wh must be an integer", "invalid_amount")
        new_wh = self._balance_wh[member] + energy_wh
        if new_wh < 0 or new_wh > self._cap_wh[member]:
            raise SettlementError(f"balance would leave [0, cap] for {member!r}", "out_of_range")
        self._balance_wh[member] = new_wh

    def set_cap_wh(self, member, cap_wh):
        if type(cap_wh) is not int or cap_wh < 0:
            raise SettlementError("cap_wh must be a non-negative integer", "invalid_amount")
        self._cap_wh[member] = cap_wh

    def settle_trade(self, trade):
        previous = self._settled.get(trade.trade_id)
        if previous is not None:
            if previous == trade.as_tuple():
                return
            raise SettlementError(f"trade id {trade.trade_id} reused", "duplicate_trade_id")
        buyer = trade.buyer
        seller = trade.seller
        qty_wh = trade.qty_wh
        balances = self._balance_wh
        if buyer == seller:
            raise SettlementError("self-trade", "self_trade")
        if buyer not in balances or seller not in balances:
            raise SettlementError("unknown member in trade", "unknown_member")
        if qty_wh <= 0 or trade.value_micro != qty_wh * trade.price_micro_per_kwh // 1000:
            raise SettlementError("inconsistent trade amounts", "invalid_amount")
        if balances[seller] < qty_wh:
            raise SettlementError(f"{seller!r} does not hold {qty_wh} Wh", "insufficient_energy")
        if balances[buyer] + qty_wh > self._cap_wh[buyer]:
            raise SettlementError(f"{buyer!r} would exceed the cap", "above_cap")
        # Both moves happen together or not at all: nothing above can fail after a write.
        balances[seller] -= qty_wh
        balances[buyer] += qty_wh
        money = self._money_micro
        money[buyer] -= trade.value_micro
        money[seller] += trade.value_micro
        self._settled[trade.trade_id] = trade.as_tuple()
        self.trade_count += 1

    def total_wh(self):
        return sum(self._balance_wh.values())

    def total_money_micro(self):
        return sum(self._money_micro.values())
