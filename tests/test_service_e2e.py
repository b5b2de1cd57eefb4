"""End to end: an emulated SDM630 meter board runs the unmodified firmware against a real
Mosquitto and the settlement service; every record settles once, the ledger's energy equals the
meter's register deltas exactly and the world's ground truth within the meter's resolution."""
import threading
import time

import pytest

from energo import ocmf
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry
from host_tools.settlement.service import Service
from tests.conftest import need
from tests.support import services
from tests.support.meterrig import MeterBoard, board_file, device_config, flash_firmware
from tests.test_ingest_support import member_energy

HOUSE = {"sites": {"house-1": {"load": {"base_w": 350}, "pv_kwp": 5.0}}}
SDM630 = [{"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600}]
BOARD = "esp32-meter-sdm630"
SPEED = 900

pytestmark = pytest.mark.mosquitto


def _provision(flash, broker):
    """Boot once to read the device key from the console (as `energo` provisioning does);
    (device id, public key, the world's epoch, the world time the board was switched off)."""
    flash_firmware(flash, board_file(BOARD),
                   device_config(broker.port + 1 if broker.port < 65535 else 1,
                                 sample_interval_ms=10000))
    board = MeterBoard(flash, board_file(BOARD), HOUSE, SPEED, meters=SDM630)
    try:
        board.start()
        return board.device_id, board.spki_hex, board.world_start_s, board.now_s()
    finally:
        board.stop()


@pytest.mark.parametrize("hours", [1, pytest.param(8, marks=pytest.mark.slow)])
def test_emulated_meter_settles_every_record_once(tmp_path, hours):
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    key_path = str(tmp_path / "service-key.pem")
    with services.Mosquitto(tmp_path / "mosquitto") as broker:
        flash = tmp_path / "flash"
        device_id, spki_hex, world_start_s, off_at = _provision(flash, broker)
        ledger = Ledger.open(url, key_path=key_path)
        ledger.add_member("house1")
        Registry(ledger).enroll(device_id, bytes.fromhex(spki_hex), "meter", "house1")
        ledger.close()
        service = Service(url, broker.url, "demo", key_path=key_path, batch_wait_ms=20)
        worker = threading.Thread(target=service.run, daemon=True)
        worker.start()
        assert service.connected.wait(10)
        flash_firmware(flash, board_file(BOARD), device_config(broker.port,
                                                               sample_interval_ms=10000))
        meter = MeterBoard(flash, board_file(BOARD), HOUSE, SPEED, meters=SDM630,
                           start_epoch_s=off_at + 60, world_start_s=world_start_s)
        try:
            meter.start()
            assert meter.device_id == device_id, "the key survived the reboot"
            end = meter.now_s() + hours * 3600
            assert meter.run_until(lambda: meter.now_s() >= end, hours * 3600 / SPEED * 6)
            minutes = hours * 60
            assert meter.run_until(lambda: service.ingest.counts["settled"] >= minutes - 3, 20)
        finally:
            meter.stop()
        time.sleep(0.5)  # the last batch commits
        service.stop_event.set()
        worker.join(10)
    assert sum(service.ingest.rejected.values()) == 0, service.ingest.rejected
    ledger = Ledger.open(url, key_path=key_path)
    try:
        rows = ledger.db.all("SELECT counter, state, raw FROM ingest_records WHERE device_id = ? "
                             "ORDER BY counter", (device_id,))
        counters = [row[0] for row in rows if row[1] == "settled"]
        assert counters == list(range(1, len(counters) + 1)), "gapless, each once"
        assert len(counters) >= hours * 60 - 3
        first, last = ocmf.parse(rows[0][2]), ocmf.parse(rows[len(counters) - 1][2])
        import_delta = last.readings[0].energy_wh() - first.readings[0].energy_wh()
        export_delta = last.readings[1].energy_wh() - first.readings[1].energy_wh()
        assert member_energy(ledger) == {"house1": [import_delta, export_delta]}
        # The world's ground truth from the third record on (right after boot a record may
        # still carry the register saved on flash). A record carries the SDM register of its
        # latest poll: nominally at most 10 s old, but a board on a loaded machine can fall
        # behind, so each end is bracketed by one record interval (60 s).
        third = ocmf.parse(rows[2][2])
        t0_s, t1_s = third.readings[0].time_ms / 1000, last.readings[0].time_ms / 1000
        for name, index in (("import_wh", 0), ("export_wh", 1)):
            delta = last.readings[index].energy_wh() - third.readings[index].energy_wh()
            low = meter.ground_truth(t1_s - 60)[name] - meter.ground_truth(t0_s)[name] - 2
            high = meter.ground_truth(t1_s)[name] - meter.ground_truth(t0_s - 60)[name] + 2
            assert low <= delta <= high, (name, low, delta, high)
        assert export_delta > 0 or import_delta > 0
        assert ledger.check().ok
        assert ledger.verify_checkpoints().ok
        assert ledger.next_open_interval() is not None, "intervals closed on event time"
    finally:
        ledger.close()
