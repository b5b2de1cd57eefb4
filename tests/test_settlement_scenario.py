"""A community over four intervals, every number computed by hand in the comments.

Config: defaults (retail 300 µ/Wh, feed-in 80 µ/Wh, Bmax 2000 Wh, 5000 TSL grant
→ quota 5000 Wh, so every cap is 2000 Wh) except a 5 % storage fee, so the fee
split is visible. alice produces, bob only consumes, carol (6000 Wh of storage)
and dave (3000 Wh of storage) do both.
"""
import pytest

from host_tools.settlement import MONEY, WATT, SettlementConfig
from host_tools.settlement.errors import IntervalError, InvalidTransfer
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger

ledger_url, sqlite_url, key_path = support.ledger_url, support.sqlite_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures

I0, I1, I2, I3 = (T0_S + 900 * k for k in range(4))


def member(name):
    return f"member:{name}"


def watt(ledger, *accounts):
    return [ledger.balance(account, WATT) for account in accounts]


def totals(result):
    keys = ("minted_wh", "burned_wh", "shortfall_wh", "grid_bill_micro", "sold_wh",
            "feed_in_micro", "storage_fee_wh", "fee_owners_wh", "fee_education_wh",
            "fee_operator_wh")
    return tuple(result[key] for key in keys)


def _community(url, key_path):
    ledger = open_ledger(url, key_path, config=SettlementConfig(storage_fee_ppm=50_000))
    for name, capacity_wh in (("alice", 0), ("bob", 0), ("carol", 6000), ("dave", 3000)):
        ledger.add_member(name, storage_capacity_wh=capacity_wh, at_s=I0)
    return ledger


@pytest.fixture
def community(ledger_url, key_path):
    ledger = _community(ledger_url, key_path)
    yield ledger
    ledger.close()


@pytest.fixture
def sqlite_community(sqlite_url, key_path):
    ledger = _community(sqlite_url, key_path)
    yield ledger
    ledger.close()


def test_four_intervals_by_hand(community):
    ledger = community
    people = [member(n) for n in ("alice", "bob", "carol", "dave")]
    pools = ["storage:carol", "storage:dave", "education_pool", "network_operator"]

    # I0: alice exports 2600 → 600 above the cap sold (48 000 µ); bob's 700 Wh all from the
    # grid (210 000 µ); carol 900. Fee 5 %: alice 100, carol 45 = 145 → 116/15/14
    # (14.5 and 14.5 tie: education first); owners 116 by 6000:3000 → 77.33/38.67 → 77/39.
    r0 = ledger.settle_interval(I0, {"alice": (0, 2600), "bob": (700, 0), "carol": (0, 900)})
    assert totals(r0) == (3500, 0, 700, 210_000, 600, 48_000, 145, 116, 15, 14)
    assert watt(ledger, *people) == [1900, 0, 855, 0]
    assert watt(ledger, *pools) == [77, 39, 15, 14]

    # I1: alice +300 −100 = 2100 → sells 100; dave +2500 → sells 500; carol burns 400;
    # bob 1000 Wh from the grid. Fee: alice 2000 → 100, carol 455 → 22.75 → 22 (0.75 carried),
    # dave 2000 → 100 = 222 → 177.6/22.2/22.2 → 178/22/22; owners 178 → 118.67/59.33 → 119/59.
    r1 = ledger.settle_interval(I1, {"alice": (100, 300), "bob": (1000, 0), "carol": (400, 0),
                                     "dave": (0, 2500)})
    assert totals(r1) == (2800, 500, 1000, 300_000, 600, 48_000, 222, 178, 22, 22)
    assert watt(ledger, *people) == [1900, 0, 433, 1900]
    assert watt(ledger, *pools) == [196, 98, 37, 36]

    # I2: nothing metered, the fee still falls due: alice 95, carol 21.65 + 0.75 → 22 (0.4
    # carried), dave 95 = 212 → 170/21/21; owners 170 → 113.33/56.67 → 113/57.
    r2 = ledger.settle_interval(I2, {})
    assert totals(r2) == (0, 0, 0, 0, 0, 0, 212, 170, 21, 21)
    assert watt(ledger, *people) == [1805, 0, 411, 1805]
    assert watt(ledger, *pools) == [309, 155, 58, 57]

    # Late data for closed intervals goes into I3, the first open one.
    c0 = ledger.book_correction("late-bob-i0", I0, "bob", import_wh=200)
    assert (c0["interval_start_s"], c0["grid_bill_micro"], c0["corrects_interval_s"]) == (I3, 60_000, I0)
    c1 = ledger.book_correction("late-alice-i1", I1, "alice", export_wh=400)
    assert ledger.balance(member("alice"), WATT) == 2205  # above the cap until I3 closes
    assert ledger.transfer_info("late-alice-i1")["interval_start_s"] == I3
    assert ledger.book_correction("late-alice-i1", I1, "alice", export_wh=400)["replayed"]
    assert c1["minted_wh"] == 400
    with pytest.raises(InvalidTransfer):
        ledger.book_correction("late-alice-i1", I1, "alice", export_wh=401)

    # I3: alice sells 205 (16 400 µ). Fee: alice 100, carol 20.55 + 0.4 → 20 (0.95 carried),
    # dave 90.25 → 90 = 210 → 168/21/21; owners 112/56.
    r3 = ledger.settle_interval(I3, {})
    assert totals(r3) == (0, 0, 0, 0, 205, 16_400, 210, 168, 21, 21)
    assert watt(ledger, *people) == [1900, 0, 391, 1715]
    assert watt(ledger, *pools) == [421, 211, 79, 78]

    money = [ledger.balance(account, MONEY) for account in people]
    assert money == [48_000 + 8_000 + 16_400, -(210_000 + 300_000 + 60_000), 0, 40_000]
    assert ledger.balance("grid", MONEY) == -sum(money) == 457_600
    # Minted 3500 + 2800 + 400; burned 600 + 500 + 600 + 205.
    assert ledger.balance("mint", WATT) == -6700
    assert ledger.balance("burn", WATT) == 1905
    assert sum(watt(ledger, *people, *pools)) == 6700 - 1905

    report = ledger.check()
    assert report.ok, report.problems
    verified = ledger.verify_checkpoints()
    assert verified.ok and verified.checkpoints == 4, verified.problem


def test_intervals_close_in_order_and_replay_exactly(community):
    ledger = community
    with pytest.raises(IntervalError, match="not aligned"):
        ledger.settle_interval(I0 + 1, {})
    first = ledger.settle_interval(I0, {"alice": (0, 2600)})
    with pytest.raises(IntervalError, match="next open interval"):
        ledger.settle_interval(I2, {})
    replay = ledger.settle_interval(I0, {"alice": (0, 2600), "bob": (0, 0)})  # zeros are no data
    assert replay["replayed"] and {**replay, "replayed": False} == first
    with pytest.raises(IntervalError, match="closed with other data"):
        ledger.settle_interval(I0, {"alice": (0, 2601)})
    with pytest.raises(IntervalError, match="not closed"):
        ledger.book_correction("too-early", I1, "alice", export_wh=1)


@pytest.mark.parametrize("metered", [
    {"zed": (1, 0)}, {"alice": (1,)}, {"alice": (-1, 0)}, {"alice": (0, 1.5)},
    {"alice": (0, 10**13)}, {"alice": "12"}, [("alice", (1, 1))],
])
def test_bad_metering_is_refused(sqlite_community, metered):
    with pytest.raises(InvalidTransfer):
        sqlite_community.settle_interval(I0, metered)
    assert sqlite_community.next_open_interval() is None
