"""Misbehaving vehicles end to end: the unmodified charger firmware on an emulated esp32-evse
board, a real Mosquitto and the settlement service, and one simulated vehicle per attack.

For each one: it is refused with its reason (the vehicle's view of the charger's answer, the
charger's log, the service's counters), the contactor never closes, and no money moves (the
member's balance and the ledger's holds as before), except for a tampered receipt, where
exactly the genuine receipt's amount moved and both the vehicle and `energo verify` refuse the
tampered copy. A vehicle that draws more than offered is shown to reach the charger's meter
with the excess, and the charger's overcurrent trip ends that session.

One charger serves all of them in turn (booting one is the slow part), as a public charge
point serves one car after another; each test plugs its own vehicle in and pulls it out.
"""
import json
import zlib

import pytest

from energo import evproto
from host_tools import cli
from host_tools.settlement.ledger import MONEY, member_account
from sim_board.vehicle import Vehicle
from tests.conftest import need
from tests.support import services
from tests.support.chargerrig import ChargerBoard, Community, provision, reflash_config

SPEED = 300
WAIT_S = 90  # real seconds for one vehicle's whole story at SPEED

pytestmark = pytest.mark.mosquitto


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("station")
    with services.Mosquitto(tmp / "mosquitto") as broker:
        community = Community(tmp, broker).start()
        board = None
        try:
            flash, device_id, spki_hex = provision(tmp, broker.port)
            community.enroll_charger(device_id, spki_hex)
            reflash_config(flash, broker.port)
            board = ChargerBoard(flash, SPEED).start()
            yield community, board, tmp
        finally:
            if board is not None:
                board.stop()
            community.stop()


def _money(community, member=None):
    """(the member's money, how many hold / capture / release transfers the ledger has): the
    vehicle's member pays for nothing but charging, and every charging payment is one of
    those transfers, so both stay as they were when a vehicle is refused."""
    ledger = community.ledger()
    try:
        balance = ledger.balance(member_account(member), MONEY) if member and \
            ledger.is_member(member) else 0
        (count,) = ledger.db.one("SELECT COUNT(*) FROM transfers WHERE kind IN "
                                 "('hold', 'capture', 'release')")
        return balance, count
    finally:
        ledger.close()


def _contactor_closings(board, since_world_s):
    since = since_world_s - board.board.clock.true_epoch_s
    return [t for t, what, value in board.world.pilot.log
            if what == "contactor" and value and t >= since]


def _story(station, name, misbehave, until, registered=True, **options):
    """A registered vehicle plugs in and misbehaves; returns it once `until(session)` holds."""
    community, board, tmp = station
    options.setdefault("target_wh", 400)
    options.update(seed=zlib.crc32(name.encode()), misbehave=misbehave,
                   receipts_dir=str(tmp / "receipts" / name))
    car = Vehicle(community.community_key, name, **options) if not registered else \
        community.vehicle(name, **options)
    board.attach(car).start()
    car.plug()
    ok = board.run_until(lambda: car.session is not None and until(car.session), WAIT_S)
    log = "\n".join(str(x) for x in car.log[-15:])
    assert ok, f"{misbehave}: {board.text()[-3000:]}\n{log}"
    return car


def _leave(station, car):
    """Pull the cable and let the charger see pilot A before the next vehicle comes."""
    _, board, _ = station
    car.unplug()
    t = board.now_s()
    board.run_until(lambda: board.now_s() > t + 2, 10)
    car.stop()


@pytest.mark.parametrize(("misbehave", "reason"), [
    ("other-station", "wrong-station"),
    ("expired-auth", "expired"),
    ("forged-auth", "bad-signature"),  # online: the service refuses it, and signs that
])
def test_bad_authorization_is_rejected_and_nothing_moves(station, misbehave, reason):
    community, board, _ = station
    before = _money(community)
    car = _story(station, f"bad-{misbehave}", misbehave,
                 lambda s: s["rejected"] is not None)
    try:
        s = car.session
        assert s["rejected"] == reason
        assert f"session: rejected: {reason}" in board.text()
        assert _contactor_closings(board, s["plug_s"]) == []
        assert s["grant"] is None and s["ask_s"] is None
        assert _money(community, car.wallet) == (0, before[1])
    finally:
        _leave(station, car)


def test_vehicle_the_community_does_not_know_is_refused_by_the_service(station):
    community, board, _ = station
    before = _money(community)
    refused = community.service.ev.rejected["unknown-vehicle"]
    car = _story(station, "stranger", None, lambda s: s["rejected"] is not None,
                 registered=False)
    try:
        s = car.session
        assert s["rejected"] == "unknown-vehicle"
        assert community.service.ev.rejected["unknown-vehicle"] == refused + 1
        assert _contactor_closings(board, s["plug_s"]) == []
        assert _money(community, car.wallet) == (0, before[1])
    finally:
        _leave(station, car)


def test_replayed_authorization_is_rejected(station):
    """The vehicle's own authorization from its previous session, sent again."""
    community, board, _ = station
    car = _story(station, "replayer", None, lambda s: s["state"] == "done")
    first = car.session
    _leave(station, car)
    before = _money(community, car.wallet)
    assert before[0] < 0  # it paid for its first session
    car.misbehave = "replay-auth"
    car.start()
    car.plug()
    assert board.run_until(lambda: car.session is not first and car.session["rejected"], WAIT_S)
    try:
        s = car.session
        assert s["auth_text"] == first["auth_text"]
        assert s["rejected"] == "nonce-mismatch"
        assert "session: rejected: nonce-mismatch" in board.text()
        assert _contactor_closings(board, s["plug_s"]) == []
        assert _money(community, car.wallet) == before
    finally:
        _leave(station, car)


@pytest.mark.parametrize(("misbehave", "reason", "where"), [
    ("tamper-offer", "bad-signature", "refused"),  # the vehicle refuses the altered offer
    ("garbage", "malformed", "errors_in"),  # the charger answers an error frame
    ("oversized", "oversized", "errors_in"),
])
def test_link_attacks_never_close_the_contactor(station, misbehave, reason, where):
    community, board, _ = station
    before = _money(community)
    granted = community.service.ev.counts["granted"]

    def seen(s):
        return s[where] == reason if where == "refused" else reason in s[where]
    car = _story(station, f"link-{misbehave}", misbehave, seen)
    try:
        s = car.session
        if misbehave == "tamper-offer":
            assert f"session: vehicle reports {reason}" in board.text() or \
                board.run_until(lambda: f"vehicle reports {reason}" in board.text(), 10)
        t = board.now_s()
        board.run_until(lambda: board.now_s() > t + 40, 20)  # past the charger's auth wait
        assert _contactor_closings(board, s["plug_s"]) == []
        assert community.service.ev.counts["granted"] == granted
        assert _money(community, car.wallet) == (0, before[1])
    finally:
        _leave(station, car)


def test_tampered_receipt_is_refused_by_the_vehicle_and_by_verify(station):
    community, board, _ = station
    car = _story(station, "receipt-victim", "tamper-receipt",
                 lambda s: s["receipt_path"] is not None)
    try:
        s = car.session
        assert s["refused"] == "bad-signature"
        assert s["receipt_path"].endswith(".refused.json")
        assert cli.main(["verify", s["receipt_path"]]) == 1
        kept = json.loads(open(s["receipt_path"]).read())
        ledger = community.ledger()
        try:
            genuine = ledger.db.one("SELECT total_micro, wh FROM ev_sessions WHERE session = ?",
                                    (s["offer"]["nonce"],))
        finally:
            ledger.close()
        assert genuine[0] > 0
        # exactly the genuine amount left the member, not the tampered one
        assert _money(community, car.wallet)[0] == -genuine[0]
        assert evproto.open_message(kept["receipt"], "receipt")["wh"] == genuine[1] // 2
    finally:
        _leave(station, car)


def test_vehicle_ignoring_the_limit_is_cut_off_by_the_overcurrent_trip(station):
    """The misbehaviour reaches the charger's own meter (the SDM630 sees the offer plus the
    excess), and the charger trips: contactor open, the session ended with TX A."""
    community, board, _ = station
    car = _story(station, "greedy", "ignore-limit",
                 lambda s: s["ask_s"] is not None and len(s["statuses"]) >= 2,
                 target_wh=50_000, excess_a=12.0)
    try:
        s = car.session
        offered_a = s["statuses"][-1][3]  # the charger's own figure
        with board.world.world.lock:
            drawn_a = board.world.site.current_rms_a(board.now_s())
        assert offered_a == 32
        assert drawn_a == pytest.approx(offered_a + 12.0, rel=0.01)
        assert board.run_until(lambda: "session: overcurrent:" in board.text(), WAIT_S), \
            board.text()[-3000:]
        closed = _contactor_closings(board, s["plug_s"])
        assert closed, "the contactor never closed"
        opened = [t for t, what, value in board.world.pilot.log
                  if what == "contactor" and not value and t > closed[0]]
        assert opened, "the contactor did not open after the overcurrent"
        stopped = f"{s['offer']['nonce']} stopped, TX A"
        assert board.run_until(lambda: stopped in board.text(), WAIT_S), board.text()[-3000:]
        assert board.run_until(lambda: _stop(community, s["offer"]["nonce"]) == ("A", "settled"),
                               WAIT_S), _stop(community, s["offer"]["nonce"])
    finally:
        _leave(station, car)



def _stop(community, session):
    """(how the service recorded the session's stop, its state), or None before the close."""
    ledger = community.ledger()
    try:
        return ledger.db.one("SELECT stop, state FROM ev_sessions WHERE session = ?", (session,))
    finally:
        ledger.close()
