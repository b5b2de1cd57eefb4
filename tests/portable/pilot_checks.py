# The control pilot's arithmetic on the board itself: duty table, state filter, diode check,
# ADC conversion and the charger board checks give the same answers on CPython and MicroPython.
import check

from energo import boardcfg, pilot

# Duty from current, exact at the seams (a truncating firmware offers 84 % for 51 A).
for amps, permille, u16 in ((6, 100, 6554), (16, 267, 17476), (32, 533, 34952),
                            (51, 850, 55705), (52, 848, 55574), (80, 960, 62914)):
    check.eq(pilot.duty_permille(amps), permille, "per-mille for %d A" % amps)
    check.eq(pilot.duty_u16(amps), u16, "duty_u16 for %d A" % amps)
    if amps != 52:
        check.true(0 <= amps * 10 - pilot.allowed_da(permille) <= 1, "vehicle reads %d A" % amps)
# The standard's seam: 52 A is 84.8 %, which a vehicle reads on the 0.6 A/% line as 50.8 A.
check.eq(pilot.allowed_da(848), 508, "52 A offered reads as 50.8 A")
check.eq(pilot.duty_u16(0), 65535, "0 A holds the line at +12 V")
check.eq(pilot.duty_permille(13.3), 222, "13.3 A in tenths")
check.eq(pilot.deciamps(13.39), 133, "fractions are floored to 0.1 A")
for bad in (5, 81, -6, 5.9, True, "16", None):
    print(check.raises(pilot.PilotError, lambda: pilot.duty_u16(bad), "refuse %r" % (bad,)))
print(check.raises(pilot.PilotError, lambda: pilot.duty_u16(33, 32), "above the board's max"))
check.eq(pilot.allowed_da(90), 60, "8-10 % means 6 A")
check.eq(pilot.allowed_da(50), 0, "5 % is digital communication, no AC current")
check.eq(pilot.allowed_da(1000), 0, "no PWM, no current")

# States from the high-phase level, with hysteresis and confirmation.
for mv, state in ((12000, "A"), (10500, "A"), (10499, "B"), (9000, "B"), (6000, "C"),
                  (3000, "D"), (0, "E"), (-12000, "F")):
    check.eq(pilot.raw_state(mv), state, "raw state at %d mV" % mv)
f = pilot.StateFilter()
check.eq(f.update(9100), "B", "first reading is taken as it is")
check.eq(f.update(7300), "B", "inside the hysteresis band below B")
check.eq(f.update(6100), "B", "one C reading is not yet a change")
check.eq(f.update(9000), "B", "a lone glitch is forgotten")
check.eq(f.update(6100), "B", "C seen once")
check.eq(f.update(5900), "C", "C seen twice in a row: changed")
check.eq(f.update(7800), "C", "B level inside C's band + 0.5 V stays C")
check.eq(f.update(8200), "C", "beyond the band, first poll")
check.eq(f.update(8300), "B", "beyond the band, second poll: B")

# Diode: the low phase must reach near -12 V.
check.true(pilot.diode_ok(-11900), "diode present")
check.true(not pilot.diode_ok(-6000), "no diode: the low phase mirrors the high level")
check.true(not pilot.diode_ok(None), "no PWM seen: no diode verdict")

# ADC codes through the divider (1250 mV bias, 12:1) and back.
cal = pilot.Calibration(1250, 12)
for mv in (12000, 9000, 6000, 0, -12000):
    code = cal.code(mv)
    back = cal.mv(code)
    print(mv, code, back)
    check.true(abs(back - mv) <= 12, "round trip at %d mV" % mv)
print(check.raises(pilot.PilotError, lambda: pilot.Calibration(1250, 0), "bad ratio"))
check.eq(pilot.split([6000, 6100, -12000, -11900, -12100]), (6050, -12000), "split PWM")
check.eq(pilot.split([9000, 9010, 8990]), (9000, None), "DC line")

# The charger board checks.
GOOD = ('{"name":"c","role":"charger","meter":"sdm630","status_led":23,'
        '"modbus":{"uart":2,"tx":17,"rx":16,"de":4,"baudrate":9600,"slave":1},'
        '"evse":{"pilot_pwm":25,"pilot_adc":35,"contactor":27,"rcd":34,'
        '"max_current_a":32,"phases":3},'
        '"vehicle_link":{"uart":1,"tx":32,"rx":33,"baudrate":115200}}')
check.eq(boardcfg.load(GOOD)["evse"]["rcd"], 34, "good charger loads")
for bad, path in ((GOOD.replace('"pilot_adc":35', '"pilot_adc":26'), "evse.pilot_adc"),
                  (GOOD.replace('"contactor":27', '"contactor":36'), "evse.contactor"),
                  (GOOD.replace('"max_current_a":32', '"max_current_a":100'),
                   "evse.max_current_a"),
                  (GOOD.replace('"uart":1', '"uart":2'), "vehicle_link.uart"),
                  (GOOD.replace('"tx":32', '"tx":9'), "vehicle_link.tx")):
    message = check.raises(boardcfg.BoardError, lambda: boardcfg.load(bad), path)
    check.true(message.startswith(path), "message names " + path)
    print(message)
check.done()
