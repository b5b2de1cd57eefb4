"""Helpers for the ingest, registry and service tests (no tests here): a ledger with members and
enrolled simulated meters on SQLite or PostgreSQL."""
import json

import pytest

from host_tools.bench.ingest import SimDevice
from host_tools.settlement.ingest import Ingest
from host_tools.settlement.ledger import Ledger
from host_tools.settlement.registry import Registry
from tests.support.services import wipe_database

T0_S = 1_790_000_100 - 1_790_000_100 % 900  # an interval boundary


class Rig:
    """A ledger, registry and ingest over one URL, with enrolled simulated meters."""

    def __init__(self, url, key_path, members=("alice", "bob"), devices_per_member=1,
                 grace_s=None):
        self.url = url
        self.key_path = key_path
        self.ledger = Ledger.open(url, key_path=str(key_path))
        self.registry = Registry(self.ledger)
        self.devices = {}
        seed = 0
        for member in members:
            self.ledger.add_member(member)
            for _ in range(devices_per_member):
                device = SimDevice(seed=seed)
                seed += 1
                self.registry.enroll(device.device_id, device.spki_der, "meter", member)
                self.devices.setdefault(member, []).append(device)
        self.ingest = Ingest(self.ledger, self.registry, "demo", grace_s=grace_s)

    def device(self, member, index=0):
        return self.devices[member][index]

    def send(self, device, text, at_s=0):
        payload = text.encode() if isinstance(text, str) else text
        return self.ingest.handle(device.topic, payload, at_s)

    def snapshot(self):
        """Everything the ledger and the settlement state hold (not the audit log)."""
        db = self.ledger.db
        return {
            "entries": db.all("SELECT seq, hash FROM entries ORDER BY seq"),
            "balances": db.all("SELECT account, asset, amount FROM balances ORDER BY 1, 2"),
            "records": db.all("SELECT device_id, counter, state FROM ingest_records ORDER BY 1, 2"),
            "devices": db.all("SELECT * FROM ingest_devices ORDER BY 1"),
            "open": db.all("SELECT * FROM ingest_open_energy ORDER BY 1, 2"),
        }

    def close(self):
        self.ledger.close()

    @staticmethod
    def enroll_again(url, key_path, device, member):
        ledger = Ledger.open(url, key_path=str(key_path))
        try:
            Registry(ledger).enroll(device.device_id, device.spki_der, "meter", member)
        finally:
            ledger.close()


def ack_of(acks, device):
    found = [json.loads(payload)["ack"] for topic, payload in acks
             if topic == f"energo/v1/demo/{device.device_id}/ack"]
    return found[-1] if found else None


def totals(ledger):
    """Minted and burned Wh over the whole ledger (mint is only debited, burn only credited)."""
    minted = -ledger.balance("mint", "WATT")
    burned = ledger.balance("burn", "WATT")
    return minted, burned


def _energy_member(transfer_id):
    """The member of an energy step's mint or burn: `#iv:<interval>:<kind>:<member>`, with
    `:<step>` after it from an interval's second energy step on (energy that arrived after the
    first step was booked, as when two workers settle the same interval in turn)."""
    return transfer_id.split(":")[3]


def member_energy(ledger):
    """{member: [import_wh, export_wh]} the ledger settled, corrected or holds open.

    Read back from the transfers (mint amounts, burn and correction requests) and the
    ingest's open-interval sums, so it can be compared with the devices' register deltas.
    """
    db = ledger.db
    result = {}
    for transfer_id, kind, meta in db.all(
            "SELECT transfer_id, kind, meta FROM transfers "
            "WHERE kind IN ('mint', 'burn', 'correction')"):
        meta = json.loads(meta)
        if kind == "correction":
            _, member, import_wh, export_wh = meta["request"]
        elif kind == "mint":
            member = _energy_member(transfer_id)
            import_wh = 0
            export_wh = db.one("SELECT SUM(amount) FROM entries WHERE transfer_id = ?",
                               (transfer_id,))[0]
        else:
            member = _energy_member(transfer_id)
            import_wh, export_wh = meta["import_wh"], 0
        row = result.setdefault(member, [0, 0])
        row[0] += import_wh
        row[1] += export_wh
    for _, member, import_wh, export_wh in db.all("SELECT * FROM ingest_open_energy"):
        row = result.setdefault(member, [0, 0])
        row[0] += import_wh
        row[1] += export_wh
    return result


@pytest.fixture(scope="session")
def ingest_postgres_url():
    """One scratch PostgreSQL database for the ingest tests, wiped before each use."""
    from tests.conftest import need
    from tests.support import services

    admin_url = services.postgres_admin_url()
    need(services.postgres_reachable(admin_url), f"PostgreSQL not reachable at {admin_url}")
    with services.scratch_database(admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = request.getfixturevalue("ingest_postgres_url")
    wipe_database(url)
    return url


@pytest.fixture
def rig(db_url, tmp_path):
    made = Rig(db_url, tmp_path / "service-key.pem")
    yield made
    made.close()
