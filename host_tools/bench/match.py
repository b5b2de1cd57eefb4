"""Matching-engine throughput on a seeded ZI-C order stream, alone and settling on the ledger.

Figures (one JSON object): `orders_per_s` is the engine over an in-memory port;
`orders_per_s_with_ledger` is the same engine settling every fill as its own atomic, idempotent
transfer of the real double-entry ledger on SQLite (`settlement.port.LedgerPort`), the way the
market runs an interval's agents: inside one `Ledger.batch()` per interval, so each fill is
checked before it writes (a refused fill leaves nothing behind) and the interval's fills commit
together. It runs over the first `--ledger-orders` orders of the stream, with
`orders_per_s_engine_same_orders` as its baseline. `orders_per_s_with_ledger_commit_per_trade`
is the same run committing every fill on its own (an API order placed outside a batch).
`orders_per_s_with_trade_journal` keeps the old figure (engine + batched append-only trade
journal). The `ledger_*` keys locate the ledger's cost: time per trade, SQL statements per
trade, reads per order; `orders_per_cpu_s_with_ledger` is the batched run per second of this
process's CPU time, which a machine busy with other work does not depress. With
`--postgres-url` the batched run is repeated on that (empty) PostgreSQL database.
"""
import os
import random
import tempfile
import time

from host_tools.exchange.agents import draw_ask_price, draw_bid_price
from host_tools.exchange.book import BUY, SELL, Exchange, ExchangeConfig
from host_tools.exchange.port import MemoryPort
from host_tools.exchange.store import PersistingPort, SqliteTradeStore

TARGET_ORDERS_PER_S_WITH_LEDGER = 20_000

NAME = "match"

_INTERVAL_S = 900
_FLOOR = 20_000
_CEILING = 400_000
_CAP_WH = 1_000_000_000
# Agents quote in whole ticks of 0.001 currency units per kWh, as a member app would offer.
_TICK = 1_000


def add_arguments(parser):
    parser.add_argument("--orders", type=int, default=200_000, help="orders in the stream")
    parser.add_argument("--members", type=int, default=5_000,
                        help="members; each acts once per interval, as the agents do")
    parser.add_argument("--seed", type=int, default=1, help="seed of the order stream")
    parser.add_argument("--batch", type=int, default=1_000,
                        help="trades per SQLite transaction in the trade-journal run")
    parser.add_argument("--ledger-orders", type=int, default=50_000,
                        help="orders (a prefix of the stream) in the runs on the real ledger")
    parser.add_argument("--postgres-url", default=None,
                        help="also run the ledger on this empty PostgreSQL database")


def _validate(args):
    from host_tools.cli import UsageError

    for name, low, high in (("orders", 1, 10_000_000), ("members", 2, 1_000_000),
                            ("batch", 1, 1_000_000), ("ledger_orders", 1, 10_000_000)):
        value = getattr(args, name)
        if not low <= value <= high:
            flag = name.replace("_", "-")
            raise UsageError(f"--{flag} must be within {low}..{high}, got {value}")
    url = args.postgres_url
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise UsageError("--postgres-url must be a postgresql:// URL")


def make_stream(orders, members, seed):
    """A reproducible list of (member, side, qty_wh, price, interval_start_s).

    Every interval each member's agent acts once, in random order: prosumers with surplus ask in
    [target sell, ceiling], consumers bid in [floor, target buy] (ZI-C). Targets are drawn per
    member around a common value, so the book both trades and keeps a resting depth.
    """
    rng = random.Random(seed)
    names = [f"m{i:06d}" for i in range(members)]
    targets = []
    for _ in names:
        target_buy = rng.randint(120_000, 200_000)
        target_sell = rng.randint(100_000, 180_000)
        targets.append((target_buy, target_sell))
    stream = []
    interval = 0
    while len(stream) < orders:
        order = list(range(members))
        rng.shuffle(order)
        for index in order:
            target_buy, target_sell = targets[index]
            qty_wh = rng.randint(50, 2_000)
            if rng.random() < 0.5:
                price = draw_ask_price(rng, target_sell // _TICK, _CEILING // _TICK) * _TICK
                stream.append((names[index], SELL, qty_wh, price, interval))
            else:
                price = draw_bid_price(rng, _FLOOR // _TICK, target_buy // _TICK) * _TICK
                stream.append((names[index], BUY, qty_wh, price, interval))
            if len(stream) == orders:
                break
        interval += _INTERVAL_S
    return names, stream


def _new_port(names):
    port = MemoryPort()
    for name in names:
        port.add_member(name, cap_wh=_CAP_WH, balance_wh=_CAP_WH // 2)
    return port


def _run(exchange, stream, latencies=None, flush=None, interval_done=None):
    submit = exchange.submit
    close = exchange.close_interval
    current = stream[0][4]
    trades = 0
    clock = time.perf_counter_ns
    for member, side, qty_wh, price, interval in stream:
        if interval != current:
            close(current)
            if flush is not None:
                flush()
            if interval_done is not None:
                interval_done()
            current = interval
        if latencies is None:
            trades += len(submit(member, side, qty_wh, price, interval).trades)
        else:
            start = clock()
            trades += len(submit(member, side, qty_wh, price, interval).trades)
            latencies.append(clock() - start)
    if flush is not None:
        flush()
    if interval_done is not None:
        interval_done()
    return trades


class _TimedPort:
    """LedgerPort with its time measured: fills (`settle_trade`, a write transaction each) and
    the engine's reads (member, balance, cap: SELECTs on every order and every match)."""

    def __init__(self, inner):
        self.inner = inner
        self.money_micro = inner.money_micro
        self.settle_ns = 0
        self.read_ns = 0
        self.trades = 0
        self.settle_statements = 0
        self.settle_savepoints = 0
        self.counter = None
        self.db = None
        self.cpu_s = 0.0

    def _read(self, fn, member):
        start = time.perf_counter_ns()
        try:
            return fn(member)
        finally:
            self.read_ns += time.perf_counter_ns() - start

    def has_member(self, member):
        return self._read(self.inner.has_member, member)

    def balance_wh(self, member):
        return self._read(self.inner.balance_wh, member)

    def cap_wh(self, member):
        return self._read(self.inner.cap_wh, member)

    def settle_trade(self, trade):
        before = self.counter["statements"] if self.counter else 0
        savepoints_before = self.db.savepoint_count if self.db else 0
        start = time.perf_counter_ns()
        try:
            return self.inner.settle_trade(trade)
        finally:
            self.settle_ns += time.perf_counter_ns() - start
            self.trades += 1
            if self.counter:
                self.settle_statements += self.counter["statements"] - before
            if self.db:
                self.settle_savepoints += self.db.savepoint_count - savepoints_before


def _open_ledger(directory, names, url=None):
    """A ledger whose members hold half their cap, like `_new_port`, built in one transaction."""
    from host_tools.settlement.config import SettlementConfig
    from host_tools.settlement.ledger import Ledger

    # Caps of _CAP_WH: Bmax and TSL × quota both reach it; the TSL grants fit the fixed supply.
    grant_tsl = 1_000_000_000 // (2 * len(names))
    config = SettlementConfig(bmax_wh=_CAP_WH, tsl_new_member_grant=grant_tsl,
                              quota_wh_per_tsl=-(-_CAP_WH // grant_tsl), storage_fee_ppm=0)
    start_s = 1_800_000_000 - 1_800_000_000 % _INTERVAL_S
    if url is not None:
        from host_tools.settlement.store import Database

        probe = Database(url)
        try:
            if probe.one("SELECT to_regclass('public.meta')")[0] is not None:
                raise RuntimeError("--postgres-url must name an empty database")
        finally:
            probe.close()
    ledger = Ledger.open(url or f"sqlite:///{os.path.join(directory, 'ledger.sqlite')}",
                         config=config, key_path=os.path.join(directory, "service-key.pem"),
                         clock_ms=lambda: start_s * 1000)
    with ledger.db.transaction():
        for name in names:
            ledger.add_member(name, at_s=start_s)
    ledger.settle_interval(start_s, {name: (0, _CAP_WH // 2) for name in names})
    return ledger, start_s + _INTERVAL_S


def _count_statements(db):
    """Count SQL statements through the adapter (`execute` and `executemany` calls)."""
    counter = {"statements": 0}
    execute = db.execute
    executemany = db.executemany

    def counting(sql, params=()):
        counter["statements"] += 1
        return execute(sql, params)

    def counting_many(sql, rows):
        counter["statements"] += 1
        return executemany(sql, rows)

    db.execute = counting
    db.executemany = counting_many
    return counter


def _ledger_run(names, stream, config, batched, url=None):
    """The engine on the real ledger; returns (seconds, trades, timed port, check ok).

    `batched`: one `Ledger.batch()` per interval (each fill its own transfer), else one
    committed transaction per fill.
    """
    from host_tools.settlement.port import LedgerPort

    with tempfile.TemporaryDirectory() as tmp:
        ledger, first_s = _open_ledger(tmp, names, url)
        try:
            shifted = [(m, side, q, p, first_s + interval) for m, side, q, p, interval in stream]
            port = _TimedPort(LedgerPort(ledger))
            port.counter = _count_statements(ledger.db)
            port.db = ledger.db
            exchange = Exchange(port, config, first_interval_start_s=first_s)
            batch = [None]
            if batched:
                def interval_done():
                    batch[0].__exit__(None, None, None)
                    batch[0] = ledger.batch()
                    batch[0].__enter__()
            else:
                interval_done = None
            start = time.perf_counter()
            cpu_start = time.process_time()
            if batched:
                batch[0] = ledger.batch()
                batch[0].__enter__()
            try:
                trades = _run(exchange, shifted, interval_done=interval_done)
            except BaseException as exc:
                if batch[0] is not None:
                    batch[0].__exit__(type(exc), exc, exc.__traceback__)
                raise
            if batch[0] is not None:
                batch[0].__exit__(None, None, None)
            seconds = time.perf_counter() - start
            port.cpu_s = time.process_time() - cpu_start
            booked = ledger.db.one("SELECT COUNT(*) FROM transfers WHERE kind = 'trade'")[0]
            if booked != trades or port.trades != trades:
                raise RuntimeError(f"the ledger booked {booked} trades, the engine made {trades}")
            check_ok = ledger.check().ok
        finally:
            ledger.close()
    return seconds, trades, port, check_ok


def _baseline(stream):
    """The interpreter's floor: the same loop calling a function that only unpacks its input."""
    def accept(member, side, qty_wh, price, interval):
        return (member, side, qty_wh, price, interval)

    start = time.perf_counter()
    for member, side, qty_wh, price, interval in stream:
        accept(member, side, qty_wh, price, interval)
    return len(stream) / (time.perf_counter() - start)


def run(args):
    _validate(args)
    names, stream = make_stream(args.orders, args.members, args.seed)
    config = ExchangeConfig(open_orders_per_member_max=1_000)
    baseline_per_s = _baseline(stream)

    exchange = Exchange(_new_port(names), config)
    start = time.perf_counter()
    trades = _run(exchange, stream)
    engine_s = time.perf_counter() - start

    latencies = []
    _run(Exchange(_new_port(names), config), stream, latencies)
    latencies.sort()
    p99_ns = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteTradeStore(os.path.join(tmp, "trades.sqlite"))
        port = PersistingPort(_new_port(names), store, batch_trades_max=args.batch)
        start = time.perf_counter()
        _run(Exchange(port, config), stream, flush=port.flush)
        journal_s = time.perf_counter() - start
        stored = store.count()
        store.close()
    if stored != trades:
        raise RuntimeError(f"persisted {stored} trades, engine made {trades}")

    prefix = stream[:args.ledger_orders]
    start = time.perf_counter()
    prefix_trades = _run(Exchange(_new_port(names), config), prefix)
    prefix_engine_s = time.perf_counter() - start
    ledger_s, ledger_trades, timed, check_ok = _ledger_run(names, prefix, config, batched=True)
    single_s, single_trades, single_timed, single_check_ok = _ledger_run(names, prefix, config,
                                                                         batched=False)
    runs = [(ledger_trades, check_ok), (single_trades, single_check_ok)]
    postgres = {}
    if args.postgres_url is not None:
        pg_s, pg_trades, pg_timed, pg_check_ok = _ledger_run(names, prefix, config, batched=True,
                                                             url=args.postgres_url)
        runs.append((pg_trades, pg_check_ok))
        postgres = {"orders_per_s_with_ledger_postgresql": round(len(prefix) / pg_s),
                    "ledger_us_per_trade_postgresql": round(
                        pg_timed.settle_ns / max(pg_trades, 1) / 1000, 1)}
    if any(trades_made != prefix_trades for trades_made, _ in runs):
        raise RuntimeError("the ledger runs traded differently from the engine alone")
    if not all(ok for _, ok in runs):
        raise RuntimeError("ledger check failed after the benchmark's trades")

    orders_per_s = len(stream) / engine_s
    with_ledger_per_s = len(prefix) / ledger_s
    per_trade = max(ledger_trades, 1)
    us_per_trade = timed.settle_ns / per_trade / 1000
    us_per_trade_single = single_timed.settle_ns / per_trade / 1000
    return {
        "orders": len(stream),
        "trades": trades,
        "orders_per_s": round(orders_per_s),
        "orders_per_s_with_ledger": round(with_ledger_per_s),
        # The same run per second of this process's CPU time: what a machine shared with other
        # work would give if it were idle (the wall figure above includes waiting for a core).
        "orders_per_cpu_s_with_ledger": round(len(prefix) / max(timed.cpu_s, 1e-9)),
        "target_orders_per_s_with_ledger": TARGET_ORDERS_PER_S_WITH_LEDGER,
        "ledger_orders": len(prefix),
        "ledger_trades": ledger_trades,
        "orders_per_s_engine_same_orders": round(len(prefix) / prefix_engine_s),
        "ledger_slowdown": round(ledger_s / prefix_engine_s, 3),
        "ledger_share_of_run": round(timed.settle_ns / 1e9 / ledger_s, 4),
        "ledger_read_share_of_run": round(timed.read_ns / 1e9 / ledger_s, 4),
        "ledger_read_us_per_order": round(timed.read_ns / len(prefix) / 1000, 1),
        "ledger_us_per_trade": round(us_per_trade, 1),
        # + SAVEPOINT and RELEASE per savepoint, which the adapter runs outside `execute`.
        "ledger_sql_statements_per_trade": round(
            (timed.settle_statements + 2 * timed.settle_savepoints) / per_trade, 1),
        "orders_per_s_with_ledger_commit_per_trade": round(len(prefix) / single_s),
        "ledger_us_per_trade_commit_per_trade": round(us_per_trade_single, 1),
        # + BEGIN IMMEDIATE and COMMIT (and SAVEPOINT and RELEASE per savepoint).
        "ledger_sql_statements_per_trade_commit_per_trade": round(
            (single_timed.settle_statements + 2 * single_timed.settle_savepoints) / per_trade
            + 2, 1),
        **postgres,
        "orders_per_s_with_trade_journal": round(len(stream) / journal_s),
        "match_us_p99": round(p99_ns / 1000, 2),
        "baseline_call_loop_per_s": round(baseline_per_s),
        "engine_share_of_baseline": round(orders_per_s / baseline_per_s, 4),
        "persistence": "settlement ledger on SQLite (LedgerPort): a transfer per trade, each "
                       "checked before it writes, one commit per interval",
    }
