"""`ledger check` and `ledger verify-checkpoints`: recompute everything from entries.

Nothing here trusts a derived table: balances, caps and checkpoints are
recomputed from the entries and compared, and the first mismatch is reported
precisely enough to find the row. Both walk the entries as a stream, so memory
grows with the number of accounts, not of entries.
"""
import dataclasses
import hashlib

from host_tools.settlement import checkpoints as chain
from host_tools.settlement import merkle, rules
from host_tools.settlement.ledger import (
    ASSETS,
    BURN,
    FEE_POOL,
    GRID,
    MINT,
    MONEY,
    TSL,
    WATT,
)

_PROBLEMS_MAX = 50
_NEVER_NEGATIVE_EXEMPT = ("mint", "burn", "grid")


@dataclasses.dataclass
class CheckReport:
    entries: int = 0
    accounts: int = 0
    checkpoints: int = 0
    problems: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def add(self, problem):
        if len(self.problems) < _PROBLEMS_MAX:
            self.problems.append(problem)


def check(ledger):
    """Every invariant of the issue, recomputed from the entries."""
    db = ledger.db
    report = CheckReport()
    kinds = dict(db.all("SELECT name, kind FROM accounts"))
    report.accounts = len(kinds)
    cap_points = {row[0]: row[1] for row in db.all("SELECT last_seq, number FROM checkpoints")}
    report.checkpoints = len(cap_points)
    balances = {}
    debits = dict.fromkeys(ASSETS, 0)
    credits = dict.fromkeys(ASSETS, 0)
    current_transfer, touched = None, set()
    rows = db.stream("SELECT seq, transfer_id, debit, credit, asset, amount FROM entries ORDER BY seq")
    for seq, transfer_id, debit, credit, asset, amount in rows:
        if transfer_id != current_transfer:
            _check_floors(report, kinds, balances, touched, current_transfer)
            current_transfer, touched = transfer_id, set()
        report.entries += 1
        if asset not in ASSETS:
            report.add(f"entry {seq}: unknown asset {asset!r}")
            continue
        debits[asset] += amount
        credits[asset] += amount
        balances[(debit, asset)] = balances.get((debit, asset), 0) - amount
        balances[(credit, asset)] = balances.get((credit, asset), 0) + amount
        touched.update(((debit, asset), (credit, asset)))
        if kinds.get(credit) == "mint" or kinds.get(debit) == "burn":
            report.add(f"entry {seq}: {'mint credited' if kinds.get(credit) == 'mint' else 'burn debited'}")
        if seq in cap_points:
            _check_floors(report, kinds, balances, touched, transfer_id)
            touched = set()
            _check_caps(ledger, report, kinds, balances, cap_points[seq])
    _check_floors(report, kinds, balances, touched, current_transfer)
    for asset in ASSETS:
        if debits[asset] != credits[asset]:
            report.add(f"{asset}: debits {debits[asset]} != credits {credits[asset]}")
        total = sum(amount for (_, a), amount in balances.items() if a == asset)
        if total:
            report.add(f"{asset}: balances sum to {total}, not 0")
    _check_supply(ledger, report, balances)
    stored = {(account, asset): amount for account, asset, amount in
              db.all("SELECT account, asset, amount FROM balances")}
    for key in sorted(set(stored) | set(balances)):
        if stored.get(key, 0) != balances.get(key, 0):
            report.add(f"balance of {key[0]} in {key[1]}: stored {stored.get(key, 0)}, "
                       f"entries give {balances.get(key, 0)}")
    _check_holds(ledger, report, balances)
    return report


def _check_floors(report, kinds, balances, touched, transfer_id):
    """After each whole transfer: WATT/TSL never negative; money only for members and the grid."""
    for account, asset in sorted(touched):
        kind = kinds.get(account)
        if kind is None:
            report.add(f"transfer {transfer_id}: unknown account {account}")
        elif kind in _NEVER_NEGATIVE_EXEMPT or (kind == "member" and asset == MONEY):
            continue
        elif balances.get((account, asset), 0) < 0:
            report.add(f"transfer {transfer_id}: {account} went to "
                       f"{balances[(account, asset)]} {asset}")


def _check_caps(ledger, report, kinds, balances, number):
    """At each interval end: every member's WATT within [0, cap]."""
    for account, kind in kinds.items():
        if kind != "member":
            continue
        balance = balances.get((account, WATT), 0)
        cap = rules.cap_wh(max(balances.get((account, TSL), 0), 0), ledger.config)
        if not 0 <= balance <= cap:
            report.add(f"checkpoint {number}: {account} holds {balance} Wh, outside [0, {cap}]")


def _check_supply(ledger, report, balances):
    minted = -balances.get((MINT, WATT), 0)
    burned = balances.get((BURN, WATT), 0)
    held = sum(amount for (account, asset), amount in balances.items()
               if asset == WATT and account not in (MINT, BURN))
    if held != minted - burned:
        report.add(f"WATT: accounts hold {held} Wh, minted − burned is {minted - burned} Wh")
    tsl_minted = -balances.get((MINT, TSL), 0)
    if tsl_minted != ledger.config.tsl_supply:
        report.add(f"TSL: {tsl_minted} minted, the fixed supply is {ledger.config.tsl_supply}")
    if balances.get((BURN, TSL), 0):
        report.add("TSL: some was burned; the supply is fixed")
    for account in (MINT, BURN, FEE_POOL):
        if balances.get((account, MONEY), 0):
            report.add(f"money: {account} holds {balances[(account, MONEY)]} µ; only the grid "
                       "may bring money in or take it out")
    for asset in ASSETS:
        if balances.get((FEE_POOL, asset), 0):
            report.add(f"{FEE_POOL} holds {balances[(FEE_POOL, asset)]} {asset}; it must clear to 0")
    outside_grid = sum(amount for (account, asset), amount in balances.items()
                       if asset == MONEY and account != GRID)
    if outside_grid != -balances.get((GRID, MONEY), 0):
        report.add("money: the community's money does not mirror the grid account")


def _check_holds(ledger, report, balances):
    for hold_id, amount, captured, state in ledger.db.all(
            "SELECT hold_id, amount_micro, captured_micro, state FROM holds"):
        held = balances.get((f"hold:{hold_id}", MONEY), 0)
        expected = amount if state == "open" else 0
        if held != expected:
            report.add(f"hold {hold_id} ({state}) holds {held} µ, expected {expected} µ")
        if captured > amount:
            report.add(f"hold {hold_id}: captured {captured} µ of {amount} µ")


@dataclasses.dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    key_source: str = ""
    problem: str | None = None
    last_checkpoint_hash: str = chain.ZERO_HASH

    @property
    def ok(self):
        return self.problem is None


def verify_checkpoints(ledger, public_key=None):
    """Recompute the hash chain, every checkpoint's root, links and signature.

    `public_key` (a cryptography P-256 public key) is the trusted service key;
    without it the key recorded in the ledger is used (consistency, not trust).
    Stops at the first mismatch and names it.
    """
    db = ledger.db
    report = VerifyReport(key_source="given key" if public_key is not None else "key recorded in the ledger")
    if public_key is None:
        pem = db.get_meta("service_public_key")
        public_key = chain.public_key_from_pem(pem) if pem else None
    marks = db.all("SELECT number, interval_start_s, first_seq, last_seq, entry_count, merkle_root, "
                   "chain_hash, prev_checkpoint_hash, closed_at_ms, body, hash, signature "
                   "FROM checkpoints ORDER BY number")
    if marks and public_key is None:
        report.problem = "checkpoints exist but no service public key is known"
        return report
    by_last = {}
    expected_first = 1
    for row in marks:
        if row[2] != expected_first or row[3] < row[2] - 1:
            report.problem = (f"checkpoint {row[0]}: covers entries {row[2]}..{row[3]}, "
                              f"expected to start at {expected_first}")
            return report
        by_last.setdefault(row[3], []).append(row)
        expected_first = row[3] + 1
    prev_hash = chain.ZERO_HASH
    leaf_hashes = []
    # Empty checkpoints before the first entry sit at last_seq 0.
    problem = _verify_marks(by_last.pop(0, []), leaf_hashes, prev_hash, public_key, report)
    if problem:
        report.problem = problem
        return report
    expected_seq = 1
    rows = db.stream("SELECT seq, transfer_id, leg, debit, credit, asset, amount, interval_start_s, "
                     "prev_hash, hash FROM entries ORDER BY seq")
    for row in rows:
        seq = row[0]
        if seq != expected_seq:
            report.problem = f"entry {expected_seq} is missing (next stored entry is {seq})"
            return report
        if row[8] != prev_hash:
            report.problem = f"entry {seq}: prev_hash {row[8][:16]}… does not match entry {seq - 1}"
            return report
        leaf = chain.entry_leaf(*row[:8])
        recomputed = chain.chain_hash(prev_hash, leaf)
        if recomputed != row[9]:
            report.problem = f"entry {seq}: stored hash {row[9][:16]}…, recomputed {recomputed[:16]}…"
            return report
        prev_hash = recomputed
        leaf_hashes.append(merkle.leaf_hash(leaf))
        report.entries += 1
        expected_seq += 1
        problem = _verify_marks(by_last.pop(seq, []), leaf_hashes, prev_hash, public_key, report)
        if problem:
            report.problem = problem
            return report
    if by_last:
        number = min(row[0] for rows in by_last.values() for row in rows)
        report.problem = f"checkpoint {number} covers entries that do not exist"
        return report
    head = db.one("SELECT seq, hash FROM chain_head WHERE id = 1")
    if head is not None and (head[0], head[1]) != (expected_seq - 1, prev_hash):
        report.problem = f"chain head says entry {head[0]}, the chain ends at entry {expected_seq - 1}"
    return report


def _verify_marks(rows, leaf_hashes, chain_hash_hex, public_key, report):
    """Check the checkpoints ending at the current entry; clears `leaf_hashes` after each."""
    for row in rows:
        prev_checkpoint_hash = report.last_checkpoint_hash
        (number, interval_s, first_seq, last_seq, entry_count, root, chain_hex, prev_cp,
         closed_at_ms, body, body_hash, signature) = row
        label = f"checkpoint {number} (interval {interval_s})"
        if entry_count != len(leaf_hashes) or entry_count != last_seq - first_seq + 1:
            return f"{label}: entry count {entry_count}, the chain has {len(leaf_hashes)}"
        recomputed_root = merkle.root_from_leaf_hashes(leaf_hashes).hex()
        if root != recomputed_root:
            return f"{label}: Merkle root {root[:16]}…, recomputed {recomputed_root[:16]}…"
        expected_chain = chain_hash_hex if last_seq else chain.ZERO_HASH
        if chain_hex != expected_chain:
            return f"{label}: chain hash {chain_hex[:16]}… does not match entry {last_seq}"
        if prev_cp != prev_checkpoint_hash:
            return f"{label}: does not link to checkpoint {number - 1}"
        expected_body = chain.checkpoint_body(number, interval_s, first_seq, last_seq, root,
                                                    chain_hex, prev_cp, closed_at_ms)
        if body.encode() != expected_body:
            return f"{label}: stored body differs from its columns"
        if hashlib.sha256(expected_body).hexdigest() != body_hash:
            return f"{label}: stored hash does not match its body"
        if not chain.signature_valid(public_key, expected_body, signature):
            return f"{label}: signature does not verify with the {report.key_source}"
        report.checkpoints += 1
        report.last_checkpoint_hash = body_hash
        leaf_hashes.clear()
    return None
