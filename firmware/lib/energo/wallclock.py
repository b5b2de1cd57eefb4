# Wall time for records: Unix epoch milliseconds and the OCMF sync status.
#
# Some MicroPython ports count time.time() from 2000, others from 1970; we find
# out once from gmtime(0). Until NTP has succeeded the status is "U" (records
# are then ordered by their counter only); afterwards "S".
import time

_EPOCH_2000_S = 946684800
_offset_ms = _EPOCH_2000_S * 1000 if time.gmtime(0)[0] == 2000 else 0
_synced = False


def now_ms():
    return time.time_ns() // 1000000 + _offset_ms


def sync_status():
    return "S" if _synced else "U"


def sync(host="pool.ntp.org"):
    """Set the RTC from NTP; True on success. Never raises for a network problem."""
    global _synced
    try:
        import ntptime

        ntptime.host = host
        ntptime.settime()
    except (OSError, OverflowError, IndexError):
        return False
    _synced = True
    return True
