# Not a stand-in for hardware: the measuring tools the memory scripts (mem_meter.py,
# mem_charger.py) share. mem_meter.py's header says how the peak and the retained heap are
# caught; host_tools/bench/firmware_mem.py's why the qstr pools are grown first. Imported
# before the baseline, so its own bytes are the interpreter's, not a role's.
import asyncio
import asyncio.core
import gc

_MAX_NEW_SPLIT = 134217728  # the port's "max new split": mem_free counts it as free


def heap_total():
    """Bytes of heap the interpreter has now (the port adds some when an allocation finds no
    room)."""
    return gc.mem_alloc() + gc.mem_free() - _MAX_NEW_SPLIT


async def settled():
    """mem_alloc after a real collection: ask for one, then let the next entry run it."""
    gc.collect()
    await asyncio.sleep_ms(1)
    gc.collect()
    await asyncio.sleep_ms(1)
    return gc.mem_alloc()


async def pregrow(count=2600):
    """Intern `count` names so that the qstr pools the role's names go into exist already (the
    host charges the role for its names). A collection every 100: each getattr leaves an
    exception behind."""
    o = object()
    for n in range(count):
        getattr(o, "_pregrow%d" % n, None)
        if n % 100 == 99:
            gc.collect()
            await asyncio.sleep_ms(1)


class PassProbe:
    """Samples the heap at both ends of every asyncio loop pass while `on`: the highest
    mem_alloc at a pass's end (`peak`, garbage included) and at a pass's start, right after a
    collection (`retained`), and asks for a collection after every pass. A pass run with
    `skip` set (work of a stand-in peer, not of the role) is counted in `skipped` and left out
    of the peak."""

    def __init__(self):
        self.on = False
        self.skip = False
        self.skipped = 0
        self.peak = 0
        self.retained = 0
        self.passes = 0
        self._inner = asyncio.core._run_iter
        asyncio.core._run_iter = self._run_iter

    def _run_iter(self):
        if self.on:
            used = gc.mem_alloc()
            if used > self.retained:
                self.retained = used
        try:
            return self._inner()
        finally:
            if self.on:
                used = gc.mem_alloc()
                if self.skip:
                    self.skipped += 1
                elif used > self.peak:
                    self.peak = used
                self.passes += 1
            self.skip = False
            gc.collect()
