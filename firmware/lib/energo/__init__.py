"""Energo firmware package: runs on MicroPython (ESP32) and on CPython."""
