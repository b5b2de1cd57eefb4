"""Acceptance: `energo flash`, `energo provision` and `energo console` against an emulated board's
pty, then the provisioned board's records reach a real Mosquitto, verify with the enrolled key
and settle in the ledger."""
import json

import pytest

from host_tools import cli, flashing
from host_tools.settlement.ledger import WATT, Ledger, member_account
from tests.support.subscriber import Subscriber
from tests.test_console import STAMP, reset_under_console
from tests.test_provision_standin import (
    WIFI,
    EmulatedBoard,
    StandInService,
    mqtt_password,
    require_umqtt,
)

INTERVAL_S = 900


def _wait(condition, timeout_s, what):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metered_interval(records):
    """(interval start, import Wh, export Wh, pairs) of the interval holding the most pairs of
    consecutive records: the register increase between them. A pair that straddles an
    interval (or the clock's first NTP sync) is left out, as the first record is a baseline."""
    rows = []
    for counter in sorted(records):
        rec = records[counter]
        imp = next(r for r in rec.readings if r.obis == "01-00:01.08.00")
        exp = next(r for r in rec.readings if r.obis == "01-00:02.08.00")
        rows.append((imp.time_ms // 1000, imp.energy_wh(), exp.energy_wh()))
    per_interval = {}
    for prev, cur in zip(rows, rows[1:], strict=False):
        start = cur[0] - cur[0] % INTERVAL_S
        if prev[0] - prev[0] % INTERVAL_S == start:
            total = per_interval.setdefault(start, [0, 0, 0])
            total[0] += cur[1] - prev[1]
            total[1] += cur[2] - prev[2]
            total[2] += 1
    start, (import_wh, export_wh, pairs) = max(per_interval.items(), key=lambda kv: kv[1][2])
    return start, import_wh, export_wh, pairs


@pytest.mark.mosquitto
def test_flash_provision_console_and_the_records_settle(tmp_path, mosquitto, capsys):
    require_umqtt()
    service = StandInService()
    token = tmp_path / "admin.token"
    token.write_text(service.token)
    board = EmulatedBoard(tmp_path, speed=60)
    sub = console = None
    try:
        # The board is flashed with settings that reach no broker yet (as shipped).
        shipped = tmp_path / "device.json"
        shipped.write_text(json.dumps({"community": "demo", "mqtt": {"url": "mqtt://127.0.0.1:1"},
                                       "record_interval_s": 5, "sample_interval_ms": 1000,
                                       "wifi": WIFI}))
        assert cli.main(["flash", "--port", board.port, "--board",
                         "boards/esp32-meter-sdm630.json", "--device-config", str(shipped)]) == 0
        board.wait_output("energo: meter m-")
        ident = flashing.read_identity(board.port)
        sub = Subscriber(mosquitto.host, mosquitto.port, community="demo")
        sub.add_key(ident["device_id"], ident["public_key_hex"])

        assert cli.main(["provision", "--port", board.port, "--member", "alice", "--service",
                         service.url, "--token", str(token), "--mqtt-url", mosquitto.url]) == 0
        device_id = ident["device_id"]
        assert list(service.devices) == [device_id]
        cfg = json.loads((board.flash / "device.json").read_text())
        assert cfg["mqtt"] == {"url": mosquitto.url, "user": device_id,
                               "password": mqtt_password(service.secret, device_id)}
        assert cfg["record_interval_s"] == 5  # the shipped settings stay

        _wait(lambda: len(sub.counters(device_id)) >= 4, 40, "four records")
        assert sub.invalid == []

        # The console shows the next boot with the enrolled identity.
        console = reset_under_console(board)
        line = console.wait_for(rf"^{STAMP}energo: meter (m-[0-9a-f]{{12}}) board "
                                r"esp32-meter-sdm630 key ([0-9a-f]+)$", timeout_s=30)
        assert line.group(1) == device_id
        assert line.group(2).upper() == ident["public_key_hex"]
        rc, err = console.interrupt()
        assert rc == 0 and "Traceback" not in err, err

        # Records keep coming after the reset, with no gap, all verified.
        before = max(sub.counters(device_id))
        _wait(lambda: max(sub.counters(device_id)) >= before + 8, 40, "records after reset")
        counters = sub.counters(device_id)
        assert counters == list(range(counters[0], counters[-1] + 1))
        assert sub.invalid == []

        # The verified registers settle for the member the device was enrolled for.
        with sub.lock:
            records = dict(sub.records[device_id])
        start, import_wh, export_wh, pairs = _metered_interval(records)
        assert pairs >= 5 and import_wh >= 0 and export_wh >= 0 and import_wh + export_wh > 0
        ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}",
                             key_path=str(tmp_path / "service.key"))
        try:
            ledger.add_member(service.devices[device_id]["member"])
            totals = ledger.settle_interval(start, {"alice": (import_wh, export_wh)})
            assert totals["minted_wh"] == export_wh
            assert ledger.check().ok
            assert ledger.balance(member_account("alice"), WATT) >= 0
        finally:
            ledger.close()
        capsys.readouterr()
    finally:
        if console is not None:
            console.kill()
        if sub is not None:
            sub.close()
        board.close()
        service.close()

