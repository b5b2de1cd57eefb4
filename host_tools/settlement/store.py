"""A thin database adapter: one code path for SQLite (default) and PostgreSQL.

The ledger writes portable SQL with `?` placeholders; this module translates
placeholders, opens transactions the way each engine needs to serialise
writers (SQLite `BEGIN IMMEDIATE`, PostgreSQL row locks via `FOR UPDATE`), and
creates the versioned schema on first use. Nothing here knows the rules.
"""
import contextlib
import sqlite3
import urllib.parse

from host_tools.settlement.errors import DatabaseUrlError, SchemaError

SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 10.0


class TransactionAborted(RuntimeError):
    """A write failed part-way outside a savepoint: the open transaction can only roll back.

    Not a `LedgerError` (that promises the ledger is unchanged by the refused request): the
    failed write may have left part of itself behind, so nothing more of the transaction may be
    written or committed. PostgreSQL treats any failed statement the same way.
    """

# Portable DDL: BIGINT is 64-bit on both engines; hashes are hex TEXT so both
# engines compare and return them identically.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        member TEXT,
        storage_capacity_wh BIGINT NOT NULL DEFAULT 0 CHECK (storage_capacity_wh >= 0),
        created_interval_s BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS transfers (
        transfer_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        interval_start_s BIGINT NOT NULL,
        first_seq BIGINT NOT NULL,
        leg_count INTEGER NOT NULL,
        digest TEXT NOT NULL,
        meta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS entries (
        seq BIGINT PRIMARY KEY,
        transfer_id TEXT NOT NULL REFERENCES transfers (transfer_id),
        leg INTEGER NOT NULL,
        debit TEXT NOT NULL REFERENCES accounts (name),
        credit TEXT NOT NULL REFERENCES accounts (name),
        asset TEXT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        interval_start_s BIGINT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (transfer_id, leg))""",
    "CREATE INDEX IF NOT EXISTS entries_debit ON entries (debit, asset)",
    "CREATE INDEX IF NOT EXISTS entries_credit ON entries (credit, asset)",
    """CREATE TABLE IF NOT EXISTS balances (
        account TEXT NOT NULL REFERENCES accounts (name),
        asset TEXT NOT NULL,
        amount BIGINT NOT NULL,
        PRIMARY KEY (account, asset))""",
    """CREATE TABLE IF NOT EXISTS chain_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS intervals (
        interval_start_s BIGINT PRIMARY KEY,
        input_digest TEXT NOT NULL,
        result TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        number BIGINT PRIMARY KEY,
        interval_start_s BIGINT NOT NULL UNIQUE,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        entry_count BIGINT NOT NULL,
        merkle_root TEXT NOT NULL,
        chain_hash TEXT NOT NULL,
        prev_checkpoint_hash TEXT NOT NULL,
        closed_at_ms BIGINT NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL,
        signature TEXT NOT NULL)""",
    # Mint/burn steps of an interval not yet closed (`intervals.settle_energy`): each step
    # stores the cumulative metered input it brought the interval to.
    """CREATE TABLE IF NOT EXISTS interval_energy (
        interval_start_s BIGINT NOT NULL,
        step INTEGER NOT NULL CHECK (step > 0),
        metered TEXT NOT NULL,
        totals TEXT NOT NULL,
        PRIMARY KEY (interval_start_s, step))""",
    """CREATE TABLE IF NOT EXISTS fee_carry (
        account TEXT PRIMARY KEY REFERENCES accounts (name),
        carry_micro_wh BIGINT NOT NULL CHECK (carry_micro_wh >= 0 AND carry_micro_wh < 1000000))""",
    """CREATE TABLE IF NOT EXISTS holds (
        hold_id TEXT PRIMARY KEY,
        member TEXT NOT NULL,
        amount_micro BIGINT NOT NULL CHECK (amount_micro > 0),
        captured_micro BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL)""",
]


def parse_url(url):
    """Return ("sqlite", path) or ("postgresql", url); anything else is refused."""
    if not isinstance(url, str) or not url:
        raise DatabaseUrlError("database URL is empty")
    if url.startswith("sqlite:///"):
        path = urllib.parse.unquote(url[len("sqlite:///"):])
        if not path:
            raise DatabaseUrlError("sqlite URL has no path: use sqlite:///FILE or sqlite:///:memory:")
        return "sqlite", path
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql", url
    raise DatabaseUrlError(
        f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://HOST/DB")


class Database:
    """One connection, portable SQL, reentrant transactions.

    Not thread-safe: give each worker thread its own `Database` (each process
    or thread is then serialised by the database's own locks).
    """

    def __init__(self, url):
        self.backend, target = parse_url(url)
        self.url = url
        self._depth = 0
        # Counters the ledger's caches key on: which outermost transaction is open, and how
        # many rollbacks (whole transactions or savepoints) this connection has seen.
        self.transaction_serial = 0
        self.rollbacks = 0
        # Moves whenever either of those does and when the outermost transaction ends: one
        # integer comparison tells a cache that nothing of the kind happened since it looked.
        self.epoch = 0
        self._savepoints = 0
        # Savepoints opened so far (the benchmark reports statements per trade with them).
        self.savepoint_count = 0
        # Depth (savepoint count) at which a write failed part-way, or None: see `abort`.
        self._aborted_at = None
        if self.backend == "sqlite":
            self.path = target
            try:
                self._conn = sqlite3.connect(target, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
            except sqlite3.Error as exc:
                raise DatabaseUrlError(f"cannot open SQLite database {target}: {exc}") from None
            self.errors = (sqlite3.Error,)
            try:
                self._conn.execute("PRAGMA foreign_keys = ON")
                if target != ":memory:":
                    self._conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                self._conn.close()
                raise DatabaseUrlError(f"{target} is not a usable SQLite database: {exc}") from None
        else:
            import psycopg

            self.errors = (psycopg.Error,)
            self.path = None
            try:
                self._conn = psycopg.connect(target, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DatabaseUrlError(f"cannot connect to PostgreSQL: {first_line}") from None

    @property
    def for_update(self):
        """Row-lock suffix: PostgreSQL needs it; SQLite's BEGIN IMMEDIATE already locks."""
        return " FOR UPDATE" if self.backend == "postgresql" else ""

    def _sql(self, sql):
        if self._aborted_at is not None:
            raise TransactionAborted(
                "an earlier write of this transaction failed part-way; it can only roll back")
        return sql.replace("?", "%s") if self.backend == "postgresql" else sql

    def execute(self, sql, params=()):
        """Run one statement; returns the cursor (rowcount, fetch*)."""
        cursor = self._conn.cursor()
        cursor.execute(self._sql(sql), tuple(params))
        return cursor

    def executemany(self, sql, rows):
        """Run one statement for each parameter tuple in `rows` (one round of the driver)."""
        cursor = self._conn.cursor()
        cursor.executemany(self._sql(sql), [tuple(row) for row in rows])
        return cursor

    def abort(self):
        """Doom the open transaction after a write that failed part-way outside a savepoint.

        Writers that check everything before writing (the ledger's transfers) skip the cost of a
        savepoint; the price is that a failure inside their writes (a database error, not a
        refusal) cannot be undone alone. From here on every statement raises
        `TransactionAborted`, and the outermost block rolls back and raises it instead of
        committing, unless an enclosing `atomic()` block rolls the failed writes back first.
        """
        if not self._depth:
            return  # no transaction open: the failed statement rolled itself back
        if self._aborted_at is None:
            self._aborted_at = self._savepoints

    def one(self, sql, params=()):
        return self.execute(sql, params).fetchone()

    def all(self, sql, params=()):
        return self.execute(sql, params).fetchall()

    def stream(self, sql, params=(), batch_rows=1000):
        """Yield rows in batches, so a check over millions of entries stays in bounded memory."""
        cursor = self.execute(sql, params)
        while True:
            rows = cursor.fetchmany(batch_rows)
            if not rows:
                return
            yield from rows

    @property
    def in_transaction(self):
        return self._depth > 0

    @contextlib.contextmanager
    def transaction(self):
        """All-or-nothing block; nested blocks join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self.transaction_serial += 1
        self.epoch += 1
        try:
            if self.backend == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                    self._refuse_if_aborted()
                except BaseException:
                    self.rollbacks += 1
                    self._conn.execute("ROLLBACK")
                    raise
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    self.rollbacks += 1
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            else:
                try:
                    with self._conn.transaction():
                        yield self
                        self._refuse_if_aborted()
                except BaseException:
                    self.rollbacks += 1
                    raise
        finally:
            self._depth = 0
            self._aborted_at = None
            self.epoch += 1

    def _refuse_if_aborted(self):
        if self._aborted_at is not None:
            raise TransactionAborted(
                "a write of this transaction failed part-way; the transaction was rolled back")

    @contextlib.contextmanager
    def atomic(self):
        """All-or-nothing block that may fail alone: a transaction, or a savepoint inside one.

        Inside an open transaction an exception rolls back only this block's writes (SQL
        SAVEPOINT), so one refused transfer of a batch leaves the batch's others standing.
        """
        if not self._depth:
            with self.transaction():
                yield self
            return
        if self._aborted_at is not None:
            raise TransactionAborted(
                "an earlier write of this transaction failed part-way; it can only roll back")
        self._savepoints += 1
        self.savepoint_count += 1
        number = self._savepoints
        name = f"sp{number}"
        self._depth += 1
        try:
            self._conn.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                self.rollbacks += 1
                self.epoch += 1
                self._conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self._conn.execute(f"RELEASE SAVEPOINT {name}")
                if self._aborted_at is not None and self._aborted_at >= number:
                    self._aborted_at = None  # the failed writes were inside: undone now
                raise
            self._conn.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._depth -= 1
            self._savepoints -= 1

    def ensure_schema(self):
        """Create the schema on first use; refuse a schema from a newer version."""
        with self.transaction():
            if self.backend == "postgresql":
                # Two processes creating the same fresh database must not race.
                self.execute("SELECT pg_advisory_xact_lock(7231957)")
            for statement in _SCHEMA:
                self.execute(statement)
            row = self.one("SELECT value FROM meta WHERE key = 'schema_version'")
            if row is None:
                self.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
                return True
            if row[0] != str(SCHEMA_VERSION):
                raise SchemaError(
                    f"ledger schema version {row[0]} is not supported (this code knows {SCHEMA_VERSION})")
            return False

    def get_meta(self, key):
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row[0]

    def set_meta(self, key, value):
        self.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def close(self):
        self._conn.close()
