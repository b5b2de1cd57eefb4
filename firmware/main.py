# main.py: load the board and device configuration and start the role.
#
# Shaped like Peter Hinch's mqtt_as applications: one asyncio.run(), a global
# exception handler, and a watchdog fed by the role's supervisor only while
# every task is alive. A configuration problem stops here with a clear message
# and leaves the REPL free for provisioning (resetting would only loop); a
# crash at run time is printed and followed by a clean reset.
import sys
import time

import machine


def _read(path):
    try:
        with open(path) as f:
            return f.read(8192)
    except OSError:
        return None


def start():
    from energo import boardcfg, devcfg

    text = _read("/board.json")
    if text is None:
        print("energo: no /board.json on flash; flash the board with energo flash")
        return None
    board = boardcfg.load(text)
    settings = devcfg.load("/device.json")
    if board["role"] == "meter":
        from energo.meter import Meter as Role
    elif board["role"] == "charger":
        from energo.charger import Charger as Role
    else:
        print("energo: role", board["role"], "is not available in this firmware")
        return None

    _wifi(settings)
    role = Role(board, settings, machine, reset_cause=machine.reset_cause())
    device_id = role.open()
    import binascii

    from energo import p256

    # The public key is not secret: provisioning and the console read it from here.
    spki = binascii.hexlify(p256.spki_encode(role.keystore.public_key)).decode()
    print("energo:", board["role"], device_id, "board", board["name"], "key", spki)
    return role


def _wifi(settings):
    if not settings.get("wifi_ssid"):
        return
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(settings["wifi_ssid"], settings["wifi_password"] or "")


def main():
    try:
        role = start()
    except ValueError as exc:  # BoardError / DeviceConfigError: fix the files, then reset
        print("energo: configuration error:", exc)
        return
    if role is None:
        return
    import asyncio

    wdt = machine.WDT(timeout=30000)
    try:
        asyncio.run(role.run(wdt))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence on a board
        sys.print_exception(exc)
        print("energo: crashed; resetting in 5 s")
        time.sleep(5)
        machine.reset()


main()
