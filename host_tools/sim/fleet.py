"""The households' boards of a community run, split over worker processes, one per core.

Why processes: every emulated board runs the firmware's Python in the host interpreter, so all
boards of one process share its interpreter lock and one core. Profiling a run of 12 households
shows the process holding them at one full core while the broker and the settlement service
need little, so a second process of boards is what the second core is for (`energo bench
emulator` splits its fleet the same way).

What crosses the process boundary is small and explicit: a worker is given its households'
plans and calibrated board files (the boards are provisioned beforehand: their keys are on their
flash directories), and answers a handful of requests over a pipe — start, the boards' clocks,
a board's speed, stop one board, the world's ground truth at a time, and at the end the
consoles. Each board and its world live in exactly one worker, so a board's truth and its
records come from the same process, as before.

A worker ignores Ctrl-C: the run decides how to stop (boards off, drain, partial summary) and
tells the workers; a worker whose parent has gone exits at the next request it cannot read.
"""
import multiprocessing
import os
import signal
import sys

SWITCH_INTERVAL_S = 0.0005
REPLY_TIMEOUT_S = 120.0  # a worker that has not answered by then is stuck (boot waits <= 60 s)


class FleetError(RuntimeError):
    """A board worker failed or died; the message says which and why."""


def default_processes(households):
    """One worker per core, never more than there are households."""
    return max(1, min(os.cpu_count() or 1, households))


class Fleet:
    """Main-side handle on the workers; households are addressed by their index in the run."""

    def __init__(self, households, options, flash_root, world_start_s, processes):
        self.households = households
        count = max(1, min(processes, len(households)))
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self._workers = []
        self._where = {}  # household index -> worker
        for w in range(count):
            mine = [h for h in households if h.plan["index"] % count == w]
            spec = {"options": options, "flash_root": str(flash_root),
                    "world_start_s": world_start_s,
                    "houses": [{"plan": h.plan, "board_cfg": h.board_cfg,
                                "device_id": h.device_id} for h in mine]}
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_serve, args=(child, spec), name=f"energo-boards-{w}",
                                  daemon=True)
            process.start()
            child.close()
            worker = _Worker(w, process, parent)
            self._workers.append(worker)
            for h in mine:
                self._where[h.plan["index"]] = worker

    def start(self, community, mqtt_url, passwords, start_epoch_s):
        """Boot every board for real (all workers at once); passwords by household index."""
        for worker in self._workers:
            worker.send("start", community, mqtt_url, passwords, start_epoch_s)
        for worker in self._workers:
            worker.reply()

    def now_s(self):
        """{household index: the world's time on its board now}."""
        for worker in self._workers:
            worker.send("now")
        now = {}
        for worker in self._workers:
            now.update(worker.reply())
        return now

    def set_speed(self, index, speed):
        self._where[index].call("speed", index, speed)

    def stop_board(self, index):
        self._where[index].call("stop_board", index)

    def truth(self, index, t_s):
        return self._where[index].call("truth", index, t_s)

    def close(self):
        """Stop every board and worker; {household index: console text} of those that answered."""
        texts = {}
        for worker in self._workers:
            if worker.alive():
                worker.send("close")
        for worker in self._workers:
            try:
                texts.update(worker.reply())
            except FleetError:
                pass
            worker.join()
        return texts


class _Worker:
    def __init__(self, number, process, conn):
        self.number, self.process, self.conn = number, process, conn
        self._closed = False

    def alive(self):
        return not self._closed and self.process.is_alive()

    def send(self, op, *args):
        try:
            self.conn.send((op, args))
        except (OSError, EOFError):
            raise FleetError(self._gone()) from None

    def reply(self):
        try:
            if not self.conn.poll(REPLY_TIMEOUT_S):
                raise FleetError(f"board worker {self.number} did not answer within "
                                 f"{REPLY_TIMEOUT_S:g} s")
            ok, result = self.conn.recv()
        except (OSError, EOFError):
            raise FleetError(self._gone()) from None
        if not ok:
            raise FleetError(f"board worker {self.number}: {result}")
        return result

    def call(self, op, *args):
        self.send(op, *args)
        return self.reply()

    def join(self):
        self._closed = True
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def _gone(self):
        self.process.join(timeout=1)
        return f"board worker {self.number} exited (status {self.process.exitcode})"


# --- the worker process --------------------------------------------------------------------------

def _serve(conn, spec):
    """A worker's whole life: build its households, answer requests until `close`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A Modbus board waits (in real time, its virtual clock standing still) for its meter's
    # reply, served by a pymodbus thread of this process; at the default 5 ms switch interval
    # that thread waits for the interpreter lock behind the other boards at every step of a
    # transaction, and the Modbus boards set the pace of the whole community.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    from host_tools.sim.community import Household

    houses = {}
    for entry in spec["houses"]:
        house = Household(entry["plan"], spec["flash_root"], spec["options"],
                          spec["world_start_s"], board_cfg=entry["board_cfg"])
        house.device_id = entry["device_id"]
        houses[entry["plan"]["index"]] = house
    ops = _Ops(houses)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the run has gone: power the boards off and leave
            ops.close()
            return
        try:
            result = (True, getattr(ops, op)(*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back as a message
            result = (False, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(result)
        except (OSError, EOFError):
            ops.close()
            return
        if op == "close":
            return


class _Ops:
    """The requests a worker answers (names are the wire's op names)."""

    def __init__(self, houses):
        self.houses = houses

    def start(self, community, mqtt_url, passwords, start_epoch_s):
        for index, house in self.houses.items():
            house.start(community, mqtt_url, passwords[index], start_epoch_s)

    def now(self):
        return {index: house.meter.now_s() for index, house in self.houses.items()
                if house.meter is not None}

    def speed(self, index, speed):
        self.houses[index].meter.board.clock.set_speed(speed)

    def stop_board(self, index):
        self.houses[index].stop_board()

    def truth(self, index, t_s):
        return self.houses[index].truth(t_s)

    def close(self):
        texts = {}
        for index, house in self.houses.items():
            house.stop_board()
            if house.meter is not None:
                try:
                    house.meter.stop()
                finally:
                    texts[index] = house.meter.text()
        return texts
