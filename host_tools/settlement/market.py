"""The community market inside the settlement service: exchange, agents, reference price.

What happens per interval, driven by the ingest's event-time clock (never the wall clock):

1. The ingest decides that interval N is ready to close (its watermark passed N's end).
2. The ledger books N's energy (`Ledger.settle_energy`: mint, burn) and commits, so N's
   production is in the members' balances — above their caps, too (ECONOMICS §2).
3. `Market.close_interval(N)` runs: resting orders whose owners' balances moved execute; every
   member who opted in through the API (`host_tools.api.store.agent_configs`) gets a
   budget-constrained ZI-C agent (ECONOMICS §5) that acts once for delivery interval N — a
   member above the agent's upper threshold, or above the cap, asks for the excess — then the
   book's interval N closes (orders expire, good-till-cancelled ones move on) and its reference
   price — volume-weighted, or the previous one carried over — is recorded and published
   retained at QoS1 on `energo/v1/<community>/price` as `{"interval_start_s",
   "price_micro_per_kwh", "volume_wh", "trade_count", "carried"}`.
4. The ledger closes N (`Ledger.settle_interval`: what is still above a cap is sold to the grid,
   the storage fee, the checkpoint); afterwards `Market.after_settle(N)` tells the book whose
   balances moved, so resting orders that became executable (new cover, new cap room) execute.
So energy above a cap is offered on the market first and only the unsold rest is fed in.

Every fill is one atomic, idempotent ledger transfer (`settlement.port.LedgerPort`); the agents
of an interval act inside one `Ledger.batch()`, so their fills commit together while each
stays its own transfer (a refused fill rolls back alone).

Decisions:
* The reference price is recorded in a table of its own, `market_reference_prices`, in the
  ledger's database (versioned under the meta key `market_schema_version`), not only in the
  exchange's memory: it must survive a restart (the last price is carried over across it), the
  EV sessions and the API read it, and it is derived data, so it is not a ledger transfer.
  A recorded interval is never recomputed: closing it again returns the stored row.
* Agents are seeded per member and per interval (`derive_seed(seed, "interval:N")`, then per
  member inside `AgentRunner`), so the orders of an interval depend only on the seed, the
  settings, the balances and the book — a replay or a restart draws the same prices.
* The exchange's ids continue after the last trade booked in the ledger, so a restarted service
  never reuses a trade id (`trade:<id>` is the ledger's idempotency key).
* SQLite connections belong to one thread, so in the service the market lives on the exchange's
  own thread (`MarketWorker`, built on the API's `ExchangeWorker`); the HTTP API and the ingest
  both reach it through the same gate.

Known limit: a batch's fills are reported to the book before its commit; if the commit itself
fails (the disk, not a rule), the book holds fills the ledger does not, until a restart rebuilds
the exchange from the ledger.
"""
import json
import random
import re

from host_tools.exchange.agents import AgentRunner, derive_seed
from host_tools.exchange.book import Exchange, ExchangeConfig
from host_tools.exchange.port import SettlementError
from host_tools.settlement import rules
from host_tools.settlement.errors import LedgerError, SchemaError
from host_tools.settlement.ingest import CLOSES_PER_BATCH_MAX, Ingest
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.port import LedgerPort

MARKET_SCHEMA_VERSION = 1
PRICE_TOPIC_SUFFIX = "price"
PRICE_QOS = 1
# A close that lags this far behind the exchange is done in chunks the engine accepts.
_CLOSE_CHUNK_INTERVALS = 35_000
# The ingest settles an interval without the market after this many failed market runs, so a
# broken market can delay settlement but never stop it.
MARKET_ATTEMPTS_MAX = 3
_COMMUNITY = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

_TABLES = [
    """CREATE TABLE IF NOT EXISTS market_reference_prices (
        interval_start_s BIGINT PRIMARY KEY CHECK (interval_start_s >= 0),
        price_micro_per_kwh BIGINT NOT NULL CHECK (price_micro_per_kwh > 0),
        volume_wh BIGINT NOT NULL CHECK (volume_wh >= 0),
        trade_count BIGINT NOT NULL CHECK (trade_count >= 0),
        carried INTEGER NOT NULL CHECK (carried IN (0, 1)),
        agent_count INTEGER NOT NULL CHECK (agent_count >= 0),
        agent_order_count INTEGER NOT NULL CHECK (agent_order_count >= 0),
        recorded_at_ms BIGINT NOT NULL)""",
]
_COLUMNS = ("interval_start_s, price_micro_per_kwh, volume_wh, trade_count, carried, agent_count,"
            " agent_order_count")


class MarketError(ValueError):
    """A request the market refuses (bad interval, bad configuration); nothing changed."""


class MarketConfig:
    """The service's market settings; `exchange` limits come from `ExchangeConfig`."""

    __slots__ = ("seed", "exchange", "allow_receivable", "agents_max", "call_timeout_s")

    def __init__(self, seed=0, exchange=None, allow_receivable=True, agents_max=100_000,
                 call_timeout_s=120.0):
        if type(seed) is not int:
            raise MarketError("seed must be an integer")
        if exchange is not None and not isinstance(exchange, ExchangeConfig):
            raise MarketError("exchange must be an ExchangeConfig")
        if type(allow_receivable) is not bool:
            raise MarketError("allow_receivable must be a boolean")
        if type(agents_max) is not int or agents_max <= 0:
            raise MarketError("agents_max must be a positive integer")
        if isinstance(call_timeout_s, bool) or not isinstance(call_timeout_s, int | float) or (
                not 0 < call_timeout_s <= 3600):
            raise MarketError("call_timeout_s must be within (0, 3600]")
        self.seed = seed
        self.exchange = exchange
        self.allow_receivable = allow_receivable
        self.agents_max = agents_max
        self.call_timeout_s = call_timeout_s


def price_topic(community):
    return f"energo/v1/{community}/{PRICE_TOPIC_SUFFIX}"


def price_payload(row):
    """The retained message for a recorded price row (a dict from `reference_price`)."""
    return json.dumps({"interval_start_s": row["interval_start_s"],
                       "price_micro_per_kwh": row["price_micro_per_kwh"],
                       "volume_wh": row["volume_wh"], "trade_count": row["trade_count"],
                       "carried": row["carried"]}, separators=(",", ":"), sort_keys=True).encode()


# --- the price record (readable by anyone holding a ledger connection) --------------------------

def ensure_tables(db):
    """Create the market's table on first use; refuse one written by a newer version."""
    with db.transaction():
        for statement in _TABLES:
            db.execute(statement)
        version = db.get_meta("market_schema_version")
        if version is None:
            db.set_meta("market_schema_version", str(MARKET_SCHEMA_VERSION))
        elif version != str(MARKET_SCHEMA_VERSION):
            raise SchemaError(f"market tables have version {version}; this code knows "
                              f"{MARKET_SCHEMA_VERSION}")


def _row_dict(row):
    """Read back and check a stored row: a hand-edited row must not reach a charger unchecked."""
    names = [name.strip() for name in _COLUMNS.split(",")]
    values = dict(zip(names, row, strict=True))
    for name in names:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"market price row has a bad {name}: {value!r}")
    if values["price_micro_per_kwh"] <= 0 or values["carried"] not in (0, 1):
        raise SchemaError(f"market price row of {values['interval_start_s']} is inconsistent")
    values["carried"] = bool(values["carried"])
    if values["carried"] != (values["volume_wh"] == 0):
        raise SchemaError(f"market price row of {values['interval_start_s']}: carried must mean "
                          "no volume")
    return values


def reference_price(db, interval_start_s):
    """The recorded reference price of one interval as a dict, or None."""
    row = db.one(f"SELECT {_COLUMNS} FROM market_reference_prices WHERE interval_start_s = ?",
                 (interval_start_s,))
    return None if row is None else _row_dict(row)


def latest_reference_price(db):
    """The most recent recorded reference price (what a charger should charge now), or None."""
    row = db.one(f"SELECT {_COLUMNS} FROM market_reference_prices "
                 "ORDER BY interval_start_s DESC LIMIT 1")
    return None if row is None else _row_dict(row)


def reference_prices(db, before_s=None, limit=96):
    """Recorded prices, newest first, at most `limit` (≤ 10 000), optionally before an interval."""
    if type(limit) is not int or not 0 < limit <= 10_000:
        raise MarketError("limit must be an integer in 1..10000")
    if before_s is not None and (type(before_s) is not int or before_s < 0):
        raise MarketError("before_s must be a non-negative integer")
    if before_s is None:
        rows = db.all(f"SELECT {_COLUMNS} FROM market_reference_prices "
                      "ORDER BY interval_start_s DESC LIMIT ?", (limit,))
    else:
        rows = db.all(f"SELECT {_COLUMNS} FROM market_reference_prices WHERE interval_start_s < ? "
                      "ORDER BY interval_start_s DESC LIMIT ?", (before_s, limit))
    return [_row_dict(row) for row in rows]


def _last_trade_ids(db):
    """(trade id, highest order id) of the last trade the ledger booked, or (0, 0)."""
    row = db.one("SELECT transfer_id, meta FROM transfers WHERE kind = 'trade' "
                 "ORDER BY first_seq DESC LIMIT 1")
    if row is None:
        return 0, 0
    prefix, _, number = row[0].partition(":")
    if prefix != "trade" or not number.isdigit():
        raise SchemaError(f"the last trade transfer has an unexpected id {row[0]!r}")
    meta = json.loads(row[1])
    order_ids = [meta.get("buy_order_id"), meta.get("sell_order_id")]
    highest = max((int(v) for v in order_ids if isinstance(v, str) and v.isdigit()), default=0)
    return int(number), highest


# --- the market ---------------------------------------------------------------------------------

class Market:
    """Exchange + ledger port + agents + price record over one ledger connection.

    Single-threaded like the exchange: in the service every call goes through `MarketWorker`.
    `publish(topic, payload_bytes)` must publish retained at QoS1; a failure to publish is
    counted, never raised (the price is recorded and the next close publishes again).
    """

    def __init__(self, ledger, community, publish=None, config=None):
        if not isinstance(ledger, Ledger):
            raise MarketError("Market needs a Ledger")
        if not isinstance(community, str) or not _COMMUNITY.match(community):
            raise MarketError(f"invalid community name {community!r}")
        if publish is not None and not callable(publish):
            raise MarketError("publish must be callable")
        self.config = config or MarketConfig()
        if not isinstance(self.config, MarketConfig):
            raise MarketError("config must be a MarketConfig")
        from host_tools.api import store as api_store

        self._api_store = api_store
        self.ledger = ledger
        self.community = community
        self.topic = price_topic(community)
        self._publish = publish
        self.port = LedgerPort(ledger, allow_receivable=self.config.allow_receivable)
        db = ledger.db
        ensure_tables(db)
        api_store.ensure_tables(db)  # agent settings live in the API's table
        self.interval_s = ledger.config.interval_s
        latest = latest_reference_price(db)
        exchange_config = self._exchange_config(latest)
        last_trade_id, last_order_id = _last_trade_ids(db)
        self.exchange = Exchange(self.port, exchange_config,
                                 first_interval_start_s=self._first_interval(latest),
                                 first_order_id=last_order_id + 1,
                                 first_trade_id=last_trade_id + 1)
        self.counts = {"intervals": 0, "replays": 0, "agent_orders": 0, "agent_refusals": 0,
                       "agent_ledger_refusals": 0, "agent_trades": 0, "publish_failures": 0,
                       "settings_refused": 0}
        self.last_error = None

    def _exchange_config(self, latest):
        """The configured exchange limits, with the last recorded price carried over."""
        base = self.config.exchange or ExchangeConfig(interval_s=self.interval_s)
        if base.interval_s != self.interval_s:
            raise MarketError(f"exchange interval_s {base.interval_s} differs from the ledger's "
                              f"{self.interval_s}")
        if latest is None or latest["price_micro_per_kwh"] > base.price_micro_per_kwh_max:
            return base
        values = {name: getattr(base, name) for name in ExchangeConfig.__slots__}
        values["initial_price_micro_per_kwh"] = latest["price_micro_per_kwh"]
        return ExchangeConfig(**values)

    def _first_interval(self, latest):
        """The first interval the book accepts orders for.

        The ledger's first open interval when it has closed one; else the interval after the
        last recorded price; else the first interval the ingest holds energy for; else the
        ledger clock's interval (a brand-new community).
        """
        next_open = self.ledger.next_open_interval()
        if next_open is not None:
            return next_open
        if latest is not None:
            return latest["interval_start_s"] + self.interval_s
        db = self.ledger.db
        row = None
        if db.get_meta("ingest_schema_version") is not None:
            row = db.one("SELECT MIN(interval_start_s) FROM ingest_open_energy")
        if row is not None and row[0] is not None:
            return row[0]
        return rules.interval_start_of(self.ledger.clock_ms() // 1000, self.interval_s)

    # --- the per-interval steps --------------------------------------------------------------

    def close_interval(self, interval_start_s):
        """Agents act for N, the book closes N, the price is recorded and published.

        Returns a dict describing the interval (the recorded price plus what the agents did).
        Closing an interval that is already recorded returns the stored price (`replayed`).
        """
        if type(interval_start_s) is not int or interval_start_s < 0 or (
                interval_start_s % self.interval_s):
            raise MarketError(f"interval start must be a non-negative integer aligned to "
                              f"{self.interval_s} s, got {interval_start_s!r}")
        db = self.ledger.db
        stored = reference_price(db, interval_start_s)
        if stored is not None:
            self.counts["replays"] += 1
            return dict(stored, replayed=True, agent_trades=0)
        exchange = self.exchange
        step = self.interval_s
        if interval_start_s < exchange.open_from_s and exchange.pristine:
            # The service started before any data and guessed its first interval from the wall
            # clock; event time says otherwise, and nobody has traded yet: start the book here.
            exchange.rebase(interval_start_s)
        if interval_start_s < exchange.open_from_s:
            # Before this book's first interval (a service that started behind event time): no
            # order could exist for it, so its price is the carried one.
            row = self._record([_Carried(interval_start_s,
                                         exchange.last_reference_price_micro_per_kwh)], 0, 0)
            self._publish_row(row)
            return dict(row, replayed=False, agent_trades=0)
        # Catch up, in chunks the engine accepts, on intervals nobody closed (a long outage).
        while exchange.open_from_s < interval_start_s:
            upto = min(interval_start_s - step,
                       exchange.open_from_s + (_CLOSE_CHUNK_INTERVALS - 1) * step)
            closed, _ = exchange.close_interval(upto)
            self._record(closed, 0, 0)
        self._sweep_booked_energy()
        agent_count, orders, trades = self._run_agents(interval_start_s)
        closed, _ = exchange.close_interval(interval_start_s)
        row = self._record(closed, agent_count, orders)
        self.counts["intervals"] += 1
        self._publish_row(row)
        return dict(row, replayed=False, agent_trades=trades)

    def before_settle(self, interval_start_s):
        """`MarketIngest`'s hook when the market runs on the ingest's thread: `close_interval`."""
        return self.close_interval(interval_start_s)

    def after_settle(self, interval_start_s):
        """The ledger settled N (mint, burn, cap): re-run resting orders whose owners' balances
        moved. Returns the trades that became executable."""
        exchange = self.exchange
        trades = []
        for member in self.ledger.member_names():
            if exchange.open_orders(member):
                trades.extend(exchange.on_balance_change(member))
        return trades

    def publish_latest(self):
        """Publish the latest recorded price again (at start-up: a broker may have lost it)."""
        row = latest_reference_price(self.ledger.db)
        if row is not None:
            self._publish_row(row)
        return row

    # --- internals ---------------------------------------------------------------------------

    def agent_configs(self):
        """Opted-in members' settings. A stored row that no longer validates is skipped and
        counted, so one bad row never stops the other members' agents."""
        store = self._api_store
        db = self.ledger.db
        try:
            return store.agent_configs(db)
        except store.StoreError:
            pass
        configs = []
        for (member,) in db.all("SELECT member FROM api_agent_settings ORDER BY member"):
            try:
                settings = store.get_agent_settings(db, member)
            except store.StoreError as exc:
                self.counts["settings_refused"] += 1
                self.last_error = str(exc)[:300]
                continue
            if settings is not None and settings["enabled"]:
                configs.append(store.agent_config(member, settings))
        return configs

    def _sweep_booked_energy(self):
        """N's energy may be booked already (`Ledger.settle_energy`): resting orders it made
        executable run now, before the agents act. A refused fill hits only that member."""
        exchange = self.exchange
        with self.ledger.batch():
            for member in self.ledger.member_names():
                if not exchange.open_orders(member):
                    continue
                try:
                    exchange.on_balance_change(member)
                except (LedgerError, SettlementError) as exc:
                    self.counts["agent_ledger_refusals"] += 1
                    self.last_error = f"{member}: {str(exc)[:250]}"

    def _run_agents(self, interval_start_s):
        """Each opted-in member's agent acts once, in a seeded order. Returns (agents, orders,
        trades). A ledger refusal hits only that member's order."""
        runner = AgentRunner(derive_seed(self.config.seed, f"interval:{interval_start_s}"),
                             agents_max=self.config.agents_max)
        for agent_config in self.agent_configs()[:self.config.agents_max]:
            runner.opt_in(agent_config)
        members = runner.members()
        # A seeded order per interval, so no member is always first to the book.
        random.Random(derive_seed(self.config.seed, f"order:{interval_start_s}")).shuffle(members)
        port = self.port
        exchange = self.exchange
        orders = trades = 0
        with self.ledger.batch():
            for member in members:
                if not port.has_member(member):
                    continue
                agent = runner.agent(member)
                refused_before = agent.refused_count
                try:
                    acks = agent.act(exchange, port, interval_start_s)
                except (LedgerError, SettlementError) as exc:
                    self.counts["agent_ledger_refusals"] += 1
                    self.last_error = f"{member}: {str(exc)[:250]}"
                    continue
                self.counts["agent_refusals"] += agent.refused_count - refused_before
                orders += len(acks)
                trades += sum(len(ack.trades) for ack in acks)
        self.counts["agent_orders"] += orders
        self.counts["agent_trades"] += trades
        return len(members), orders, trades

    def _record(self, closed, agent_count, agent_order_count):
        """Store each closed interval's price (an existing row wins); return the last as dict."""
        db = self.ledger.db
        at_ms = self.ledger.clock_ms()
        last = None
        with db.transaction():
            for ref in closed:
                if ref is not closed[-1]:
                    counts = (0, 0)
                else:
                    counts = (agent_count, agent_order_count)
                db.execute(
                    "INSERT INTO market_reference_prices (interval_start_s, price_micro_per_kwh, "
                    "volume_wh, trade_count, carried, agent_count, agent_order_count, "
                    "recorded_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (interval_start_s) DO NOTHING",
                    (ref.interval_start_s, ref.price_micro_per_kwh, ref.volume_wh,
                     ref.trade_count, int(ref.carried), *counts, at_ms))
                last = ref.interval_start_s
        return reference_price(db, last)

    def _publish_row(self, row):
        if self._publish is None:
            return
        try:
            self._publish(self.topic, price_payload(row))
        except Exception as exc:  # noqa: BLE001 - a broker problem must not stop settlement
            self.counts["publish_failures"] += 1
            self.last_error = f"publish: {type(exc).__name__}: {str(exc)[:200]}"


class _Carried:
    """A carried-over price for an interval the book never held."""

    __slots__ = ("interval_start_s", "price_micro_per_kwh", "volume_wh", "trade_count", "carried")

    def __init__(self, interval_start_s, price):
        self.interval_start_s = interval_start_s
        self.price_micro_per_kwh = price
        self.volume_wh = 0
        self.trade_count = 0
        self.carried = True


# --- the service's wiring -----------------------------------------------------------------------

class MarketWorker:
    """The market on the exchange's own thread; `gate` is what the HTTP API is given.

    `before_settle` and `after_settle` are what `MarketIngest` calls; both wait for the result
    (up to `config.call_timeout_s`).
    """

    def __init__(self, db_url, community, publish=None, config=None, key_path=None):
        from host_tools.api.gate import ExchangeWorker

        self.config = config or MarketConfig()
        self._market = None

        def build():
            ledger = Ledger.open(db_url, key_path=key_path)
            try:
                self._market = Market(ledger, community, publish, self.config)
            except BaseException:
                ledger.close()
                raise
            return self._market.exchange

        self.gate = ExchangeWorker(build)

    def call(self, fn):
        """Run `fn(market)` on the market's thread."""
        return self.gate.call(lambda _exchange: fn(self._market),
                              timeout_s=self.config.call_timeout_s)

    def before_settle(self, interval_start_s):
        return self.call(lambda market: market.close_interval(interval_start_s))

    def after_settle(self, interval_start_s):
        return self.call(lambda market: len(market.after_settle(interval_start_s)))

    def publish_latest(self):
        return self.call(lambda market: market.publish_latest())

    def counts(self):
        return self.call(lambda market: dict(market.counts))

    def close(self):
        try:
            self.call(lambda market: market.ledger.close())
        except Exception:  # noqa: BLE001 - the thread may already be gone; closing anyway
            pass
        self.gate.close()


class MarketIngest(Ingest):
    """`Ingest` that lets the market act before the ledger settles each interval.

    Interim hook: it reuses `Ingest`'s closing (`_close_intervals`) one interval at a time by
    capping the watermark, because the market must run outside the ingest's transaction (it
    writes through another connection). `market` is anything with `before_settle(N)` and
    `after_settle(N)`: a `MarketWorker` in the service, a `Market` in single-thread use.
    """

    def __init__(self, ledger, registry, community, grace_s=None, market=None):
        super().__init__(ledger, registry, community, grace_s=grace_s)
        if market is None or not callable(getattr(market, "before_settle", None)):
            raise MarketError("MarketIngest needs a market with before_settle/after_settle")
        self.market = market
        self._watermark_cap_s = None
        self._market_attempts = {}
        self.counts["market_failures"] = 0
        self.last_market_error = None

    def watermark_s(self):
        watermark = super().watermark_s()
        cap = self._watermark_cap_s
        return watermark if cap is None or watermark is None else min(watermark, cap)

    def _ready_interval(self):
        """The next interval the ingest would close now (same rule as `Ingest`), or None."""
        watermark = super().watermark_s()
        if watermark is None:
            return None
        start = self.ledger.next_open_interval()
        if start is None:
            row = self.db.one("SELECT MIN(interval_start_s) FROM ingest_open_energy")
            if row is None or row[0] is None:
                return None
            start = row[0]
        return start if start + self.interval_s <= watermark else None

    def _close_intervals(self, stats):
        for _ in range(CLOSES_PER_BATCH_MAX):
            start = self._ready_interval()
            if start is None:
                return
            if not self._settle_energy(start, stats) or not self._run_market(start, stats):
                return
            closed_before = stats["intervals_closed"]
            self._watermark_cap_s = start + self.interval_s
            try:
                super()._close_intervals(stats)
            finally:
                self._watermark_cap_s = None
            if stats["intervals_closed"] == closed_before:
                return  # the ledger refused; Ingest counted it and the next batch retries
            self._market_attempts.pop(start, None)
            try:
                self.market.after_settle(start)
            except Exception as exc:  # noqa: BLE001 - resting orders wait for the next change
                self._market_failed(stats, exc)

    def _settle_energy(self, start, stats):
        """Book N's energy before the market runs (ECONOMICS §2); True when it is booked.

        The same input `Ingest` settles N with, so its `settle_interval` then only books what
        arrived in between and applies the cap and the fee. A refusal is retried next batch.
        """
        metered = {member: (import_wh, export_wh) for member, import_wh, export_wh in self.db.all(
            "SELECT member, import_wh, export_wh FROM ingest_open_energy "
            "WHERE interval_start_s = ?", (start,))}
        try:
            self.ledger.settle_energy(start, metered)
        except (LedgerError, *self.db.errors) as exc:
            stats["close_failures"] += 1
            self.last_close_error = str(exc)[:300]
            return False
        return True

    def _run_market(self, start, stats):
        """True when the interval may be settled now."""
        try:
            self.market.before_settle(start)
            return True
        except Exception as exc:  # noqa: BLE001 - any market failure is retried, then skipped
            self._market_failed(stats, exc)
            attempts = self._market_attempts.get(start, 0) + 1
            self._market_attempts = {start: attempts}
            # Settlement must not wait forever on a broken market: give up after a few tries.
            return attempts >= MARKET_ATTEMPTS_MAX

    def _market_failed(self, stats, exc):
        stats.setdefault("market_failures", 0)
        stats["market_failures"] += 1
        self.last_market_error = f"{type(exc).__name__}: {str(exc)[:300]}"
