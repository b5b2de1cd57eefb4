"""The settlement ledger: double entry in integer units, the community's rules per
interval, hash-chained entries and signed checkpoints, on SQLite or PostgreSQL.

Start with `Ledger.open("sqlite:///ledger.db")`; see `ledger.py` for the
conventions every part relies on and `intervals.py` for the order of the rules.
"""
from host_tools.settlement.config import SettlementConfig
from host_tools.settlement.errors import LedgerError
from host_tools.settlement.ledger import (
    ASSETS,
    MONEY,
    TSL,
    WATT,
    Ledger,
    Leg,
    TransferResult,
    member_account,
    storage_account,
)
from host_tools.settlement.rules import split_largest_remainder

__all__ = [
    "ASSETS", "MONEY", "TSL", "WATT", "Leg", "Ledger", "LedgerError", "SettlementConfig",
    "TransferResult", "member_account", "split_largest_remainder", "storage_account",
]
