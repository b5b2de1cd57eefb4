"""Matching-engine throughput on a seeded ZI-C order stream, alone and with SQLite persistence."""
import os
import random
import tempfile
import time

from host_tools.exchange.agents import draw_ask_price, draw_bid_price
from host_tools.exchange.book import BUY, SELL, Exchange, ExchangeConfig
from host_tools.exchange.port import MemoryPort
from host_tools.exchange.store import PersistingPort, SqliteTradeStore

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
                        help="trades per SQLite transaction in the persisted run")


def _validate(args):
    from host_tools.cli import UsageError

    for name, low, high in (("orders", 1, 10_000_000), ("members", 2, 1_000_000),
                            ("batch", 1, 1_000_000)):
        value = getattr(args, name)
        if not low <= value <= high:
            raise UsageError(f"--{name} must be within {low}..{high}, got {value}")


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


def _run(exchange, stream, latencies=None, flush=None):
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
            current = interval
        if latencies is None:
            trades += len(submit(member, side, qty_wh, price, interval).trades)
        else:
            start = clock()
            trades += len(submit(member, side, qty_wh, price, interval).trades)
            latencies.append(clock() - start)
    if flush is not None:
        flush()
    return trades


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
        ledger_s = time.perf_counter() - start
        stored = store.count()
        store.close()
    if stored != trades:
        raise RuntimeError(f"persisted {stored} trades, engine made {trades}")
    orders_per_s = len(stream) / engine_s
    with_ledger_per_s = len(stream) / ledger_s
    return {
        "orders": len(stream),
        "trades": trades,
        "orders_per_s": round(orders_per_s),
        "orders_per_s_with_ledger": round(with_ledger_per_s),
        "match_us_p99": round(p99_ns / 1000, 2),
        "baseline_call_loop_per_s": round(baseline_per_s),
        "engine_share_of_baseline": round(orders_per_s / baseline_per_s, 4),
        "ledger_slowdown": round(orders_per_s / with_ledger_per_s, 3),
        "persistence": "sqlite trade journal (to be replaced by the ledger port)",
    }
