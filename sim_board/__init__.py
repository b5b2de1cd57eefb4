"""CPython board emulator that runs the unmodified Energo firmware."""
