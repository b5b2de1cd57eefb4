"""The ledger behind the exchange's settlement port (`host_tools.exchange.port.SettlementPort`).

The exchange asks five things: is this a member, their WATT balance, their cap,
their money, and "settle this trade". Answering from the ledger keeps one
source of truth: the book never caches balances, and a trade is one atomic,
idempotent ledger transfer (id `trade.idempotency_id`, kind "trade"): WATT
seller → buyer and the trade's value in money buyer → seller.

Duck-typed on the trade (no import of the exchange), so the dependency points
one way: the exchange may use the ledger, never the reverse.
"""
from host_tools.settlement.errors import InvalidTransfer
from host_tools.settlement.ledger import MONEY, WATT, member_account


class LedgerPort:
    """Adapter from the exchange's port protocol to a `Ledger`.

    `allow_receivable` (default True, as the exchange's MemoryPort documents):
    a buyer's money may go negative, billed like grid energy (ECONOMICS §1).
    With False, the ledger's `member_credit_limit_micro` applies to trades.
    """

    def __init__(self, ledger, allow_receivable=True):
        self.ledger = ledger
        self.allow_receivable = allow_receivable
        # The engine asks these on every order and every match: the ledger answers them as
        # they are, so hand out its methods rather than add a call in between.
        self.has_member = ledger.is_member
        self.cap_wh = ledger.cap_wh

    def balance_wh(self, member):
        return self.ledger.balance(member_account(member), WATT)

    def money_micro(self, member):
        return self.ledger.balance(member_account(member), MONEY)

    def settle_trade(self, trade):
        """Book one fill; a re-delivered trade is a no-op, a changed one is refused."""
        qty_wh, value_micro = trade.qty_wh, trade.value_micro
        for name, value in (("qty_wh", qty_wh), ("value_micro", value_micro),
                            ("price_micro_per_kwh", trade.price_micro_per_kwh)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidTransfer(f"trade {name} must be a non-negative integer")
        if qty_wh == 0 or value_micro != qty_wh * trade.price_micro_per_kwh // 1000:
            raise InvalidTransfer("inconsistent trade amounts")
        if trade.buyer == trade.seller:
            raise InvalidTransfer("a member never trades with themselves")
        buyer, seller = member_account(trade.buyer), member_account(trade.seller)
        # Legs as plain tuples: the ledger validates them either way and keeps tuples inside.
        legs = [(seller, buyer, WATT, qty_wh)]
        if value_micro:
            legs.append((buyer, seller, MONEY, value_micro))
        meta = {"price_micro_per_kwh": trade.price_micro_per_kwh,
                "delivery_interval_s": trade.interval_start_s,
                "buy_order_id": str(trade.buy_order_id), "sell_order_id": str(trade.sell_order_id)}
        return self.ledger.transfer(trade.idempotency_id, legs, at_s=trade.interval_start_s,
                                    kind="trade", meta=meta, allow_receivable=self.allow_receivable)
