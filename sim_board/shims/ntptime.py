"""`ntptime`: the simulated world's true time (plus an injectable NTP error), no network."""
import errno
import types

from sim_board.flash import oserror


def build(board, runtime):
    m = types.ModuleType("ntptime")
    m.host = "pool.ntp.org"
    m.timeout = 1

    def time():
        if not board.wifi.link_up():
            board.clock.sleep(m.timeout)
            raise oserror(errno.ETIMEDOUT)
        return int(board.clock.true_time_s() + board.ntp_offset_s)

    def settime():
        board.clock.set_rtc(time())

    m.time = time
    m.settime = settime
    return m
