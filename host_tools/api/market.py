"""Handlers of the exchange: orders, depth, trades, prices.

Every exchange operation runs through the gate (`gate.py`), so the single-threaded book only
ever sees one caller; results are turned into plain dicts inside the gate, before another
operation can change the order objects. The public views (depth, trades, prices) are anonymous:
price levels and volumes, never who is behind them.
"""
import json

from host_tools.api.errors import unavailable, unprocessable
from host_tools.exchange import errors

_OPEN_QUOTES_MAX = 8
_TRADES_SCAN_MAX = 10_000


def _gate(ctx):
    if ctx.app.gate is None:
        raise unavailable("not_configured", "this service runs no exchange")
    return ctx.app.gate


def order_dict(order):
    return {"order_id": order.order_id, "side": order.side, "qty_wh": order.qty_wh,
            "remaining_wh": order.remaining_wh, "filled_wh": order.filled_wh,
            "price_micro_per_kwh": order.price_micro_per_kwh,
            "interval_start_s": order.interval_start_s, "gtc": order.gtc,
            "immediate": order.immediate, "client_id": order.client_id, "status": order.status}


def _own_trade(trade, member):
    """A trade as one party sees it: their side, no counterparty name."""
    return {"trade_id": trade.trade_id, "side": "buy" if trade.buyer == member else "sell",
            "qty_wh": trade.qty_wh, "price_micro_per_kwh": trade.price_micro_per_kwh,
            "value_micro": trade.value_micro, "interval_start_s": trade.interval_start_s}


def place_order(ctx):
    member = ctx.principal.member
    body = ctx.body

    def submit(exchange):
        ack = exchange.submit(member, body["side"], body["qty_wh"], body["price_micro_per_kwh"],
                              body["interval_start_s"], client_id=body.get("client_id"),
                              gtc=body.get("gtc", False), immediate=body.get("immediate", False))
        return {"order": order_dict(ack.order), "duplicate": ack.duplicate,
                "filled_wh": ack.filled_wh, "stp_cancelled": ack.stp_cancelled,
                "trades": [_own_trade(t, member) for t in ack.trades
                           if member in (t.buyer, t.seller)]}

    result = _gate(ctx).call(submit)
    return (200 if result["duplicate"] else 201), result


def cancel_order(ctx):
    member = ctx.principal.member
    order_id = ctx.path["order_id"]
    result = _gate(ctx).call(lambda exchange: order_dict(exchange.cancel(member, order_id)))
    return 200, {"order": result}


def get_order(ctx):
    """One of the caller's orders, open or finished, while its interval is open."""
    member = ctx.principal.member
    order_id = ctx.path["order_id"]

    def view(exchange):
        order = exchange.order(order_id)
        if order.member != member:
            raise errors.NotYourOrder(f"order {order_id} does not belong to {member!r}")
        return order_dict(order)

    return 200, {"order": _gate(ctx).call(view)}


def list_orders(ctx):
    member = ctx.principal.member
    orders = _gate(ctx).call(
        lambda exchange: [order_dict(order) for order in exchange.open_orders(member)])
    return 200, {"orders": orders}


def _interval(ctx, exchange, interval_start_s):
    step = exchange.config.interval_s
    if interval_start_s is None:
        return exchange.open_from_s
    if interval_start_s % step:
        raise unprocessable("invalid_parameter",
                            f"interval_start_s must be aligned to {step} s")
    return interval_start_s


def depth(ctx):
    levels_max = ctx.query["levels"]

    def view(exchange):
        interval_start_s = _interval(ctx, exchange, ctx.query["interval_start_s"])
        bid, ask = exchange.quote(interval_start_s)
        return {"interval_start_s": interval_start_s, "best_bid_micro_per_kwh": bid,
                "best_ask_micro_per_kwh": ask,
                "bids": [{"price_micro_per_kwh": p, "qty_wh": q}
                         for p, q in exchange.depth(interval_start_s, "buy")[:levels_max]],
                "asks": [{"price_micro_per_kwh": p, "qty_wh": q}
                         for p, q in exchange.depth(interval_start_s, "sell")[:levels_max]]}

    return 200, _gate(ctx).call(view)


def trades(ctx):
    """Trades of one delivery interval, read from the ledger (every fill is a transfer there)."""
    interval_start_s = ctx.query["interval_start_s"]
    step = ctx.ledger.config.interval_s
    if interval_start_s % step:
        raise unprocessable("invalid_parameter", f"interval_start_s must be aligned to {step} s")
    # A fill is booked into its delivery interval, or the first open one if that was closed.
    rows = ctx.ledger.db.all(
        "SELECT t.transfer_id, t.meta, e.amount FROM transfers t JOIN entries e ON "
        "e.transfer_id = t.transfer_id AND e.asset = 'WATT' WHERE t.kind = 'trade' AND "
        "t.interval_start_s >= ? ORDER BY t.first_seq LIMIT ?",
        (interval_start_s, _TRADES_SCAN_MAX))
    items = []
    for transfer_id, meta_text, qty_wh in rows:
        meta = json.loads(meta_text)
        if meta.get("delivery_interval_s") != interval_start_s:
            continue
        price = meta.get("price_micro_per_kwh")
        trade_id = transfer_id.split(":", 1)[1] if ":" in transfer_id else transfer_id
        items.append({"trade_id": int(trade_id) if trade_id.isdigit() else trade_id,
                      "qty_wh": qty_wh, "price_micro_per_kwh": price,
                      "value_micro": qty_wh * price // 1000 if isinstance(price, int) else None})
        if len(items) >= ctx.query["limit"]:
            break
    volume_wh = sum(item["qty_wh"] for item in items)
    return 200, {"interval_start_s": interval_start_s, "trades": items, "volume_wh": volume_wh}


def prices(ctx):
    """Quotes of the next open intervals and reference prices of the latest closed ones."""
    closed_max = ctx.query["limit"]

    def view(exchange):
        step = exchange.config.interval_s
        quotes = []
        for interval_start_s in exchange.open_intervals()[:_OPEN_QUOTES_MAX]:
            bid, ask = exchange.quote(interval_start_s)
            quotes.append({"interval_start_s": interval_start_s, "best_bid_micro_per_kwh": bid,
                           "best_ask_micro_per_kwh": ask})
        reference = []
        start = exchange.open_from_s - step
        while len(reference) < closed_max and start >= 0:
            try:
                reference.append(exchange.reference_price(start).as_dict())
            except ValueError:
                break  # before the exchange's first interval
            start -= step
        return {"open_from_s": exchange.open_from_s, "interval_s": step,
                "last_reference_price_micro_per_kwh":
                    exchange.last_reference_price_micro_per_kwh,
                "quotes": quotes, "reference_prices": reference}

    result = _gate(ctx).call(view)
    recorded = _recorded_prices(ctx, closed_max)
    if recorded is not None:
        result["reference_prices"] = recorded
    return 200, result


def _recorded_prices(ctx, limit):
    """The reference prices the service's market recorded (they survive a restart, unlike the
    book's memory); None when this service records none (an exchange without the market)."""
    from host_tools.settlement import market as settlement_market

    db = ctx.ledger.db
    if db.get_meta("market_schema_version") is None:  # the market's tables were never made
        return None
    rows = settlement_market.reference_prices(db, limit=limit)
    if not rows:
        return None
    fields = ("interval_start_s", "price_micro_per_kwh", "volume_wh", "trade_count", "carried")
    return [{name: (bool(row[name]) if name == "carried" else row[name]) for name in fields}
            for row in rows]
