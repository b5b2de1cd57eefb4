# Not a stand-in for hardware: the memory scripts' (mem_meter.py, mem_charger.py) way to grow
# this port's qstr pools before their baseline; see host_tools/bench/firmware_mem.py's header.
import asyncio
import gc


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
