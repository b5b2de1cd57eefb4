# The board checker on the board itself: same verdicts on CPython and MicroPython.
import check

from energo import boardcfg

GOOD = ('{"name":"b","role":"meter","meter":"sdm630","wifi":true,"status_led":23,'
        '"modbus":{"uart":2,"tx":17,"rx":16,"de":4,"baudrate":9600,"slave":1}}')
cfg = boardcfg.load(GOOD)
check.eq(cfg["modbus"]["baudrate"], 9600, "good board loads")
for bad, path in ((GOOD.replace('"de":4', '"de":36'), "modbus.de"),
                  (GOOD.replace('"tx":17', '"tx":8'), "modbus.tx"),
                  (GOOD.replace('"role":"meter"', '"role":"x"'), "role"),
                  (GOOD.replace('"slave":1', '"slave":0'), "modbus.slave"),
                  ("[1,2]", "board"), ("{", "board")):
    message = check.raises(boardcfg.BoardError, lambda: boardcfg.load(bad), path)
    check.true(message.startswith(path), "message names " + path)
    print(message)
errors, warnings = boardcfg.check({"name": "b", "role": "meter", "meter": "adc", "adc": {
    "sample_us": 400, "channels": [
        {"pin": 25, "kind": "voltage", "atten": 3, "vt_ratio": 460, "bias_mv": 1250},
        {"pin": 0, "kind": "current", "atten": 9, "ct_ratio": 2000, "burden_ohm": 10,
         "bias_mv": 1250}]}})
for line in errors + warnings:
    print(line)
check.eq(len(errors), 3, "ADC2 twice with Wi-Fi and a bad attenuation")
check.done()
