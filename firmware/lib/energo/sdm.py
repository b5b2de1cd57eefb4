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
_SDM120_READS = (VOLTAGE, CURRENT, ACTIVE_POWER, POWER_FACTOR, FREQUENCY, IMPORT_ENERGY,
                 EXPORT_ENERGY)


class Reading:
    """One poll of the meter, all integers: mV, mA, mW, PF in thousandths, mHz, Wh."""

    __slots__ = ("voltage_mv", "current_ma", "power_mw", "pf_milli", "frequency_mhz",
                 "import_wh", "export_wh")

    def as_tuple(self):
        return (self.voltage_mv, self.current_ma, self.power_mw, self.pf_milli,
                self.frequency_mhz, self.import_wh, self.export_wh)


def _at(block, start, address):
    return modbus.float32_milli(block, 2 * (address - start))


def poll_steps(master, slave=1, model="sdm630"):
    """A Reading from the meter at `slave` (a steps-generator, RtuMaster.read_steps: it yields
    its waits in microseconds); ModbusError after the master's retries.

    An SDM630 answers the two block reads; an SDM120 has only the single-phase registers and
    refuses a block that spans the three-phase ones, so it is read register by register.
    """
    r = Reading()
    if model == "sdm120":
        values = {}
        for address in _SDM120_READS:
            values[address] = modbus.float32_milli(
                (yield from master.read_steps(slave, address, 2)))
        get = values.__getitem__
    else:
        a = yield from master.read_steps(slave, _BLOCK_A[0], _BLOCK_A[1])
        b = yield from master.read_steps(slave, _BLOCK_B[0], _BLOCK_B[1])

        def get(address):
            if address < _BLOCK_B[0]:
                return _at(a, 0, address)
            return _at(b, _BLOCK_B[0], address)

    r.voltage_mv = get(VOLTAGE)
    r.current_ma = get(CURRENT)
    r.power_mw = get(ACTIVE_POWER)
    r.pf_milli = get(POWER_FACTOR)
    r.frequency_mhz = get(FREQUENCY)
    # kWh * 1000 = Wh, exact and rounded from the float32 register
    r.import_wh = get(IMPORT_ENERGY)
    r.export_wh = get(EXPORT_ENERGY)
    if r.import_wh < 0 or r.export_wh < 0:
        raise modbus.ModbusFrameError("negative energy register")
    return r
