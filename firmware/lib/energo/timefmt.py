# OCMF time stamps: `2026-11-21T10:03:15,000+0000 S` <-> (Unix epoch ms, sync status).
#
# Integer calendar arithmetic of our own: MicroPython's time.gmtime counts from
# 2000 on some ports and from 1970 on others, and ESP32 floats are too coarse
# for millisecond epoch times.

SYNC_STATUSES = "UISR"


def _days_from_civil(year, month, day):
    # Days since 1970-01-01 in the proleptic Gregorian calendar (era-based, exact).
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days):
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def _days_in_month(year, month):
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def format_tm(epoch_ms, sync="S", offset_min=0):
    """OCMF TM text for a Unix time in ms, shown at UTC offset `offset_min`."""
    if sync not in SYNC_STATUSES or len(sync) != 1:
        raise ValueError("sync status must be one of U, I, S, R")
    if not isinstance(epoch_ms, int) or epoch_ms < 0:
        raise ValueError("time must be a non-negative integer of ms")
    if not -1439 <= offset_min <= 1439:
        raise ValueError("UTC offset out of range")
    local_ms = epoch_ms + offset_min * 60000
    days, ms_of_day = divmod(local_ms, 86400000)
    year, month, day = _civil_from_days(days)
    if not 0 <= year <= 9999:
        raise ValueError("year %d does not fit a TM time stamp" % year)
    secs, ms = divmod(ms_of_day, 1000)
    sign = "+" if offset_min >= 0 else "-"
    off = abs(offset_min)
    return "%04d-%02d-%02dT%02d:%02d:%02d,%03d%s%02d%02d %s" % (
        year, month, day, secs // 3600, secs // 60 % 60, secs % 60, ms, sign, off // 60,
        off % 60, sync)


def _digits(text, start, count, what):
    part = text[start : start + count]
    if len(part) != count or not part.isdigit():
        raise ValueError("TM %s is not %d digits: %r" % (what, count, text))
    return int(part)


def parse_tm(text):
    """(epoch_ms, sync) from OCMF TM text; ValueError saying what is wrong."""
    if not isinstance(text, str) or len(text) != 30:
        raise ValueError("TM must look like 2026-11-21T10:03:15,000+0000 S, got %r" % (text,))
    for pos, ch in ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, ","), (28, " ")):
        if text[pos] != ch:
            raise ValueError("TM needs %r at position %d: %r" % (ch, pos, text))
    year = _digits(text, 0, 4, "year")
    month = _digits(text, 5, 2, "month")
    day = _digits(text, 8, 2, "day")
    hour = _digits(text, 11, 2, "hour")
    minute = _digits(text, 14, 2, "minute")
    second = _digits(text, 17, 2, "second")
    ms = _digits(text, 20, 3, "milliseconds")
    if text[23] not in "+-":
        raise ValueError("TM offset must start with + or -: %r" % text)
    off_h = _digits(text, 24, 2, "offset hours")
    off_m = _digits(text, 26, 2, "offset minutes")
    sync = text[29]
    if sync not in SYNC_STATUSES:
        raise ValueError("TM sync status must be U, I, S or R: %r" % text)
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise ValueError("TM date does not exist: %r" % text)
    if hour > 23 or minute > 59 or second > 59 or off_h > 23 or off_m > 59:
        raise ValueError("TM time out of range: %r" % text)
    offset_min = off_h * 60 + off_m
    if text[23] == "-":
        offset_min = -offset_min
    days = _days_from_civil(year, month, day)
    epoch_ms = ((days * 24 + hour) * 60 + minute) * 60000 + second * 1000 + ms
    return epoch_ms - offset_min * 60000, sync
