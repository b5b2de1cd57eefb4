"""ECONOMICS §2's order on the ledger: an interval's energy is minted and burned first
(`settle_energy`), the market trades on it, and only then are the cap and the fee applied
(`settle_interval`). On SQLite and PostgreSQL."""
import pytest

from host_tools.settlement import MONEY, WATT
from host_tools.settlement.errors import IntervalError, InvalidTransfer
from tests import test_settlement_support as support
from tests.test_settlement_support import T0_S, open_ledger, snapshot

ledger_url, key_path = support.ledger_url, support.key_path
shared_postgres_url = support.shared_postgres_url  # fixtures

A, B = "member:alice", "member:bob"
N_S = T0_S + 900
METERED = {"alice": (100, 3000), "bob": (700, 0)}


def _community(url, key_path):
    ledger = open_ledger(url, key_path)
    ledger.add_member("alice", at_s=T0_S)
    ledger.add_member("bob", storage_capacity_wh=1000, at_s=T0_S)
    ledger.settle_interval(T0_S, {"bob": (0, 500)})
    return ledger


@pytest.fixture
def ledger(ledger_url, key_path):
    ledger = _community(ledger_url, key_path)
    yield ledger
    ledger.close()


def test_two_steps_book_exactly_what_one_step_books(ledger_url, key_path, tmp_path):
    one = _community(f"sqlite:///{tmp_path / 'one.db'}", str(tmp_path / "one.pem"))
    try:
        expected = one.settle_interval(N_S, METERED)
        expected_chain = one.db.all("SELECT seq, transfer_id, hash FROM entries ORDER BY seq")
    finally:
        one.close()
    with _community(ledger_url, key_path) as two:
        energy = two.settle_energy(N_S, METERED)
        assert energy == {"minted_wh": 3000, "burned_wh": 600, "shortfall_wh": 200,
                          "grid_bill_micro": 60_000, "interval_start_s": N_S, "replayed": False}
        assert two.balance(A, WATT) == 2900  # above alice's 2000 Wh cap until the close
        assert two.next_open_interval() == N_S  # the interval is still open
        result = two.settle_interval(N_S, METERED)
        chain = two.db.all("SELECT seq, transfer_id, hash FROM entries ORDER BY seq")
        assert {k: v for k, v in result.items() if k != "checkpoint"} == {
            k: v for k, v in expected.items() if k != "checkpoint"}
        assert result["sold_wh"] == 900 and two.balance(A, WATT) == 2000
        # Same transfers in the same order: the chain and the checkpoint root are identical.
        assert chain == expected_chain
        assert result["checkpoint"]["merkle_root"] == expected["checkpoint"]["merkle_root"]
        assert two.check().ok and two.verify_checkpoints().ok


def test_a_trade_between_the_steps_sells_above_cap_energy_before_the_grid_does(ledger):
    ledger.settle_energy(N_S, {"alice": (0, 3000)})
    # What the market does between the steps: alice sells 800 Wh of her excess to bob.
    ledger.transfer("trade:1", [(A, B, WATT, 800), (B, A, MONEY, 96_000)], at_s=N_S,
                    kind="trade", allow_receivable=True)
    result = ledger.settle_interval(N_S, {"alice": (0, 3000)})
    assert result["minted_wh"] == 3000 and result["sold_wh"] == 200  # not 1000
    assert ledger.balance(A, WATT) == 2000 and ledger.balance(B, WATT) == 1300
    # The trade is in the interval's checkpoint, between the mint and the feed-in.
    order = [row[0] for row in ledger.db.all(
        "SELECT transfer_id FROM transfers WHERE interval_start_s = ? ORDER BY first_seq", (N_S,))]
    assert order.index(f"#iv:{N_S}:mint:alice") < order.index("trade:1") < order.index(
        f"#iv:{N_S}:feed-in:alice")
    assert ledger.check().ok and ledger.verify_checkpoints().ok


def test_energy_arriving_after_the_first_step_books_only_the_difference(ledger):
    ledger.settle_energy(N_S, {"alice": (0, 1000)})
    again = ledger.settle_energy(N_S, {"alice": (0, 1000)})
    assert again["replayed"] and again["minted_wh"] == 1000
    more = ledger.settle_energy(N_S, {"alice": (0, 1500), "bob": (200, 0)})
    assert (more["minted_wh"], more["burned_wh"], more["replayed"]) == (1500, 200, False)
    assert ledger.transfer_info(f"#iv:{N_S}:mint:alice:2")["legs"][0].amount == 500
    result = ledger.settle_interval(N_S, {"alice": (0, 1600), "bob": (200, 0)})
    assert result["minted_wh"] == 1600 and ledger.balance(A, WATT) == 1600
    assert ledger.check().ok


def test_less_energy_than_booked_and_out_of_order_steps_are_refused(ledger):
    ledger.settle_energy(N_S, {"alice": (0, 1000), "bob": (300, 0)})
    before = snapshot(ledger)
    for metered in ({"alice": (0, 999), "bob": (300, 0)}, {"alice": (0, 1000)}):
        with pytest.raises(IntervalError, match="already booked"):
            ledger.settle_energy(N_S, metered)
        with pytest.raises(IntervalError, match="already booked"):
            ledger.settle_interval(N_S, metered)
    with pytest.raises(IntervalError, match="next open interval"):
        ledger.settle_energy(N_S + 900, {"alice": (0, 1)})
    with pytest.raises(InvalidTransfer):
        ledger.settle_energy(N_S, {"nobody": (0, 1)})
    assert snapshot(ledger) == before
    ledger.settle_interval(N_S, {"alice": (0, 1000), "bob": (300, 0)})
    with pytest.raises(IntervalError, match="closed"):
        ledger.settle_energy(N_S, {"alice": (0, 1000), "bob": (300, 0)})


def test_before_the_first_close_another_interval_waits_for_the_booked_one(ledger_url, key_path):
    with open_ledger(ledger_url, key_path) as fresh:
        fresh.add_member("alice", at_s=T0_S)
        fresh.settle_energy(T0_S, {"alice": (0, 10)})
        with pytest.raises(IntervalError, match="has energy booked"):
            fresh.settle_interval(T0_S + 900, {})
        assert fresh.settle_interval(T0_S, {"alice": (0, 10)})["minted_wh"] == 10
