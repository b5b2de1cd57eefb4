"""The charger firmware end to end: an emulated esp32-evse board running the unmodified
firmware, the SDM630 behind it, simulated vehicles on its vehicle link, a real Mosquitto and the
settlement service. Vehicles charge and pay unattended; receipts verify with `energo verify`;
the ledger moved exactly the receipts' amounts; offline and power-cut sessions settle exactly
once.

Time: the board runs flat out (its Evse samples the pilot every 20 ms of virtual time, which is
what bounds the emulator's speed), so sessions here are short: a few hundred Wh at 32 A."""
import json
import subprocess
import sys
import traceback

import pytest

from host_tools.settlement.ledger import MONEY, hold_account, member_account
from tests.conftest import need
from tests.support import services
from tests.support.chargerrig import OWNER, ChargerBoard, Community, provision, reflash_config
from tests.test_ingest_support import member_energy

SPEED = 1000
WAIT_S = 150  # real seconds for one vehicle's whole story

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def broker(tmp_path):
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    with services.Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def _charger(tmp_path, broker, community):
    flash, device_id, spki_hex = provision(tmp_path, broker.port)
    community.enroll_charger(device_id, spki_hex)
    reflash_config(flash, broker.port)
    board = ChargerBoard(flash, SPEED).start()
    assert board.device_id == device_id, "the key survived the reboot"
    return flash, board


def _why(board, car):
    """What a failed wait shows: the console's end, the vehicle's log, the emulator's events
    and where the board's firmware thread is now (a board that went silent)."""
    thread = board.board.thread
    frame = sys._current_frames().get(thread.ident) if thread is not None else None
    stack = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else "(not running)"
    return (board.text()[-3000:] + "\nvehicle:\n" + "\n".join(str(x) for x in car.log[-15:])
            + "\nemulator:\n" + "\n".join(str(x) for x in board.board.events[-10:])
            + f"\nboard behind by {board.board.clock.behind_s():.1f} s; its thread:\n" + stack)


def _charge(board, car, state="done"):
    """Plug `car` in and wait until its session reaches `state`; its session dict."""
    board.attach(car).start()
    try:
        car.plug()
        assert board.run_until(lambda: car.session and car.session["state"] == state, WAIT_S), \
            _why(board, car)
        return car.session
    finally:
        car.unplug()
        car.stop()
        gone = board.now_s()  # the next car comes some seconds later, not in the same instant
        board.run_until(lambda: board.now_s() > gone + 10, 30)


def _verify(path, community_key=None):
    cmd = [sys.executable, "-m", "host_tools.cli", "verify", str(path)]
    if community_key:
        cmd += ["--community-key", community_key]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def _sessions(community):
    ledger = community.ledger()
    try:
        rows = ledger.db.all("SELECT session, vehicle, member, state, offline, wh, energy_micro, "
                             "fee_micro, total_micro, hold_micro, released_micro, stop "
                             "FROM ev_sessions ORDER BY authorized_at_s")
        names = ("session", "vehicle", "member", "state", "offline", "wh", "energy_micro",
                 "fee_micro", "total_micro", "hold_micro", "released_micro", "stop")
        return [dict(zip(names, row, strict=True)) for row in rows]
    finally:
        ledger.close()


def _station_import_wh(community):
    ledger = community.ledger()
    try:
        return member_energy(ledger).get(OWNER, [0, 0])[0]
    finally:
        ledger.close()


def _check_ledger(community, sessions):
    """Each hold was captured once, paying the energy and the fee to the station's owner and
    releasing the rest; every driver paid exactly its receipts; the invariants hold. (The
    owner's balance also carries what the station itself drew from the community, settled
    from its /rec records like any meter's, so it is checked through the captures.)"""
    ledger = community.ledger()
    try:
        paid = {}
        for s in sessions:
            assert s["state"] == "settled"
            assert s["total_micro"] == s["energy_micro"] + s["fee_micro"]
            assert s["released_micro"] == s["hold_micro"] - s["total_micro"]
            assert ledger.balance(hold_account("ev:" + s["session"]), MONEY) == 0, "released"
            paid[s["member"]] = paid.get(s["member"], 0) + s["total_micro"]
            capture = ledger.transfer_info(f"#hold:ev:{s['session']}:capture")
            if s["hold_micro"] == 0:
                continue
            got = {}
            for leg in capture["legs"]:
                assert leg.debit == hold_account("ev:" + s["session"]) and leg.asset == MONEY
                got.setdefault(leg.credit, []).append(leg.amount)
            to_owner = sorted(a for a in (s["energy_micro"], s["fee_micro"]) if a)
            assert sorted(got.pop(member_account(OWNER), [])) == to_owner
            assert got == ({member_account(s["member"]): [s["released_micro"]]}
                           if s["released_micro"] else {})
        for member, total in paid.items():
            assert ledger.balance(member_account(member), MONEY) == -total, member
        assert ledger.check().ok
    finally:
        ledger.close()


def test_two_vehicles_charge_and_pay_one_after_the_other(tmp_path, broker):
    community = Community(tmp_path, broker).start()
    board = None
    try:
        _, board = _charger(tmp_path, broker, community)
        receipts = tmp_path / "receipts"
        cars = [community.vehicle(f"driver{n}", seed=10 + n, emax_wh=400 + 200 * n,
                                  cmax_micro=5_000_000, receipts_dir=str(receipts))
                for n in (1, 2)]
        done = [_charge(board, car) for car in cars]
        rows = _sessions(community)
        assert [r["vehicle"] for r in rows] == [car.id for car in cars]
        for s, row in zip(done, rows, strict=True):
            assert row["session"] == s["offer"]["nonce"]
            assert row["stop"] == "E" and not row["offline"]
            # The vehicle stopped at its own limit; the charger's meter agrees with the
            # battery within the meter's resolution and the last poll.
            assert abs(row["wh"] - s["battery_wh"]) <= 0.05 * s["battery_wh"] + 10
            assert s["receipt"]["total_micro"] == row["total_micro"]
            assert s["receipt"]["countersigned"] is True
            code, out = _verify(s["receipt_path"], community.community_key)
            assert code == 0, out
            assert str(row["wh"]) in out
        _check_ledger(community, rows)
        # What the vehicles took, the station drew from the community: its /rec records (the
        # session records among them) are settled like a meter's, burning the energy from the
        # owner's account. Nothing else draws power at this site.
        energy = sum(r["wh"] for r in rows)
        assert board.run_until(lambda: _station_import_wh(community) == energy, 60), \
            (_station_import_wh(community), energy)
        text = board.text()
        assert "Traceback" not in text
        assert text.count("energo: charger ") == 1, "no reset"
    finally:
        if board is not None:
            board.stop()
        community.stop()


def test_power_cut_mid_session_ends_it_with_tx_p_and_settles_once(tmp_path, broker):
    community = Community(tmp_path, broker).start()
    board = None
    car = None
    try:
        _, board = _charger(tmp_path, broker, community)
        car = community.vehicle("driver1", seed=21, emax_wh=5000, cmax_micro=5_000_000)
        board.attach(car).start()
        car.plug()
        assert board.run_until(lambda: car.session and car.session["state"] == "charging"
                               and car.session["battery_wh"] > 150, WAIT_S), _why(board, car)
        board.board.power_cut(off_s=5)
        car.unplug()  # the charger went dark: the driver takes the cable and leaves
        assert board.run_until(lambda: "settled" in board.text().rsplit("power cut", 1)[-1],
                               WAIT_S), _why(board, car)
        text = board.text()
        assert text.count("ended by a power cut: TX P") == 1
        assert text.count("energo: charger ") == 2, "one boot after the cut"
        rows = _sessions(community)
        assert len(rows) == 1 and rows[0]["stop"] == "P" and rows[0]["wh"] > 100, rows
        _check_ledger(community, rows)
        # Settled once: the close is not sent again after the receipt.
        closes = text.count("close sent")
        board.run_until(lambda: False, 3)
        assert board.text().count("close sent") == closes
    finally:
        if car is not None:
            car.stop()
        if board is not None:
            board.stop()
        community.stop()


def test_power_cuts_at_flash_writes_during_sessions_settle_each_once(tmp_path, broker):
    """Cut the power at the 1st, 2nd, ... flash write after a session started charging: the
    write may be a journal save, a record log append, the outbox, the register. Whatever
    the write, the session ends with TX P at the next boot and is settled exactly once."""
    community = Community(tmp_path, broker).start()
    board = None
    car = None
    try:
        _, board = _charger(tmp_path, broker, community)
        car = community.vehicle("driver1", seed=51, emax_wh=20000, cmax_micro=20_000_000)
        board.attach(car).start()
        offsets = (1, 2, 3, 4, 6)
        for n, offset in enumerate(offsets, 1):
            car.plug()
            assert board.run_until(lambda n=n: len(car.sessions) == n and car.session["state"]
                                   == "charging" and car.session["battery_wh"] > 20, WAIT_S), \
                _why(board, car)
            flash = board.board.flash
            board.board.add_fault({"kind": "power_cut", "at_write": flash.write_count + offset,
                                   "off_s": 2})
            assert board.run_until(lambda n=n: board.text().count("energo: charger ") > n,
                                   WAIT_S), _why(board, car)
            car.unplug()
            assert board.run_until(lambda n=n: board.text().count(" settled: ") >= n, WAIT_S), \
                _why(board, car)
        rows = _sessions(community)
        assert len(rows) == len(offsets), rows
        assert [r["stop"] for r in rows] == ["P"] * len(offsets)
        _check_ledger(community, rows)
        assert community.service.ev.counts["settled"] == len(offsets)
        assert "Traceback" not in board.text()
    finally:
        if car is not None:
            car.stop()
        if board is not None:
            board.stop()
        community.stop()

def test_offline_session_settles_once_when_the_link_returns(tmp_path, broker):
    community = Community(tmp_path, broker).start()
    board = None
    car = None
    try:
        # Registered before the charger's first sync, so it is on the allow-list it keeps.
        car = community.vehicle("driver1", seed=31, emax_wh=300, cmax_micro=5_000_000,
                                offline_limit_micro=2_000_000,
                                receipts_dir=str(tmp_path / "receipts"))
        _, board = _charger(tmp_path, broker, community)
        assert board.run_until(lambda: "allow-list updated" in board.text(), WAIT_S)
        board.board.add_fault({"kind": "wifi_down", "at_s": board.board.clock.now_s(),
                               "for_s": 900})
        assert board.run_until(lambda: "connect failed" in board.text().rsplit(
            "allow-list updated", 1)[-1], WAIT_S), board.text()[-2000:]
        board.attach(car).start()
        # First a forged authorization (its key, another's signature): offline, the charger
        # checks the signature itself and refuses it.
        car.misbehave = "forged-auth"
        car.plug()
        assert board.run_until(lambda: car.session and car.session["rejected"], WAIT_S), \
            _why(board, car)
        assert car.session["rejected"] == "bad-signature"
        assert "session: rejected: bad-signature" in board.text()
        assert "offline grant" not in board.text()
        car.unplug()
        t = board.now_s()
        board.run_until(lambda: board.now_s() > t + 2, 10)  # the charger sees pilot A
        car.misbehave = None
        car.plug()
        assert board.run_until(lambda: car.session and car.session["state"] == "final",
                               WAIT_S), _why(board, car)
        assert "offline grant" in board.text()
        assert _sessions(community) == [], "nothing reached the service while offline"
        # The link comes back: the close is sent, settled, and the receipt reaches the vehicle.
        assert board.run_until(lambda: car.session["state"] == "done", WAIT_S), _why(board, car)
        board.run_until(lambda: False, 5)  # a repeated close would arrive in this time
        rows = _sessions(community)
        assert len(rows) == 1 and rows[0]["offline"] and rows[0]["stop"] == "E", rows
        assert rows[0]["hold_micro"] <= 2_000_000, "the hold is capped at the offline limit"
        _check_ledger(community, rows)
        assert community.service.ev.counts["settled"] == 1
        assert car.session["receipt"]["offline"] is True
        code, out = _verify(car.session["receipt_path"], community.community_key)
        assert code == 0, out
    finally:
        if car is not None:
            car.stop()
        if board is not None:
            board.stop()
        community.stop()


@pytest.mark.slow
@pytest.mark.parametrize("hours", [4])
def test_two_vehicles_in_a_simulated_day(tmp_path, broker, hours):
    """The charger idles between the two sessions (F records, intervals closing, the price
    moving on); the first car comes at a quarter of the span, the second at three quarters.
    Powered all the time, the emulated charger runs at a few dozen times real time, so this
    spans four hours; the whole day with two paying vehicles is
    `test_sim_community.test_two_vehicles_pay_in_a_whole_simulated_day_through_mosquitto`."""
    community = Community(tmp_path, broker).start()
    board = None
    try:
        _, board = _charger(tmp_path, broker, community)
        start = board.now_s()
        receipts = tmp_path / "receipts"
        done = []
        for n, at in ((1, 0.25), (2, 0.75)):
            due = start + at * hours * 3600
            assert board.run_until(lambda due=due: board.now_s() >= due, hours * 3600 / 10), \
                f"board fell behind: {board.board.clock.behind_s()} s"
            car = community.vehicle(f"driver{n}", seed=40 + n, emax_wh=2000,
                                    cmax_micro=5_000_000, receipts_dir=str(receipts))
            done.append(_charge(board, car))
        end = start + hours * 3600
        assert board.run_until(lambda: board.now_s() >= end, hours * 3600 / 10)
        rows = _sessions(community)
        assert [r["session"] for r in rows] == [s["offer"]["nonce"] for s in done]
        for s in done:
            code, out = _verify(s["receipt_path"], community.community_key)
            assert code == 0, out
        _check_ledger(community, rows)
        energy = sum(r["wh"] for r in rows)
        assert board.run_until(lambda: _station_import_wh(community) == energy, 60)
        assert board.text().count("energo: charger ") == 1, "no reset in the day"
    finally:
        if board is not None:
            board.stop()
        community.stop()


def test_service_stop_command_and_garbage_replies(tmp_path, broker):
    """The service may end a session (`stop` on the reply topic); junk on that topic, a grant
    signed by another key and a stop for another session are counted and change nothing."""
    import paho.mqtt.client as mqtt

    from energo import evproto, p256

    community = Community(tmp_path, broker).start()
    board = None
    car = None
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue")
    rogue.connect(broker.host, broker.port)
    rogue.loop_start()
    try:
        _, board = _charger(tmp_path, broker, community)
        car = community.vehicle("driver1", seed=61, emax_wh=20000, cmax_micro=20_000_000,
                                receipts_dir=str(tmp_path / "receipts"))
        board.attach(car).start()
        car.plug()
        assert board.run_until(lambda: car.session and car.session["state"] == "charging"
                               and car.session["battery_wh"] > 50, WAIT_S), _why(board, car)
        topic = f"energo/v1/demo/{board.device_id}/ev/reply"
        nonce = car.session["offer"]["nonce"]
        forged = evproto.sign_message(p256.generate_private_key(lambda n: b"\x05" * n), {
            "t": "grant", "session": nonce, "station": board.device_id, "vehicle": car.id,
            "price": 1, "fee": 0, "hold": 1, "emax": 1})
        for payload in (b"", b"not json", b"[1]", b'{"t":"launch"}', b"x" * 20000,
                        json.dumps({"t": "grant", "grant": forged}).encode(),
                        b'{"t":"stop","session":"00000000000000000000000000000000"}'):
            rogue.publish(topic, payload, qos=1).wait_for_publish(5)
        board.run_until(lambda: False, 3)
        assert car.session["state"] == "charging", "nothing of that stopped the session"
        rogue.publish(topic, json.dumps({"t": "stop", "session": nonce}), qos=1)
        assert board.run_until(lambda: car.session["state"] == "done", WAIT_S), _why(board, car)
        rows = _sessions(community)
        assert len(rows) == 1 and rows[0]["stop"] == "E" and rows[0]["wh"] < 20000
        _check_ledger(community, rows)
        assert "Traceback" not in board.text()
        assert board.text().count("bad reply from the service") >= 4
    finally:
        rogue.loop_stop()
        if car is not None:
            car.stop()
        if board is not None:
            board.stop()
        community.stop()
