# Freezes the Energo firmware into a MicroPython image, for people who build their own.
#
# Why: a module loaded from a .mpy file on flash keeps its bytecode, strings and constant
# tables in the heap (about 70 KB for the meter role, most of an ESP32's ~110 KB without
# PSRAM). Frozen into the image, all of that is executed from flash and the heap keeps only
# the role's state and its working garbage. `energo bench firmware-mem` reports the code's
# share as meter_modules_bytes.
#
# Build (MicroPython 1.29 source tree, ESP-IDF set up):
#   cd ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=<this repository>/firmware/manifest.py
# Then flash the image and copy only boot.py and main.py onto the board's filesystem. Leave
# /lib/energo off: ".frozen" comes before "/lib" on sys.path, so a copy there would never run
# and would only mislead whoever reads the board's files later.
#
# Without building MicroPython: on a board whose MicroPython has a ROMFS partition (a build with
# MICROPY_VFS_ROM and a "romfs" partition), `energo flash` puts the package in a ROMFS image
# instead, which also runs in place from flash (host_tools/romfs.py).
#
# This file is read by MicroPython's build tool (tools/manifestfile.py), not by a board:
# include, package and require are the functions that tool provides.

# The port's own frozen modules (asyncio, ntptime, the network helpers): a manifest given with
# FROZEN_MANIFEST replaces the board's, so they must be listed again.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821
# The firmware package, firmware/lib/energo, frozen as the package "energo".
package("energo", base_path="lib")  # noqa: F821
# The MQTT client from micropython-lib; the emulator installs the same module at run time.
require("umqtt.simple")  # noqa: F821
