"""The double-entry ledger: accounts, atomic idempotent transfers, balances.

Conventions (one place, because everything else relies on them):
- A leg `(debit, credit, asset, amount)` moves `amount` (> 0) of `asset` out
  of the debit account into the credit account; an account's balance is
  credits − debits, so every asset sums to zero over all accounts.
- `mint` is only ever debited and `burn` only credited: −balance(mint) is what
  was minted, balance(burn) what was burned, and the other accounts together
  hold exactly minted − burned.
- A member's money account may go negative: that is a receivable, the bill for
  energy the grid supplied when the member's WATT ran out (ECONOMICS §1 "billed
  in money"). WATT and TSL never go below zero anywhere but mint.
- Amounts are Python ints in Wh, µ or TSL units; nothing else is accepted.

Every public method is one database transaction: all of its entries or none.
Every transfer has an id with a UNIQUE constraint; a replay with the same id
and the same legs returns the original result and writes nothing.

Speed (the exchange settles every fill here): `batch()` opens one transaction
for many transfers and commits them together. A transfer checks its limits on
the balances it would leave before it writes anything, so a refused one has
nothing to roll back and the others stand; it writes in four statements
(transfer, entries, balances, chain head) and needs no savepoint, which cost
as much again. A database error part-way through its writes cannot be undone
alone: it dooms the transaction (`Database.abort`). While a write transaction holds
the chain lock nobody else can book, so balances, the chain head and the
first open interval read under it are cached. Balances stay cached into the
next transaction only if the chain head is unchanged when it takes the lock
(every booking moves the head); any rollback drops the cache. Account kinds
never change and are cached until a rollback. The cache only ever holds what
the balances table holds, so balances remain what the entries say.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time

from host_tools.settlement import checkpoints, rules
from host_tools.settlement.config import SettlementConfig
from host_tools.settlement.errors import (
    CapExceeded,
    ConfigError,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidTransfer,
    LedgerError,
    MemberExists,
    SchemaError,
    UnknownAccount,
)
from host_tools.settlement.store import Database, parse_url

WATT, TSL, MONEY = "WATT", "TSL", "money"
# Room for the incentive token (ECONOMICS §7): add it here and to the checks.
ASSETS = (WATT, TSL, MONEY)

GRID, EDUCATION_POOL, NETWORK_OPERATOR = "grid", "education_pool", "network_operator"
MINT, BURN, FEE_POOL = "mint", "burn", "fee_pool"
SYSTEM_ACCOUNTS = {
    GRID: "grid", EDUCATION_POOL: "education_pool", NETWORK_OPERATOR: "network_operator",
    MINT: "mint", BURN: "burn", FEE_POOL: "clearing",
}
# Accounts only the ledger's own rules may touch (minting, burning, fee clearing, holds).
_RESTRICTED_KINDS = ("mint", "burn", "clearing", "hold")
_UNFLOORED_KINDS = ("mint", "burn", "grid")

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Public ids never contain '#'; the ledger's own transfers start with '#', so
# a caller can never take (and block) an id the rules will need.
_TRANSFER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.@/+=-]{0,159}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_AMOUNT_MAX = 2**62
# Cached balances (one per account and asset touched) and account kinds, each at most.
_CACHE_ENTRIES_MAX = 1_000_000


def member_account(name):
    return f"member:{name}"


def storage_account(name):
    return f"storage:{name}"


def hold_account(hold_id):
    return f"hold:{hold_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Leg:
    """One movement: `amount` of `asset` from `debit` to `credit`."""

    debit: str
    credit: str
    asset: str
    amount: int


@dataclasses.dataclass(frozen=True)
class TransferResult:
    transfer_id: str
    kind: str
    interval_start_s: int
    first_seq: int
    entry_count: int
    replayed: bool = False


# One encoder for every canonical text (what json.dumps builds anew on each call).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
_sha256 = hashlib.sha256


def _compact_encoder(sort_keys):
    """A canonical JSON encoder (compact, ASCII) built once, for texts encoded per fill.

    `JSONEncoder.encode` builds its C encoder again on every call, which costs as much as the
    encoding itself, four times per fill. Circular references are still refused: the
    encoder's markers are left behind by a failed call, so they are cleared after one.
    """
    make = json.encoder.c_make_encoder
    if make is None:
        return json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"),
                                ensure_ascii=True).encode
    markers = {}
    encode = make(markers, json.JSONEncoder().default, json.encoder.encode_basestring_ascii,
                  None, ":", ",", sort_keys, False, True)

    def compact(value):
        try:
            return "".join(encode(value, 0))
        except BaseException:
            markers.clear()
            raise

    return compact


# `checkpoints.entry_leaf`'s text (a test holds the two equal): the chain's payload.
_entry_leaf = _compact_encoder(sort_keys=False)
_canonical_fast = _compact_encoder(sort_keys=True)


def _digest(kind, rows):
    """What makes a replay identical: the kind and the legs, in order."""
    return _sha256(_canonical_fast([kind, rows]).encode()).hexdigest()


def _deltas(rows):
    """Each (account, asset)'s net change from these legs, in first-touched order."""
    deltas = {}
    for debit, credit, asset, amount in rows:
        deltas[(debit, asset)] = deltas.get((debit, asset), 0) - amount
        deltas[(credit, asset)] = deltas.get((credit, asset), 0) + amount
    return deltas


def validate_member_name(name):
    if not isinstance(name, str) or not _MEMBER_NAME.match(name):
        raise InvalidTransfer(
            f"invalid member name {name!r}: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def validate_transfer_id(transfer_id):
    if not isinstance(transfer_id, str) or not _TRANSFER_ID.match(transfer_id):
        raise InvalidTransfer(
            f"invalid transfer id {transfer_id!r}: 1-160 of A-Z a-z 0-9 : _ . @ / + = -")
    return transfer_id


def validate_amount(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTransfer(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= _AMOUNT_MAX:
        raise InvalidTransfer(f"{name} must be between {minimum} and {_AMOUNT_MAX}, got {value}")
    return value


class Ledger:
    """The settlement ledger over one database (SQLite file or PostgreSQL)."""

    def __init__(self, db, config, key_path=None, clock_ms=None):
        self.db = db
        self.config = config
        self.key_path = key_path
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._signing_key = None
        self._kinds = {}  # account -> kind; valid while db.rollbacks == _kinds_rollbacks
        self._kinds_rollbacks = db.rollbacks
        self._locked = None  # (transaction serial, rollbacks) under which lock() ran
        self._locked_epoch = None  # db.epoch when lock() ran: the cache is valid while it holds
        self._cache = {}  # (account, asset) -> balance, plus the chain head and next open interval

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, url, config=None, key_path=None, clock_ms=None, create=True):
        """Open (and on first use create) the ledger at `url`.

        `config` is stored at creation; later opens use the stored rules, and a
        different `config` is refused so two processes never apply two rule sets.
        `create=False` refuses to create a missing SQLite file (for read-only commands).
        """
        if config is not None and not isinstance(config, SettlementConfig):
            raise ConfigError("config must be a SettlementConfig")
        backend, target = parse_url(url)
        if backend == "sqlite" and not create and target != ":memory:" and not os.path.exists(target):
            raise LedgerError(f"no ledger at {target}")
        db = Database(url)
        try:
            ledger = cls(db, config or SettlementConfig(), key_path=key_path, clock_ms=clock_ms)
            with db.transaction():
                created = db.ensure_schema()
                if created:
                    if not create:
                        raise LedgerError("the database holds no ledger")
                    ledger._genesis()
                else:
                    stored = SettlementConfig.from_dict(json.loads(db.get_meta("config") or "null"))
                    if config is not None and config != stored:
                        raise ConfigError(
                            "this ledger was created with a different settlement config; "
                            "rules cannot change silently")
                    ledger.config = stored
        except db.errors as exc:
            db.close()
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SchemaError(f"the database does not hold a usable ledger: {first_line}") from None
        except BaseException:
            db.close()
            raise
        if ledger.key_path is None and db.backend == "sqlite" and db.path != ":memory:":
            ledger.key_path = db.path + ".service-key.pem"
        return ledger

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _genesis(self):
        """System accounts, the chain's start and the one TSL mint of the fixed supply."""
        self.db.set_meta("config", _canonical(self.config.to_dict()))
        now_interval_s = self._booking_interval(None)
        for name, kind in SYSTEM_ACCOUNTS.items():
            self.db.execute("INSERT INTO accounts (name, kind, created_interval_s) VALUES (?, ?, ?)",
                            (name, kind, now_interval_s))
        self.db.execute("INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, ?)",
                        (checkpoints.ZERO_HASH,))
        if self.config.tsl_supply:
            self._book("#genesis:tsl", "genesis", now_interval_s,
                       [Leg(MINT, EDUCATION_POOL, TSL, self.config.tsl_supply)], {})

    # --- accounts ---------------------------------------------------------------------------

    def add_member(self, name, storage_capacity_wh=0, at_s=None):
        """Create a member (and, with capacity, their storage-owner account); grant TSL.

        The grant comes from the education pool and is smaller if the pool runs low,
        never minted: the TSL supply is fixed.
        """
        validate_member_name(name)
        validate_amount("storage_capacity_wh", storage_capacity_wh, minimum=0)
        with self.db.transaction():
            self.lock()
            interval_s = self._booking_interval(at_s)
            account = member_account(name)
            inserted = self.db.execute(
                "INSERT INTO accounts (name, kind, member, created_interval_s) VALUES (?, 'member', ?, ?) "
                "ON CONFLICT (name) DO NOTHING", (account, name, interval_s)).rowcount
            if not inserted:
                raise MemberExists(f"member {name} already exists")
            if storage_capacity_wh:
                self.db.execute(
                    "INSERT INTO accounts (name, kind, member, storage_capacity_wh, created_interval_s) "
                    "VALUES (?, 'storage_owner', ?, ?, ?)",
                    (storage_account(name), name, storage_capacity_wh, interval_s))
            grant = min(self.config.tsl_new_member_grant, self.balance(EDUCATION_POOL, TSL))
            if grant:
                self._book(f"#grant:{name}", "grant", interval_s,
                           [Leg(EDUCATION_POOL, account, TSL, grant)], {"member": name})
        return {"member": name, "account": account, "storage_capacity_wh": storage_capacity_wh,
                "tsl_granted": grant, "interval_start_s": interval_s}

    def set_storage_capacity(self, name, storage_capacity_wh):
        """Register or change the storage capacity a member owns (0 keeps the account)."""
        validate_amount("storage_capacity_wh", storage_capacity_wh, minimum=0)
        with self.db.transaction():
            self.lock()
            self._require_member(name)
            self.db.execute(
                "INSERT INTO accounts (name, kind, member, storage_capacity_wh, created_interval_s) "
                "VALUES (?, 'storage_owner', ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "storage_capacity_wh = excluded.storage_capacity_wh",
                (storage_account(name), name, storage_capacity_wh, self._booking_interval(None)))

    def members(self):
        """Every member with balances, cap and owned storage capacity, by name."""
        rows = self.db.all(
            "SELECT a.member, COALESCE(s.storage_capacity_wh, 0) FROM accounts a "
            "LEFT JOIN accounts s ON s.name = 'storage:' || a.member "
            "WHERE a.kind = 'member' ORDER BY a.member")
        result = []
        for name, capacity_wh in rows:
            balances = self.balances(member_account(name))
            result.append({"name": name, "storage_capacity_wh": capacity_wh,
                           "watt_wh": balances[WATT], "tsl": balances[TSL],
                           "money_micro": balances[MONEY],
                           "cap_wh": rules.cap_wh(balances[TSL], self.config)})
        return result

    def is_member(self, name):
        if not isinstance(name, str):
            return False
        account = f"member:{name}"
        if self._kinds_rollbacks == self.db.rollbacks:
            # The exchange asks on every order: answer from the cache without a call.
            kind = self._kinds.get(account)
            if kind is not None:
                return kind == "member"
        return self._kind_or_none(account) == "member"

    def member_names(self):
        return [row[0] for row in self.db.all(
            "SELECT member FROM accounts WHERE kind = 'member' ORDER BY member")]

    def storage_owners(self):
        """(account, capacity_wh) of every storage owner with capacity, by account name."""
        return [(row[0], row[1]) for row in self.db.all(
            "SELECT name, storage_capacity_wh FROM accounts WHERE kind = 'storage_owner' "
            "AND storage_capacity_wh > 0 ORDER BY name")]

    def account_kind(self, account):
        kind = self._kind_or_none(account)
        if kind is None:
            raise UnknownAccount(f"no account {account!r}")
        return kind

    def _kind_or_none(self, account):
        """An account's kind, cached: kinds never change once an account exists."""
        db = self.db
        if self._kinds_rollbacks != db.rollbacks:
            # A rolled-back transaction may have created an account we cached.
            self._kinds = {}
            self._kinds_rollbacks = db.rollbacks
        kind = self._kinds.get(account)
        if kind is None:
            row = db.one("SELECT kind FROM accounts WHERE name = ?", (account,))
            if row is None:
                return None
            if len(self._kinds) >= _CACHE_ENTRIES_MAX:
                self._kinds = {}
            kind = self._kinds[account] = row[0]
        return kind

    def _require_member(self, name):
        if not self.is_member(name):
            raise UnknownAccount(f"no member {name!r}")

    # --- balances ---------------------------------------------------------------------------

    def balance(self, account, asset):
        if asset not in ASSETS:
            raise InvalidTransfer(f"unknown asset {asset!r}")
        if self._locked_epoch == self.db.epoch:  # `_locked_cache`, inlined: asked per order
            cache = self._cache
            amount = cache.get((account, asset))
            if amount is not None:
                return amount
        else:
            cache = None
        row = self.db.one("SELECT amount FROM balances WHERE account = ? AND asset = ?",
                          (account, asset))
        amount = 0 if row is None else row[0]
        if cache is not None:
            cache[(account, asset)] = amount
        return amount

    def balances(self, account):
        found = dict(self.db.all("SELECT asset, amount FROM balances WHERE account = ?", (account,)))
        return {asset: found.get(asset, 0) for asset in ASSETS}

    def cap_wh(self, member):
        """The member's WATT cap now: min(Bmax, TSL held × quota)."""
        if not self.is_member(member):
            raise UnknownAccount(f"no member {member!r}")
        return rules.cap_wh(self.balance(f"member:{member}", TSL), self.config)

    # --- transfers --------------------------------------------------------------------------

    def transfer(self, transfer_id, legs, *, at_s=None, kind="transfer", meta=None,
                 allow_receivable=False):
        """Book `legs` atomically under `transfer_id` (the exchange's entry point).

        Refused (nothing written): unknown or restricted accounts (mint, burn,
        clearing, holds), a WATT/TSL balance going negative, a member's money
        going below −member_credit_limit_micro (unless `allow_receivable`: the
        member is billed, as for grid energy), a member's WATT above their cap.
        Booked into the interval of `at_s` (event time), or the first open
        interval if that one is closed.

        The limits are checked on the balances the transfer would leave, before
        anything is written, so a refusal inside a batch (or any caller's
        transaction) has nothing to roll back and needs no savepoint: at one
        fill per transfer, a savepoint cost as much as the transfer's writes. A
        database error part-way through the writes cannot be undone alone and
        dooms the enclosing transaction (`Database.abort`).
        """
        validate_transfer_id(transfer_id)
        if not isinstance(kind, str) or not _KIND.match(kind) or kind in _RESERVED_KINDS:
            raise InvalidTransfer(f"invalid transfer kind {kind!r}")
        rows = self._validate_legs(legs)
        meta_text = self._validate_meta(meta)
        if self.db.in_transaction:
            # Joining the caller's transaction (a batch): what `transaction()` would do, minus
            # the context manager, which costs more than the rest of a fill's checks.
            return self._transfer(transfer_id, rows, at_s, kind, meta_text, allow_receivable)
        with self.db.transaction():
            return self._transfer(transfer_id, rows, at_s, kind, meta_text, allow_receivable)

    def _transfer(self, transfer_id, rows, at_s, kind, meta_text, allow_receivable):
        """`transfer` on validated input, inside a transaction."""
        self.lock()
        kind_of = self.account_kind
        for debit, credit, _, _ in rows:
            if kind_of(debit) in _RESTRICTED_KINDS or kind_of(credit) in _RESTRICTED_KINDS:
                account = debit if kind_of(debit) in _RESTRICTED_KINDS else credit
                raise InvalidTransfer(f"account {account} is not open to transfers")
        interval_s = self._booking_interval(at_s)
        digest = _digest(kind, rows)
        deltas = _deltas(rows)
        refusal = self._limit_refusal(rows, allow_receivable, deltas)
        if refusal is not None:
            # A replay of a transfer booked when the limits allowed it is still a replay.
            replayed = self._replayed(transfer_id, digest)
            if replayed is None:
                raise refusal
            return replayed
        try:
            result = self._write(transfer_id, kind, interval_s, rows, digest, meta_text, deltas)
        except BaseException:
            self.db.abort()
            raise
        if result is None:
            result = self._replayed(transfer_id, digest)
        return result

    @contextlib.contextmanager
    def batch(self):
        """Book many transfers in one database transaction, each atomic on its own.

        Every `transfer` inside keeps its own id, idempotency and checks, and is refused
        before it writes: a refused one leaves nothing behind and raises as usual, the rest
        commit together when the block ends (an exception escaping the block rolls back
        all, and so does a transfer whose writes failed part-way in the database).
        This is how the exchange settles one matching run's fills: one commit, not one
        per fill. The chain lock is held for the whole block, so keep batches short.
        """
        with self.db.transaction():
            self.lock()
            yield self

    def _validate_legs(self, legs):
        """The legs as checked (debit, credit, asset, amount) tuples."""
        if not isinstance(legs, list | tuple) or not 1 <= len(legs) <= self.config.transfer_legs_max:
            raise InvalidTransfer(f"a transfer needs 1 to {self.config.transfer_legs_max} legs")
        checked = []
        for leg in legs:
            if isinstance(leg, Leg):
                debit, credit, asset, amount = leg.debit, leg.credit, leg.asset, leg.amount
            elif isinstance(leg, list | tuple) and len(leg) == 4:
                debit, credit, asset, amount = leg
            else:
                raise InvalidTransfer("each leg is (debit, credit, asset, amount)")
            if not isinstance(debit, str) or not isinstance(credit, str) or debit == credit:
                raise InvalidTransfer(f"a leg needs two different accounts, got {debit!r}, {credit!r}")
            if asset not in ASSETS:
                raise InvalidTransfer(f"unknown asset {asset!r}; known: {', '.join(ASSETS)}")
            validate_amount("amount", amount)
            checked.append((debit, credit, asset, amount))
        return checked

    def _validate_meta(self, meta):
        """The meta's canonical JSON text (what is stored)."""
        if meta is None:
            return "{}"
        if not isinstance(meta, dict):
            raise InvalidTransfer("transfer meta must be a JSON object")
        try:
            text = _canonical_fast(meta)
        except (TypeError, ValueError) as exc:
            raise InvalidTransfer(f"transfer meta is not JSON: {exc}") from None
        if len(text) > self.config.transfer_meta_bytes_max:
            raise InvalidTransfer(f"transfer meta exceeds {self.config.transfer_meta_bytes_max} bytes")
        return text

    def lock(self):
        """Serialise writers on the chain head (call first inside a write transaction).

        Every write appends to the one hash chain anyway; taking its lock before
        reading balances means checks and writes see the same state on PostgreSQL
        (READ COMMITTED) as on SQLite (BEGIN IMMEDIATE).
        """
        db = self.db
        state = (db.transaction_serial, db.rollbacks)
        if db.in_transaction and self._locked == state:
            return  # held since earlier in this transaction (nothing rolled back since)
        head = tuple(db.one("SELECT seq, hash FROM chain_head WHERE id = 1" + db.for_update))
        if not db.in_transaction:
            return
        cache = self._cache
        if self._locked is None or self._locked[1] != db.rollbacks or cache.get("head") != head or (
                len(cache) > _CACHE_ENTRIES_MAX):
            # Someone else booked since our last transaction, or ours rolled back: start over.
            # Every booking moves the chain head, so an unchanged head means unchanged balances.
            cache = self._cache = {"head": head}
        else:
            cache.pop("next_open", None)  # a close writes no entry: read it again
        self._locked = state
        self._locked_epoch = db.epoch

    def _locked_cache(self):
        """The cache of this locked write transaction, or None outside one.

        Valid only while the transaction that took the lock is open and nothing in it
        rolled back since: then this connection is the only writer of the ledger.
        """
        if self._locked_epoch == self.db.epoch:
            return self._cache
        return None

    def _booking_interval(self, at_s):
        """The interval a transfer is labelled with: its event time's, or the first open one."""
        if at_s is None:
            at_s = self.clock_ms() // 1000
        validate_amount("at_s", at_s, minimum=0)
        interval_s = rules.interval_start_of(at_s, self.config.interval_s)
        next_open = self.next_open_interval()
        return interval_s if next_open is None else max(interval_s, next_open)

    def next_open_interval(self):
        """The first interval after the last closed one (None before the first close)."""
        cache = self._locked_cache()
        if cache is not None and "next_open" in cache:
            return cache["next_open"]
        row = self.db.one("SELECT MAX(interval_start_s) FROM checkpoints")
        result = None if row is None or row[0] is None else row[0] + self.config.interval_s
        if cache is not None:
            cache["next_open"] = result
        return result

    def _forget_next_open(self):
        """A checkpoint was written: the next open interval moved."""
        self._cache.pop("next_open", None)

    def _book(self, transfer_id, kind, interval_start_s, legs, meta):
        """Append one transfer's entries to the chain; the caller holds a transaction.

        No limits are checked here: the ledger's own rules call it and check what they need
        (`_enforce_limits`) afterwards, inside their transaction.
        """
        rows = [(leg.debit, leg.credit, leg.asset, leg.amount) for leg in legs]
        digest = _digest(kind, rows)
        result = self._write(transfer_id, kind, interval_start_s, rows, digest, _canonical(meta),
                             _deltas(rows))
        return self._replayed(transfer_id, digest) if result is None else result

    def _replayed(self, transfer_id, digest):
        """The booked transfer under this id as a replay, None if there is none.

        Raises `IdempotencyConflict` when the id was booked with other legs.
        """
        row = self.db.one("SELECT kind, interval_start_s, first_seq, leg_count, digest "
                          "FROM transfers WHERE transfer_id = ?", (transfer_id,))
        if row is None:
            return None
        if row[4] != digest:
            raise IdempotencyConflict(
                f"transfer id {transfer_id} was already used for different legs")
        return TransferResult(transfer_id, row[0], row[1], row[2], row[3], replayed=True)

    def _write(self, transfer_id, kind, interval_start_s, rows, digest, meta_text, deltas):
        """Write a transfer, its entries, balances and the chain head; None if the id is taken.

        Four statements whatever the number of legs: the transfer, its entries and its balance
        changes (one `executemany` each), the chain head.
        """
        db = self.db
        cache = self._locked_cache()
        head = None if cache is None else cache.get("head")
        if head is None:
            head = db.one("SELECT seq, hash FROM chain_head WHERE id = 1" + db.for_update)
        seq, prev_hash = head
        inserted = db.execute(
            "INSERT INTO transfers (transfer_id, kind, interval_start_s, first_seq, leg_count, digest, meta) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (transfer_id) DO NOTHING",
            (transfer_id, kind, interval_start_s, seq + 1, len(rows), digest, meta_text),
        ).rowcount
        if not inserted:
            return None
        first_seq = seq + 1
        if rows:
            entries = []
            for index, (debit, credit, asset, amount) in enumerate(rows):
                seq += 1
                leaf = _entry_leaf([seq, transfer_id, index, debit, credit, asset, amount,
                                    interval_start_s]).encode()
                entry_hash = checkpoints.chain_hash(prev_hash, leaf)
                entries.append((seq, transfer_id, index, debit, credit, asset, amount,
                                interval_start_s, prev_hash, entry_hash))
                prev_hash = entry_hash
            db.executemany(
                "INSERT INTO entries (seq, transfer_id, leg, debit, credit, asset, amount, "
                "interval_start_s, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", entries)
            db.executemany(
                "INSERT INTO balances (account, asset, amount) VALUES (?, ?, ?) "
                "ON CONFLICT (account, asset) DO UPDATE SET amount = balances.amount + excluded.amount",
                [(account, asset, delta) for (account, asset), delta in deltas.items()])
            db.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev_hash))
        if cache is not None:
            cache["head"] = (seq, prev_hash)
            for key, delta in deltas.items():
                if key in cache:
                    cache[key] += delta
        return TransferResult(transfer_id, kind, interval_start_s, first_seq, len(rows))

    def _enforce_limits(self, legs, allow_receivable=False):
        """Floors of every debited account, caps of every member credited WATT.

        Checked after writing, inside the transaction: raising rolls the writes back,
        and the check sees the transfer's end state (a swap within caps is fine).
        """
        refusal = self._limit_refusal(
            [(leg.debit, leg.credit, leg.asset, leg.amount) for leg in legs], allow_receivable)
        if refusal is not None:
            raise refusal

    def _limit_refusal(self, rows, allow_receivable=False, deltas=None):
        """The error the limits raise for these legs, or None.

        Judges the balances plus `deltas` (the transfer's own changes, when it is not written
        yet), so the same rules serve a check before writing and one after.
        """
        for account, asset in sorted({(debit, asset) for debit, _, asset, _ in rows}):
            kind = self.account_kind(account)
            if kind in _UNFLOORED_KINDS or (allow_receivable and kind == "member" and asset == MONEY):
                continue
            floor = -self.config.member_credit_limit_micro if (kind, asset) == ("member", MONEY) else 0
            balance = self.balance(account, asset)
            if deltas is not None:
                balance += deltas.get((account, asset), 0)
            if balance < floor:
                return InsufficientBalance(
                    f"{account} would hold {balance} {asset}, below its floor of {floor}")
        for account in sorted({credit for _, credit, asset, _ in rows if asset == WATT}):
            if self.account_kind(account) != "member":
                continue
            balance = self.balance(account, WATT)
            tsl = self.balance(account, TSL)
            if deltas is not None:
                balance += deltas.get((account, WATT), 0)
                tsl += deltas.get((account, TSL), 0)
            cap = rules.cap_wh(tsl, self.config)
            if balance > cap:
                return CapExceeded(f"{account} would hold {balance} Wh, above its cap of {cap} Wh")
        return None

    def transfer_info(self, transfer_id):
        """A booked transfer with its legs, or None."""
        row = self.db.one("SELECT kind, interval_start_s, first_seq, leg_count, meta FROM transfers "
                          "WHERE transfer_id = ?", (transfer_id,))
        if row is None:
            return None
        legs = self.db.all("SELECT debit, credit, asset, amount FROM entries WHERE transfer_id = ? "
                           "ORDER BY leg", (transfer_id,))
        return {"transfer_id": transfer_id, "kind": row[0], "interval_start_s": row[1],
                "first_seq": row[2], "legs": [Leg(*leg) for leg in legs], "meta": json.loads(row[4])}

    # --- signing ----------------------------------------------------------------------------

    def signing_key(self):
        """The service key (created on first use), checked against the one the ledger knows."""
        if self._signing_key is None:
            if self.key_path is None:
                raise LedgerError("no service key configured: pass key_path to Ledger.open")
            key = checkpoints.load_or_create_signing_key(self.key_path)
            pem = checkpoints.public_key_pem(key.public_key())
            known = self.db.get_meta("service_public_key")
            if known is not None and known != pem:
                raise checkpoints.KeyFileError(
                    f"service key {self.key_path} is not the key this ledger's checkpoints are signed with")
            self._signing_key = key
        return self._signing_key

    # --- delegated features -----------------------------------------------------------------

    def settle_energy(self, interval_start_s, metered):
        """Mint and burn one interval's energy now; the market trades before the close."""
        from host_tools.settlement import intervals

        return intervals.settle_energy(self, interval_start_s, metered)

    def settle_interval(self, interval_start_s, metered):
        """Apply ECONOMICS §1–§3 to one interval and close it (see `intervals`)."""
        from host_tools.settlement import intervals

        return intervals.settle_interval(self, interval_start_s, metered)

    def book_correction(self, correction_id, original_interval_s, member, import_wh=0, export_wh=0):
        """Late energy of a closed interval, booked into the first open one."""
        from host_tools.settlement import intervals

        return intervals.book_correction(self, correction_id, original_interval_s, member,
                                         import_wh, export_wh)

    def hold(self, hold_id, member, amount_micro, at_s=None):
        """Set money aside for an EV session (see `holds`)."""
        from host_tools.settlement import holds

        return holds.place(self, hold_id, member, amount_micro, at_s)

    def capture(self, hold_id, payments, at_s=None):
        """Pay from a hold and release the rest, in one transaction."""
        from host_tools.settlement import holds

        return holds.capture(self, hold_id, payments, at_s)

    def release(self, hold_id, at_s=None):
        """Return a whole open hold to its member."""
        from host_tools.settlement import holds

        return holds.release(self, hold_id, at_s)

    def check(self):
        """Recompute every invariant from the entries; returns an `audit.CheckReport`."""
        from host_tools.settlement import audit

        return audit.check(self)

    def verify_checkpoints(self, public_key=None):
        """Recompute chain, roots and signatures; returns an `audit.VerifyReport`."""
        from host_tools.settlement import audit

        return audit.verify_checkpoints(self, public_key)


_RESERVED_KINDS = ("genesis", "grant", "mint", "burn", "grid_buy", "feed_in", "storage_fee",
                   "correction", "hold", "capture", "release")
