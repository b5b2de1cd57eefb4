# Eastron SDM630 / SDM120 energy meters over Modbus RTU: the input registers we
# read and how they become integer readings. Every quantity is an IEEE-754
# float32, big-endian, high word first (Eastron's protocol document); energy in
# kWh, which we turn into exact integer Wh.
from energo import modbus

# Input register addresses (function 0x04), phase 1 / total.
VOLTAGE = 0x0000  # V
CURRENT = 0x0006  # A
ACTIVE_POWER = 0x000C  # W
POWER_FACTOR = 0x001E  # (signed; Eastron's sign convention)
FREQUENCY = 0x0046  # Hz
IMPORT_ENERGY = 0x0048  # kWh
EXPORT_ENERGY = 0x004A  # kWh
TOTAL_ENERGY = 0x0156  # kWh

# Two block reads cover everything: 0x0000-0x001F and 0x0046-0x004B.
_BLOCK_A = (0x0000, 0x20)
_BLOCK_B = (0x0046, 6)


class Reading:
    """One poll of the meter, all integers: mV, mA, mW, PF in thousandths, mHz, Wh."""

    __slots__ = ("voltage_mv", "current_ma", "power_mw", "pf_milli", "frequency_mhz",
                 "import_wh", "export_wh")

    def as_tuple(self):
        return (self.voltage_mv, self.current_ma, self.power_mw, self.pf_milli,
                self.frequency_mhz, self.import_wh, self.export_wh)


def _at(block, start, address):
    return modbus.float32_milli(block, 2 * (address - start))


def poll(master, slave=1):
    """A Reading from the meter at `slave`; ModbusError after the master's retries."""
    a = master.read_registers(slave, _BLOCK_A[0], _BLOCK_A[1])
    b = master.read_registers(slave, _BLOCK_B[0], _BLOCK_B[1])
    r = Reading()
    r.voltage_mv = _at(a, 0, VOLTAGE)
    r.current_ma = _at(a, 0, CURRENT)
    r.power_mw = _at(a, 0, ACTIVE_POWER)
    r.pf_milli = _at(a, 0, POWER_FACTOR)
    r.frequency_mhz = _at(b, _BLOCK_B[0], FREQUENCY)
    # kWh * 1000 = Wh, exact and rounded from the float32 register
    r.import_wh = _at(b, _BLOCK_B[0], IMPORT_ENERGY)
    r.export_wh = _at(b, _BLOCK_B[0], EXPORT_ENERGY)
    if r.import_wh < 0 or r.export_wh < 0:
        raise modbus.ModbusFrameError("negative energy register")
    return r
