"""Errors of the settlement ledger.

Every error a caller (ingest, exchange, CLI, HTTP API) can cause is a
`LedgerError`, itself a `ValueError`, so edges can report it as bad input and
be sure nothing was written: each ledger operation is one database transaction.
Each class carries a stable `code` for APIs to map without parsing messages.
"""


class LedgerError(ValueError):
    """Base class: the request was refused and the ledger is unchanged."""

    code = "ledger_refused"


class ConfigError(LedgerError):
    """A configuration value is missing, of the wrong type or out of range."""

    code = "invalid_config"


class DatabaseUrlError(LedgerError):
    """The database URL is not `sqlite:///PATH` or `postgresql://...`."""

    code = "invalid_database_url"


class SchemaError(LedgerError):
    """The database holds a schema this code does not understand."""

    code = "unsupported_schema"


class UnknownAccount(LedgerError):
    """A transfer or query names an account that does not exist."""

    code = "unknown_account"


class MemberExists(LedgerError):
    """`add_member` for a name that is already a member."""

    code = "duplicate_member"


class InvalidTransfer(LedgerError):
    """A transfer is malformed: bad id, leg, asset, amount or metadata."""

    code = "invalid_transfer"


class IdempotencyConflict(LedgerError):
    """A transfer id was reused for different legs: a replay must be identical."""

    code = "duplicate_id"


class InsufficientBalance(LedgerError):
    """A transfer would take an account below its floor."""

    code = "insufficient_balance"


class CapExceeded(LedgerError):
    """A transfer would push a member's WATT balance above the member's cap."""

    code = "above_cap"


class IntervalError(LedgerError):
    """An interval is misaligned, out of order, or already closed with other data."""

    code = "interval_refused"


class HoldError(LedgerError):
    """A hold, capture or release does not match the hold's state."""

    code = "hold_refused"


class InvariantViolation(RuntimeError):
    """The ledger's own bookkeeping broke an invariant: a bug, never bad input.

    Raised inside the transaction, so the offending writes are rolled back.
    """
