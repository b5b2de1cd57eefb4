"""The community energy exchange: order books, zero-intelligence agents and token incentives.

`book.Exchange` is the matching engine; it settles every fill through a `port.SettlementPort`,
so it runs against the real ledger in the service and against `port.MemoryPort` in tests.
"""
