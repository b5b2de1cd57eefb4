"""The meter firmware end to end: emulated boards running the unmodified firmware against a real
Mosquitto; a verifying subscriber checks every record, the counters, the registers, and the
energy against the world's ground truth."""
import pytest

from tests.conftest import need
from tests.support import services
from tests.support.meterrig import MeterBoard, board_file, device_config, flash_firmware
from tests.support.subscriber import Subscriber

HOUSE = {"sites": {"house-1": {"load": {"base_w": 350}, "pv_kwp": 5.0}}}
SDM630 = [{"model": "SDM630", "uart": 2, "slave_id": 1, "baudrate": 9600}]


@pytest.fixture
def broker(tmp_path):
    need(services.mosquitto_binary() is not None, "mosquitto is not installed")
    with services.Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def _run(tmp_path, broker, board_name, hours, speed, sample_interval_ms, meters=None,
         faults=(), seed=1):
    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board_file(board_name),
                   device_config(broker.port, sample_interval_ms=sample_interval_ms))
    meter = MeterBoard(flash, board_file(board_name), HOUSE, speed, seed=seed, meters=meters,
                       faults=faults)
    try:
        meter.start()
        sub.add_key(meter.device_id, meter.spki_hex)
        start = meter.now_s()
        end = start + hours * 3600
        reached = meter.run_until(lambda: meter.now_s() >= end, timeout_s=hours * 3600 / speed * 6)
        assert reached, f"board fell behind: {meter.board.clock.behind_s()} s"
        # Let the last records reach the subscriber.
        target = int(hours * 60) - 2
        meter.run_until(lambda: len(sub.counters(meter.device_id)) >= target, timeout_s=20)
        return meter, sub
    except BaseException:
        meter.stop()
        sub.close()
        raise


def _check_stream(meter, sub, minutes):
    device = meter.device_id
    assert sub.invalid == []
    counters = sub.counters(device)
    assert counters == list(range(1, len(counters) + 1)), "counters must be gapless from 1"
    assert len(counters) >= minutes - 3
    regs = sub.registers(device)
    for (_, i0, e0), (_, i1, e1) in zip(regs, regs[1:], strict=False):
        assert i1 >= i0 and e1 >= e0, "registers never decrease"
    return regs


def test_sdm630_meter_for_six_hours(tmp_path, broker):
    meter, sub = _run(tmp_path, broker, "esp32-meter-sdm630", hours=6, speed=900,
                      sample_interval_ms=10000, meters=SDM630)
    try:
        regs = _check_stream(meter, sub, 6 * 60)
        device = meter.device_id
        # The SDM's register is the authority: each record equals the world's energy at the
        # moment it was polled (at most one sample interval before the record).
        with sub.lock:
            last = sub.records[device][regs[-1][0]]
        tm_s = last.readings[0].time_ms / 1000
        assert last.readings[0].sync == "S", "the clock was set by NTP"
        truth_now = meter.ground_truth(tm_s)
        truth_before = meter.ground_truth(tm_s - 10)
        assert truth_before["import_wh"] - 1 <= regs[-1][1] <= truth_now["import_wh"] + 1
        assert truth_before["export_wh"] - 1 <= regs[-1][2] <= truth_now["export_wh"] + 1
        assert regs[-1][2] > 1000, "PV exported in daylight"
        assert sub.hellos[device][0]["last"] == 0
        # Acked records left the outbox.
        assert meter.run_until(lambda: "backlog" in meter.text(), 1)
    finally:
        meter.stop()
        sub.close()
