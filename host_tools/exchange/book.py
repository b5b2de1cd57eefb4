"""The community's continuous double auction: one limit-order book per delivery interval.

Rules (ECONOMICS §2 and §4), and how this engine makes each one precise:

* Price-time priority. Levels are kept in a dict of deques keyed by price, with a sorted list of
  prices (best at the end, so removing the best level is O(1)). Within a level, older first.
* A trade executes at the price of the order that was in the book first. For a newly arriving
  order that is always the resting order; when two resting orders become executable against each
  other later (cover or cap room arrived), the older of the two sets the price.
* Cover. The ledger cannot move energy that does not exist, so every fill needs the seller to hold
  the energy at the moment of the fill: fill = min(both remainders, seller's balance, buyer's room).
  An ask whose owner holds nothing ("uncovered", e.g. energy not yet produced) stays in the book,
  keeps its time priority and still sets the quoted price (`quote()` shows it), but is skipped by
  buys. A partly covered ask fills up to the seller's balance and keeps the rest.
* Serve-now buys (`immediate=True`) take the first covered asks in priority order within their
  limit, even when a cheaper uncovered ask is quoted, and never rest: what cannot be served now is
  cancelled (the household's remaining demand is served by the grid). Normal buys rest.
* Cap. A fill never pushes the buyer above their cap: a buy fills up to the room it has and the
  remainder waits in the book, unexecuted and not cancelled ("parked"), until the balance has room.
  A buy larger than the member's whole cap is refused, since it could never complete.
* Balance changes. Whenever a trade settles, both parties' balances move; the engine then re-checks
  their resting orders (the seller may now have cap room for a parked buy, the buyer cover for an
  uncovered ask) and executes what has become executable. Balance changes from outside (metered
  production or consumption) must be reported with `on_balance_change(member)`, which does the same.
  So after every call, no resting buy with room crosses a resting ask with cover of another member.
* Self-trade prevention: when a member's orders would meet each other, the newer one's remainder
  is cancelled (a standing order is never removed by its owner's own new order).
* Intervals. Orders name their delivery interval (its start, aligned to `interval_s`). Closing an
  interval expires its orders, except good-till-cancelled ones, which move to the next interval
  keeping their time priority, and records its reference price: the volume-weighted trade price
  rounded half up, or the previous one carried over when nothing traded.
* Client order ids make a resubmission idempotent: the same member sending the same order again
  under the same id gets the original order back and nothing executes twice. Reusing an id for a
  different order is refused. Ids are remembered while the order's interval is open.
* Errors are raised before anything changes (see `errors`). If the ledger itself refuses a fill
  while matching, fills already settled stand (each was its own atomic transaction), the incoming
  order's remainder is cancelled, and the ledger's error propagates.

Quantities are Wh, prices micro-units per kWh, all integers; see `port.trade_value_micro`.
"""
from bisect import bisect_left, insort
from collections import deque

from host_tools.exchange import errors
from host_tools.exchange.port import Trade

BUY = "buy"
SELL = "sell"

OPEN = "open"
FILLED = "filled"
CANCELLED = "cancelled"
EXPIRED = "expired"

_CLIENT_ID_LEN_MAX = 64
# A year of 15-minute intervals: more than any outage, few enough to never hang the service.
_CLOSE_INTERVALS_MAX = 35_040


class ExchangeConfig:
    """Limits and defaults. Every limit exists so one member cannot exhaust the service."""

    __slots__ = (
        "interval_s",
        "qty_wh_max",
        "price_micro_per_kwh_max",
        "open_orders_per_member_max",
        "open_orders_max",
        "intervals_ahead_max",
        "initial_price_micro_per_kwh",
    )

    def __init__(
        self,
        interval_s=900,
        qty_wh_max=1_000_000,
        price_micro_per_kwh_max=10_000_000,
        open_orders_per_member_max=100,
        open_orders_max=1_000_000,
        intervals_ahead_max=96,
        initial_price_micro_per_kwh=150_000,
    ):
        for name, value in (
            ("interval_s", interval_s),
            ("qty_wh_max", qty_wh_max),
            ("price_micro_per_kwh_max", price_micro_per_kwh_max),
            ("open_orders_per_member_max", open_orders_per_member_max),
            ("open_orders_max", open_orders_max),
        ):
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if type(intervals_ahead_max) is not int or intervals_ahead_max < 0:
            raise ValueError("intervals_ahead_max must be a non-negative integer")
        if (
            type(initial_price_micro_per_kwh) is not int
            or not 0 < initial_price_micro_per_kwh <= price_micro_per_kwh_max
        ):
            raise ValueError("initial_price_micro_per_kwh must be within (0, price max]")
        self.interval_s = interval_s
        self.qty_wh_max = qty_wh_max
        self.price_micro_per_kwh_max = price_micro_per_kwh_max
        self.open_orders_per_member_max = open_orders_per_member_max
        self.open_orders_max = open_orders_max
        self.intervals_ahead_max = intervals_ahead_max
        self.initial_price_micro_per_kwh = initial_price_micro_per_kwh


class Order:
    """A limit order. `order_id` doubles as its time priority (ids only increase)."""

    __slots__ = (
        "order_id",
        "member",
        "is_buy",
        "price_micro_per_kwh",
        "qty_wh",
        "remaining_wh",
        "interval_start_s",
        "gtc",
        "immediate",
        "client_id",
        "status",
    )

    def __init__(self, order_id, member, is_buy, price, qty_wh, interval_start_s, gtc, immediate,
                 client_id):
        self.order_id = order_id
        self.member = member
        self.is_buy = is_buy
        self.price_micro_per_kwh = price
        self.qty_wh = qty_wh
        self.remaining_wh = qty_wh
        self.interval_start_s = interval_start_s
        self.gtc = gtc
        self.immediate = immediate
        self.client_id = client_id
        self.status = OPEN

    @property
    def side(self):
        return BUY if self.is_buy else SELL

    @property
    def filled_wh(self):
        """Executed so far; for a cancelled or expired order `remaining_wh` is what was dropped."""
        return self.qty_wh - self.remaining_wh

    def __repr__(self):
        return (
            f"Order({self.order_id} {self.member} {self.side} {self.remaining_wh}/{self.qty_wh} Wh"
            f" @ {self.price_micro_per_kwh} {self.status})"
        )


class Ack:
    """What a submission did: the order's state afterwards and, as a tuple, every trade it caused
    (including trades of other resting orders that its fills made executable)."""

    __slots__ = ("order", "trades", "duplicate", "filled_wh", "stp_cancelled")

    def __init__(self, order, trades, duplicate=False, filled_wh=0, stp_cancelled=False):
        self.order = order
        self.trades = trades
        self.duplicate = duplicate
        self.filled_wh = filled_wh
        self.stp_cancelled = stp_cancelled

    @property
    def order_id(self):
        return self.order.order_id

    @property
    def status(self):
        return self.order.status

    @property
    def remaining_wh(self):
        return self.order.remaining_wh


class ReferencePrice:
    """An interval's published price and the volume behind it (`carried` when nothing traded)."""

    __slots__ = ("interval_start_s", "price_micro_per_kwh", "volume_wh", "trade_count", "carried")

    def __init__(self, interval_start_s, price, volume_wh, trade_count, carried):
        self.interval_start_s = interval_start_s
        self.price_micro_per_kwh = price
        self.volume_wh = volume_wh
        self.trade_count = trade_count
        self.carried = carried

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class _Book:
    """One interval's bids and asks. Keys: bid prices ascending, ask prices negated ascending,
    so the best level is always at the end of its list. `orders` holds every order of the
    interval, open or finished, so closing it touches only its own orders."""

    __slots__ = ("interval_start_s", "bids", "asks", "bid_keys", "ask_keys", "volume_wh",
                 "price_volume", "trade_count", "orders")

    def __init__(self, interval_start_s):
        self.interval_start_s = interval_start_s
        self.orders = []
        self.bids = {}
        self.asks = {}
        self.bid_keys = []
        self.ask_keys = []
        self.volume_wh = 0
        self.price_volume = 0
        self.trade_count = 0


def _int(value):
    return type(value) is int


class Exchange:
    """The order books of all open intervals, settling every fill through a `SettlementPort`.

    Not thread-safe by design: the service drives it from one task (orders, agent runs, balance
    changes and interval closes in event-time order), which is also what makes runs reproducible.
    `publish(reference_price)` is called for every closed interval (the retained `price` topic).
    """

    def __init__(self, port, config=None, first_interval_start_s=0, first_order_id=1,
                 first_trade_id=1, publish=None):
        self.config = config or ExchangeConfig()
        if not _int(first_interval_start_s) or first_interval_start_s % self.config.interval_s:
            raise ValueError("first_interval_start_s must be an integer aligned to interval_s")
        self._port = port
        self._publish = publish
        self._books = {}
        self._open_from_s = first_interval_start_s
        self._open_until_s = first_interval_start_s + (
            self.config.intervals_ahead_max * self.config.interval_s)
        self._orders = {}
        # member -> {order_id: open order}. A member's dict stays when it empties: there is one
        # per member of the port at most, and agents acting once per interval would otherwise
        # allocate (and the garbage collector chase) a new one for nearly every order.
        self._member_open = {}
        self._client_ids = {}
        self._open_count = 0
        self._next_order_id = first_order_id
        self._first_order_id = first_order_id
        self._next_trade_id = first_trade_id
        self._reference = {}
        self._last_price = self.config.initial_price_micro_per_kwh

    @property
    def pristine(self):
        """True while the exchange has never accepted an order nor closed an interval."""
        return self._next_order_id == self._first_order_id and not self._reference

    def rebase(self, first_interval_start_s):
        """Start a pristine exchange at another interval.

        A service started before any metered data arrived cannot know which interval its
        community's event time is in (a simulation, a replay); the first interval it closes
        tells it. Refused once the exchange has been used.
        """
        if not self.pristine:
            raise ValueError("only an exchange that has never been used can be rebased")
        if not _int(first_interval_start_s) or first_interval_start_s % self.config.interval_s:
            raise ValueError("first_interval_start_s must be an integer aligned to interval_s")
        self._open_from_s = first_interval_start_s
        self._open_until_s = first_interval_start_s + (
            self.config.intervals_ahead_max * self.config.interval_s)

    # ----------------------------------------------------------------- queries

    @property
    def open_from_s(self):
        """Start of the oldest interval still accepting orders."""
        return self._open_from_s

    def order(self, order_id):
        found = self._orders.get(order_id)
        if found is None:
            raise errors.UnknownOrder(f"no order {order_id!r} (unknown or its interval closed)")
        return found

    def open_orders(self, member):
        return sorted(self._member_open.get(member, {}).values(), key=lambda o: o.order_id)

    def quote(self, interval_start_s):
        """(best bid, best ask) in µ/kWh, or None per side; uncovered asks count (ECONOMICS §4)."""
        book = self._books.get(interval_start_s)
        if book is None:
            return None, None
        bid = book.bid_keys[-1] if book.bid_keys else None
        ask = -book.ask_keys[-1] if book.ask_keys else None
        return bid, ask

    def depth(self, interval_start_s, side):
        """[(price, open Wh)] best first, for display and for checking the book's invariants."""
        book = self._books.get(interval_start_s)
        if book is None:
            return []
        if side == BUY:
            return [(k, sum(o.remaining_wh for o in book.bids[k])) for k in reversed(book.bid_keys)]
        return [(-k, sum(o.remaining_wh for o in book.asks[-k])) for k in reversed(book.ask_keys)]

    def resting_orders(self, interval_start_s):
        """All open orders of an interval in priority order per side (bids first)."""
        book = self._books.get(interval_start_s)
        if book is None:
            return [], []
        bids = [o for k in reversed(book.bid_keys) for o in book.bids[k]]
        asks = [o for k in reversed(book.ask_keys) for o in book.asks[-k]]
        return bids, asks

    @property
    def open_order_count(self):
        """Resting orders in all books (what `open_orders_max` limits)."""
        return self._open_count

    def open_intervals(self):
        return sorted(self._books)

    def reference_price(self, interval_start_s):
        """The recorded reference price of a closed interval."""
        found = self._reference.get(interval_start_s)
        if found is None:
            raise errors.InvalidOrder(f"interval {interval_start_s} has no reference price yet")
        return found

    @property
    def last_reference_price_micro_per_kwh(self):
        return self._last_price

    # ----------------------------------------------------------------- commands

    def submit(self, member, side, qty_wh, price_micro_per_kwh, interval_start_s, *,
               client_id=None, gtc=False, immediate=False):
        """Place a limit order and match it; returns an `Ack`. Raises `ExchangeError` subclasses."""
        config = self.config
        port = self._port
        if type(member) is not str or not port.has_member(member):
            raise errors.UnknownMember(f"unknown member {member!r}")
        if side == BUY:
            is_buy = True
        elif side == SELL:
            is_buy = False
        else:
            raise errors.InvalidOrder(f"side must be 'buy' or 'sell', got {side!r}")
        if type(qty_wh) is not int or not 0 < qty_wh <= config.qty_wh_max:
            raise errors.InvalidQuantity(
                f"quantity must be an integer number of Wh in 1..{config.qty_wh_max},"
                f" got {qty_wh!r}")
        if type(price_micro_per_kwh) is not int or not (
                0 < price_micro_per_kwh <= config.price_micro_per_kwh_max):
            raise errors.InvalidPrice(
                f"price must be an integer µ/kWh in 1..{config.price_micro_per_kwh_max},"
                f" got {price_micro_per_kwh!r}")
        if gtc is not False or immediate is not False:  # the defaults need neither check
            if type(gtc) is not bool or type(immediate) is not bool:
                raise errors.InvalidOrder("gtc and immediate must be booleans")
            if immediate and (gtc or not is_buy):
                raise errors.InvalidOrder("only a buy can be immediate, and it cannot also be gtc")
        if (type(interval_start_s) is not int or interval_start_s < self._open_from_s
                or interval_start_s > self._open_until_s or interval_start_s % config.interval_s):
            self._check_interval(interval_start_s)
        if client_id is not None:
            if type(client_id) is not str or not 0 < len(client_id) <= _CLIENT_ID_LEN_MAX or (
                    not client_id.isprintable()):
                raise errors.InvalidOrder(
                    f"client_id must be 1..{_CLIENT_ID_LEN_MAX} printable characters")
            previous = self._client_ids.get((member, client_id))
            if previous is not None:
                if (previous.is_buy, previous.qty_wh, previous.price_micro_per_kwh,
                        previous.interval_start_s, previous.gtc, previous.immediate) != (
                        is_buy, qty_wh, price_micro_per_kwh, interval_start_s, gtc, immediate):
                    raise errors.DuplicateClientId(
                        f"client id {client_id!r} already names order {previous.order_id}")
                return Ack(previous, (), duplicate=True, filled_wh=previous.filled_wh)
        if is_buy and qty_wh > port.cap_wh(member):
            raise errors.AboveCap(
                f"buy of {qty_wh} Wh exceeds {member!r}'s cap of {port.cap_wh(member)} Wh")
        mine = self._member_open.get(member)
        if mine is not None and len(mine) >= config.open_orders_per_member_max:
            raise errors.TooManyOrders(
                f"{member!r} already has {len(mine)} open orders (limit"
                f" {config.open_orders_per_member_max})")
        if self._open_count >= config.open_orders_max:
            raise errors.TooManyOrders("the exchange holds its maximum number of open orders")

        # Validated: from here on the submission is accepted and may change state.
        order_id = self._next_order_id
        self._next_order_id = order_id + 1
        order = Order(order_id, member, is_buy, price_micro_per_kwh, qty_wh, interval_start_s,
                      gtc, immediate, client_id)
        self._orders[order_id] = order
        if client_id is not None:
            self._client_ids[(member, client_id)] = order
        book = self._books.get(interval_start_s)
        if book is None:
            book = self._books[interval_start_s] = _Book(interval_start_s)
        book.orders.append(order)
        # Fast path: nothing on the other side crosses, so the order simply rests.
        if is_buy:
            keys = book.ask_keys
            crosses = keys and -keys[-1] <= price_micro_per_kwh
        else:
            keys = book.bid_keys
            crosses = keys and keys[-1] >= price_micro_per_kwh
        if not crosses:
            if immediate:
                order.status = CANCELLED
                return Ack(order, ())
            # Resting, inlined from `_rest` because this is the path most orders take.
            levels = book.bids if is_buy else book.asks
            level = levels.get(price_micro_per_kwh)
            if level is None:
                levels[price_micro_per_kwh] = deque((order,))
                insort(book.bid_keys if is_buy else book.ask_keys,
                       price_micro_per_kwh if is_buy else -price_micro_per_kwh)
            else:
                level.append(order)
            if mine is None:
                self._member_open[member] = {order_id: order}
            else:
                mine[order_id] = order
            self._open_count += 1
            # Positional: keyword arguments make this call twice as slow.
            return Ack(order, ())
        trades = []
        stp = False
        try:
            stp = self._match(book, order, trades)
        except Exception:
            if order.status == OPEN:
                order.status = CANCELLED
            raise
        filled_wh = qty_wh - order.remaining_wh
        if order.status == OPEN:
            if order.remaining_wh == 0:
                order.status = FILLED
            elif immediate:
                order.status = CANCELLED
            else:
                self._rest(book, order)
        if trades:
            self._after_trades(trades)
        return Ack(order, tuple(trades), filled_wh=filled_wh, stp_cancelled=stp)

    def cancel(self, member, order_id):
        """Cancel the member's own open order; returns it. Someone else's order is refused."""
        order = self._orders.get(order_id)
        if order is None:
            raise errors.UnknownOrder(f"no order {order_id!r}")
        if order.member != member:
            raise errors.NotYourOrder(f"order {order_id} does not belong to {member!r}")
        if order.status != OPEN:
            raise errors.UnknownOrder(f"order {order_id} is no longer open ({order.status})")
        self._unrest(self._books[order.interval_start_s], order)
        self._finish(order, CANCELLED)
        return order

    def on_balance_change(self, member):
        """A member's balance moved outside the exchange: run what became executable."""
        if type(member) is not str or not self._port.has_member(member):
            raise errors.UnknownMember(f"unknown member {member!r}")
        trades = []
        self._sweep([(member, True), (member, False)], trades)
        return trades

    def close_interval(self, interval_start_s):
        """Close every open interval up to and including this one (event time only moves forward).

        Returns the recorded `ReferencePrice`s in order, plus trades that carrying
        good-till-cancelled orders forward caused.
        """
        if not _int(interval_start_s) or interval_start_s % self.config.interval_s:
            raise errors.InvalidOrder("interval start must be an integer aligned to interval_s")
        if interval_start_s < self._open_from_s:
            raise errors.IntervalClosed(f"interval {interval_start_s} is already closed")
        step = self.config.interval_s
        if (interval_start_s - self._open_from_s) // step >= _CLOSE_INTERVALS_MAX:
            raise errors.InvalidOrder(
                f"refusing to close more than {_CLOSE_INTERVALS_MAX} intervals in one call")
        closed = []
        trades = []
        start = self._open_from_s
        while start <= interval_start_s:
            closed.append(self._close_one(start, trades))
            start += step
        return closed, trades

    # ----------------------------------------------------------------- internals

    def _check_interval(self, interval_start_s):
        step = self.config.interval_s
        if not _int(interval_start_s) or interval_start_s % step:
            raise errors.InvalidOrder(
                f"interval must be an integer start time aligned to {step} s, got"
                f" {interval_start_s!r}")
        if interval_start_s < self._open_from_s:
            raise errors.IntervalClosed(f"interval {interval_start_s} is closed")
        if interval_start_s > self._open_until_s:
            raise errors.IntervalNotOpen(
                f"interval {interval_start_s} is more than {self.config.intervals_ahead_max}"
                " intervals ahead")

    def _close_one(self, start, trades):
        book = self._books.pop(start, None)
        nxt = start + self.config.interval_s
        self._open_from_s = nxt
        self._open_until_s = nxt + self.config.intervals_ahead_max * self.config.interval_s
        carried = []
        if book is not None:
            self._retire(book, carried)
        if book is not None and book.volume_wh:
            # Volume-weighted price, rounded half up: Σ(qty·price) / Σqty.
            price = (2 * book.price_volume + book.volume_wh) // (2 * book.volume_wh)
            ref = ReferencePrice(start, price, book.volume_wh, book.trade_count, False)
        else:
            ref = ReferencePrice(start, self._last_price, 0, 0, True)
        self._last_price = ref.price_micro_per_kwh
        self._reference[start] = ref
        if carried:
            target = self._books.get(nxt)
            if target is None:
                target = self._books[nxt] = _Book(nxt)
            # Time priority is submission order (the order id), also for orders that were placed
            # directly into the next interval before a carried order was submitted: re-sort
            # every level that received a carried order.
            touched = set()
            for order in carried:
                order.interval_start_s = nxt
                target.orders.append(order)
                self._rest(target, order, carried=True)
                touched.add((order.is_buy, order.price_micro_per_kwh))
            for is_buy, price in touched:
                level = (target.bids if is_buy else target.asks)[price]
                ordered = sorted(level, key=lambda o: o.order_id)
                level.clear()
                level.extend(ordered)
            self._sweep([(m, side) for m in sorted({o.member for o in carried})
                         for side in (True, False)], trades)
        if self._publish is not None:
            self._publish(ref)
        return ref

    def _retire(self, book, carried):
        """Expire a closing interval's open orders (good-till-cancelled ones go to `carried`)
        and forget its orders and their client ids: bounds memory.

        Open orders are exactly the resting ones, so the book's order list replaces a walk of
        its levels; `_finish` is inlined, since an interval can hold many thousands of orders.
        """
        orders = self._orders
        client_ids = self._client_ids
        member_open = self._member_open
        expired = 0
        for order in book.orders:
            if order.status is OPEN:
                if order.gtc:
                    carried.append(order)
                    continue
                order.status = EXPIRED
                del member_open[order.member][order.order_id]
                expired += 1
            del orders[order.order_id]
            if order.client_id is not None:
                client_ids.pop((order.member, order.client_id), None)
        self._open_count -= expired

    def _rest(self, book, order, carried=False):
        price = order.price_micro_per_kwh
        if order.is_buy:
            levels, keys, key = book.bids, book.bid_keys, price
        else:
            levels, keys, key = book.asks, book.ask_keys, -price
        level = levels.get(price)
        if level is None:
            level = levels[price] = deque()
            insort(keys, key)
        level.append(order)
        if carried:
            return
        mine = self._member_open.get(order.member)
        if mine is None:
            mine = self._member_open[order.member] = {}
        mine[order.order_id] = order
        self._open_count += 1

    def _unrest(self, book, order):
        price = order.price_micro_per_kwh
        if order.is_buy:
            levels, keys, key = book.bids, book.bid_keys, price
        else:
            levels, keys, key = book.asks, book.ask_keys, -price
        level = levels[price]
        level.remove(order)
        if not level:
            del levels[price]
            del keys[bisect_left(keys, key)]

    def _finish(self, order, status):
        """Leave the open set; the caller has taken it out of its level (or never put it in)."""
        was_open = order.status == OPEN
        order.status = status
        mine = self._member_open.get(order.member)
        if was_open and mine is not None and mine.pop(order.order_id, None) is not None:
            self._open_count -= 1

    def _match(self, book, order, trades):
        """Fill `order` against the other side while fills are executable; True if STP stopped it.

        Resting counterparts that fill completely or are cancelled by self-trade prevention are
        marked here and removed from their level at the end of the level's pass.
        """
        port = self._port
        balance_wh = port.balance_wh
        cap_wh = port.cap_wh
        settle = port.settle_trade
        member = order.member
        order_id = order.order_id
        limit = order.price_micro_per_kwh
        is_buy = order.is_buy
        if is_buy:
            keys, levels, sign = book.ask_keys, book.asks, -1
        else:
            keys, levels, sign = book.bid_keys, book.bids, 1
        stp = False
        i = len(keys) - 1
        while i >= 0 and order.remaining_wh:
            price = keys[i] * sign
            if (price > limit) if is_buy else (price < limit):
                break
            level = levels[price]
            stop = False
            dirty = False
            try:
                for other in level:
                    other_wh = other.remaining_wh
                    if not other_wh or other.status is not OPEN:
                        dirty = True
                        continue
                    if other.member == member:
                        if other.order_id > order_id:
                            dirty = True
                            self._finish(other, CANCELLED)
                            continue
                        stp = stop = True
                        self._finish(order, CANCELLED)
                        break
                    if is_buy:
                        buyer = member
                        seller = other.member
                    else:
                        buyer = other.member
                        seller = member
                    room_wh = cap_wh(buyer) - balance_wh(buyer)
                    if room_wh <= 0:
                        if is_buy:
                            stop = True
                            break
                        continue
                    cover_wh = balance_wh(seller)
                    if cover_wh <= 0:
                        if is_buy:
                            continue
                        stop = True
                        break
                    qty_wh = order.remaining_wh
                    if other_wh < qty_wh:
                        qty_wh = other_wh
                    if room_wh < qty_wh:
                        qty_wh = room_wh
                    if cover_wh < qty_wh:
                        qty_wh = cover_wh
                    maker = other if other.order_id < order_id else order
                    trade_price = maker.price_micro_per_kwh
                    trade_id = self._next_trade_id
                    if is_buy:
                        trade = Trade(trade_id, book.interval_start_s, buyer, seller, qty_wh,
                                      trade_price, order_id, other.order_id, maker.order_id)
                    else:
                        trade = Trade(trade_id, book.interval_start_s, buyer, seller, qty_wh,
                                      trade_price, other.order_id, order_id, maker.order_id)
                    settle(trade)
                    # Settled: only now does the book change, so book and ledger agree per fill.
                    self._next_trade_id = trade_id + 1
                    trades.append(trade)
                    book.volume_wh += qty_wh
                    book.price_volume += qty_wh * trade_price
                    book.trade_count += 1
                    order.remaining_wh -= qty_wh
                    other.remaining_wh = other_wh - qty_wh
                    if other_wh == qty_wh:
                        dirty = True
                        self._finish(other, FILLED)
                    if not order.remaining_wh:
                        break
            finally:
                if dirty:
                    self._clean_level(level, levels, keys, price, sign, i)
            if stop:
                break
            i -= 1
        return stp

    @staticmethod
    def _clean_level(level, levels, keys, price, sign, index):
        while level and level[0].status is not OPEN:
            level.popleft()
        if not level:
            del levels[price]
            del keys[index]
            return
        if any(o.status is not OPEN for o in level):
            live = [o for o in level if o.status is OPEN]
            level.clear()
            level.extend(live)

    def _after_trades(self, trades):
        # A buyer gained energy: only their asks can have become executable (more cover).
        # A seller lost energy: only their bids can have (more cap room).
        pending = []
        for trade in trades:
            pending.append((trade.buyer, False))
            pending.append((trade.seller, True))
        self._sweep(pending, trades)

    def _sweep(self, pending, trades):
        """Re-match resting orders of members whose balance moved, until nothing is executable.

        `pending` holds (member, side_is_buy) pairs: which of a member's sides to re-check.
        Terminates: every match either settles a fill (finite Wh) or finds nothing to do.
        """
        pending = list(dict.fromkeys(pending))
        books = self._books
        while pending:
            member, side_is_buy = pending.pop()
            mine = self._member_open.get(member)
            if not mine:
                continue
            candidates = []
            for order in mine.values():
                if order.is_buy is not side_is_buy:
                    continue
                book = books[order.interval_start_s]
                if side_is_buy:
                    if book.ask_keys and -book.ask_keys[-1] <= order.price_micro_per_kwh:
                        candidates.append(order)
                elif book.bid_keys and book.bid_keys[-1] >= order.price_micro_per_kwh:
                    candidates.append(order)
            if len(candidates) > 1:
                candidates.sort(key=lambda o: o.order_id)
            for order in candidates:
                if order.status is not OPEN:
                    continue
                book = books[order.interval_start_s]
                new = []
                try:
                    self._match(book, order, new)
                finally:
                    if order.status is not OPEN or not order.remaining_wh:
                        self._unrest_dead(book, order)
                    trades.extend(new)
                for trade in new:
                    pending.append((trade.buyer, False))
                    pending.append((trade.seller, True))

    def _unrest_dead(self, book, order):
        """A resting order that filled or was cancelled while it was the matching side."""
        price = order.price_micro_per_kwh
        levels = book.bids if order.is_buy else book.asks
        level = levels.get(price)
        if level is not None and order in level:
            self._unrest(book, order)
        if order.status == OPEN:
            order.remaining_wh = 0
            self._finish(order, FILLED)
