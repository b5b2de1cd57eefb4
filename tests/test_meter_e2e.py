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
         faults=(), seed=1, record_interval_s=60):
    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board_file(board_name),
                   device_config(broker.port, record_interval_s=record_interval_s,
                                 sample_interval_ms=sample_interval_ms))
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
        target = int(hours * 3600 / record_interval_s) - 2
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


def test_sdm120_meter_with_a_long_record_interval(tmp_path, broker):
    """The single-phase SDM120 is read register by register; a record interval longer than
    the watchdog's stall margin does not reset the board."""
    sdm120 = [{"model": "SDM120", "uart": 2, "slave_id": 1, "baudrate": 2400}]
    meter, sub = _run(tmp_path, broker, "esp32-meter-sdm120", hours=3, speed=900,
                      sample_interval_ms=20000, meters=sdm120, record_interval_s=180)
    try:
        regs = _check_stream(meter, sub, 3 * 20)
        assert meter.text().count("energo: meter ") == 1, "no watchdog reset"
        _check_truth(meter, sub, regs, sample_s=20)
        assert regs[-1][1:] != regs[0][1:], "the SDM120's registers were read as they moved"
        errors = _status_errors(meter.text())
        assert set(errors) <= {"connect"}, f"only the connects before Wi-Fi was up fail: {errors}"
    finally:
        meter.stop()
        sub.close()


def test_sdm630_meter_for_six_hours(tmp_path, broker):
    meter, sub = _run(tmp_path, broker, "esp32-meter-sdm630", hours=6, speed=900,
                      sample_interval_ms=10000, meters=SDM630)
    try:
        regs = _check_stream(meter, sub, 6 * 60)
        _check_truth(meter, sub, regs, sample_s=10)
        assert regs[-1][2] > 1000, "PV exported in daylight"
        assert sub.hellos[meter.device_id][0]["last"] == 0
        # Acked records left the outbox.
        assert meter.run_until(lambda: "backlog" in meter.text(), 1)
    finally:
        meter.stop()
        sub.close()


def _check_truth(meter, sub, regs, sample_s):
    """The SDM's registers are the authority: the last record carries the world's energy at
    the moment it was polled (at most one sample interval before the record)."""
    with sub.lock:
        last = sub.records[meter.device_id][regs[-1][0]]
    tm_s = last.readings[0].time_ms / 1000
    assert last.readings[0].sync == "S", "the clock was set by NTP"
    truth_now = meter.ground_truth(tm_s)
    truth_before = meter.ground_truth(tm_s - sample_s)
    assert truth_before["import_wh"] - 1 <= regs[-1][1] <= truth_now["import_wh"] + 1
    assert truth_before["export_wh"] - 1 <= regs[-1][2] <= truth_now["export_wh"] + 1


def _status_errors(text):
    """The error counters of the last status line on the console."""
    lines = [line for line in text.splitlines() if line.startswith("status: ")]
    assert lines, "no status line on the console"
    field = lines[-1].rsplit("errors ", 1)[1].strip()
    if field == "none":
        return {}
    return {k: int(v) for k, v in (item.split("=") for item in field.split(","))}


@pytest.mark.parametrize("cuts,hours", [
    pytest.param(20, 1.5, id="20-cuts"),
    pytest.param(100, 6, id="100-cuts", marks=pytest.mark.slow),
])
def test_power_cuts_lose_nothing_and_reuse_no_counter(tmp_path, broker, cuts, hours):
    import random

    rng = random.Random(42)
    span_s = int(hours * 3600)
    # Half the cuts land on a random flash write (part-way through it), half at random times.
    faults = [{"kind": "power_cut", "at_write": w, "off_s": 2}
              for w in sorted(rng.sample(range(20, span_s // 12), cuts // 2))]
    faults += [{"kind": "power_cut", "at_s": t, "off_s": 5}
               for t in sorted(rng.sample(range(300, span_s), cuts - cuts // 2))]
    meter, sub = _run(tmp_path, broker, "esp32-meter-sdm630", hours=hours, speed=900,
                      sample_interval_ms=10000, meters=SDM630, faults=faults)
    try:
        regs = _check_stream(meter, sub, int(hours * 60) - cuts * 2)  # each cut costs a boot
        boots = meter.text().count("energo: meter ")
        assert boots >= cuts * 0.8, f"only {boots} boots: the cuts did not happen"
        device = meter.device_id
        hellos = sub.hellos[device]
        assert all(h["skipped"] is None for h in hellos), "no counter was skipped"
        assert regs[-1][0] >= hellos[-1]["last"], "records stored before a cut were delivered"
        # The SDM meter is the energy authority: nothing is lost across cuts. Every record
        # carries the world's energy as of its poll (at most one sample interval old).
        with sub.lock:
            records = dict(sub.records[device])
        for counter, imp, _ in regs[-20:]:
            tm_s = records[counter].readings[0].time_ms / 1000
            if records[counter].readings[0].sync != "S":
                continue
            assert meter.ground_truth(tm_s - 12)["import_wh"] - 1 <= imp
            assert imp <= meter.ground_truth(tm_s)["import_wh"] + 1
    finally:
        meter.stop()
        sub.close()


def test_broker_outage_backlog_arrives_in_order(tmp_path, broker):
    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board_file("esp32-meter-sdm630"),
                   device_config(broker.port, sample_interval_ms=10000))
    meter = MeterBoard(flash, board_file("esp32-meter-sdm630"), HOUSE, 600, meters=SDM630)
    second = None
    try:
        meter.start()
        device = meter.device_id
        sub.add_key(device, meter.spki_hex)
        assert meter.run_until(lambda: len(sub.counters(device)) >= 10, 60)
        sub.close()
        acked_before = sub.acked[device]
        broker.__exit__(None, None, None)  # the broker is gone for two simulated hours
        down_at = meter.now_s()
        assert meter.run_until(lambda: meter.now_s() >= down_at + 2 * 3600, 120)
        with services.Mosquitto(tmp_path / "mosquitto2", port=broker.port) as again:
            second = Subscriber(again.host, again.port)
            second.add_key(device, meter.spki_hex)
            second.resume(device, acked_before)
            expected = acked_before + 120  # two hours at one record a minute, at least
            assert meter.run_until(lambda: second.acked.get(device, 0) >= expected, 90), \
                f"backlog not delivered: acked {second.acked.get(device)}"
            arrivals = second.arrivals[device]
            assert arrivals[0] == acked_before + 1
            assert arrivals == sorted(arrivals), "the backlog arrives oldest first"
            assert second.invalid == []
            # The outbox drains: after the reconnection a status line shows the acks caught up
            # with the counter (at most the record of the current minute still in flight).
            def drained():
                tail = meter.text().rsplit("link: connected", 1)[-1]
                for line in tail.splitlines():
                    if line.startswith("status: "):
                        words = line.split()
                        counter, acked = int(words[2]), int(words[6])
                        if counter - acked <= 1:
                            return True
                return False

            assert meter.run_until(drained, 90), meter.text()[-1500:]
    finally:
        meter.stop()
        if second is not None:
            second.close()


def _torn_frame(scratch, counter):
    """The first half of a real outbox frame: what a power cut during an append leaves."""
    from energo.outbox import Outbox

    scratch.mkdir()
    box = Outbox(str(scratch))
    box.open()
    box.append(counter, b"OCMF|" + b"x" * 600)
    frame = next(scratch.glob("o*.seg")).read_bytes()
    return frame[: len(frame) // 2]


def test_bad_input_is_counted_never_fatal(tmp_path, broker):
    import paho.mqtt.client as mqtt

    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board_file("esp32-meter-sdm630"),
                   device_config(broker.port, sample_interval_ms=10000))
    meter = MeterBoard(flash, board_file("esp32-meter-sdm630"), HOUSE, 600, meters=SDM630)
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue")
    rogue.connect(broker.host, broker.port)
    rogue.loop_start()
    try:
        meter.start()
        device = meter.device_id
        sub.add_key(device, meter.spki_hex)
        assert meter.run_until(lambda: len(sub.counters(device)) >= 5, 60)
        # Garbage on the device's ack topic.
        topic = f"energo/v1/demo/{device}/ack"
        for payload in (b"", b"not json", b'{"ack":"7"}', b'{"ack":-1}', b"[1,2]",
                        b'{"ack":true}', b"x" * 5000, b'{"ack":1e3}'):
            rogue.publish(topic, payload, qos=1)
        # Garbage on the RS485 bus: bad CRCs, exception replies, another slave, silence.
        sdm = meter.world.meters[0]
        for kind in ("crc", "exception", "wrong_slave", "timeout"):
            sdm.inject(kind, count=3)
        start = len(sub.counters(device))
        assert meter.run_until(lambda: len(sub.counters(device)) >= start + 25, 90)
        assert meter.run_until(lambda: "ack_bad" in meter.text().rsplit("status: ", 1)[-1], 60)
        errors = _status_errors(meter.text())
        assert errors.get("ack_bad", 0) >= 6, errors
        assert errors.get("crc", 0) >= 1 and errors.get("exception", 0) >= 1, errors
        assert errors.get("frame", 0) >= 1 and errors.get("timeout", 0) >= 1, errors
        assert "Traceback" not in meter.text()
        off_at = meter.now_s()
        meter.stop()

        # Corrupted flash: a flipped byte in one register slot, and the half-written frame a
        # cut during an append leaves at the outbox's tail (a record that was never published:
        # the firmware publishes only what it has flushed).
        data = flash / "data"
        slot = data / "energy.a"
        raw = bytearray(slot.read_bytes())
        raw[12] ^= 0x40
        slot.write_bytes(bytes(raw))
        segment = sorted(data.glob("o*.seg"))[-1]
        segment.write_bytes(segment.read_bytes() + _torn_frame(tmp_path / "scratch",
                                                               max(sub.counters(device)) + 1))
        meter2 = MeterBoard(flash, board_file("esp32-meter-sdm630"), HOUSE, 600, meters=SDM630,
                            start_epoch_s=off_at + 60, world_start_s=meter.world_start_s)
        meter = meter2
        meter2.start()
        assert meter2.device_id == device, "the identity survives"
        before = len(sub.counters(device))
        assert meter2.run_until(lambda: len(sub.counters(device)) >= before + 10, 60)
        assert meter2.text().count("energo: meter ") == 1, "boot loop:\n" + meter2.text()[-3000:]
        counters = sub.counters(device)
        assert sub.invalid == [], "no counter reused with different content"
        skipped = [h["skipped"] for h in sub.hellos[device] if h["skipped"]]
        gaps = [b for a, b in zip(counters, counters[1:], strict=False) if b != a + 1]
        assert not gaps and not skipped, (gaps, skipped)
    finally:
        rogue.loop_stop()
        meter.stop()
        sub.close()


def _calibrated_ct_board(world_seed):
    """The CT board as a production line would leave it: calibrated for this unit's chip."""
    from energo.sources import AdcSource
    from host_tools import calibrate

    board = board_file("esp32-meter-ct")
    volt, current = AdcSource.channels(board["adc"])
    rig = calibrate.Rig(board, world_seed, ct_ratio_error_pct=0.0,
                        ct_phase_error_deg=current.get("phase_error_deg", 0.0),
                        vt_phase_error_deg=volt.get("phase_error_deg", 0.0))
    calibrated, _ = calibrate.calibrate(rig, seconds=30)
    return calibrated


def test_ct_meter_energy_matches_ground_truth(tmp_path, broker):
    world_seed = 7
    board = _calibrated_ct_board(world_seed)
    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board, device_config(broker.port, sample_interval_ms=5000))
    steady = {"sites": {"house-1": {"load": {"base_w": 1200}, "pv_kwp": 0.0}}}
    meter = MeterBoard(flash, board, steady, 300, world_seed=world_seed)
    try:
        meter.start()
        device = meter.device_id
        sub.add_key(device, meter.spki_hex)
        assert meter.run_until(lambda: len(sub.counters(device)) >= 45, 240), meter.text()[-2000:]
        regs = _check_stream(meter, sub, 45)
        with sub.lock:
            records = dict(sub.records[device])
        synced = [c for c, _, _ in regs if records[c].readings[0].sync == "S"]
        first, last = records[synced[0]], records[synced[-1]]
        t0 = first.readings[0].time_ms / 1000
        t1 = last.readings[0].time_ms / 1000
        measured = last.readings[0].energy_wh() - first.readings[0].energy_wh()
        true = meter.ground_truth(t1)["import_wh"] - meter.ground_truth(t0)["import_wh"]
        print(f"CT meter: measured {measured} Wh, true {true:.1f} Wh over {(t1 - t0) / 60:.0f} min")
        # Registers are whole Wh and lag by up to one sample interval at each end.
        assert abs(measured - true) <= true * 0.01 + 3, (measured, true)
    finally:
        meter.stop()
        sub.close()


@pytest.mark.slow
def test_sdm630_meter_for_a_day(tmp_path, broker):
    meter, sub = _run(tmp_path, broker, "esp32-meter-sdm630", hours=24, speed=900,
                      sample_interval_ms=10000, meters=SDM630)
    try:
        regs = _check_stream(meter, sub, 24 * 60)
        with sub.lock:
            last = sub.records[meter.device_id][regs[-1][0]]
        tm_s = last.readings[0].time_ms / 1000
        assert meter.ground_truth(tm_s - 12)["import_wh"] - 1 <= regs[-1][1]
        assert regs[-1][1] <= meter.ground_truth(tm_s)["import_wh"] + 1
    finally:
        meter.stop()
        sub.close()


@pytest.mark.slow
def test_ct_meter_for_a_day(tmp_path, broker):
    world_seed = 11
    board = _calibrated_ct_board(world_seed)
    sub = Subscriber(broker.host, broker.port)
    flash = tmp_path / "flash"
    flash_firmware(flash, board, device_config(broker.port, sample_interval_ms=10000))
    meter = MeterBoard(flash, board, HOUSE, 600, world_seed=world_seed)
    try:
        meter.start()
        device = meter.device_id
        sub.add_key(device, meter.spki_hex)
        assert meter.run_until(lambda: len(sub.counters(device)) >= 24 * 60 - 5, 900)
        regs = _check_stream(meter, sub, 24 * 60 - 5)
        with sub.lock:
            records = dict(sub.records[device])
        synced = [c for c, _, _ in regs if records[c].readings[0].sync == "S"]
        first, last = records[synced[0]], records[synced[-1]]
        t0 = first.readings[0].time_ms / 1000
        t1 = last.readings[0].time_ms / 1000
        truth0, truth1 = meter.ground_truth(t0), meter.ground_truth(t1)
        for n, key in ((0, "import_wh"), (1, "export_wh")):
            measured = last.readings[n].energy_wh() - first.readings[n].energy_wh()
            true = truth1[key] - truth0[key]
            print(f"CT meter, a day, {key}: measured {measured} Wh, true {true:.1f} Wh")
            # One sampling window every 10 s extrapolated over load steps and clouds: 2 %.
            assert abs(measured - true) <= true * 0.02 + 5, (key, measured, true)
    finally:
        meter.stop()
        sub.close()
