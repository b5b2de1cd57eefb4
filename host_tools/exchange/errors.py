"""The exchange's refusals: one class per reason, each with a stable `code` for the HTTP layer.

Every refusal is raised before anything changes, so a caller that gets one of these knows that
neither the book nor the ledger moved.
"""


class ExchangeError(ValueError):
    """Base of all refusals; `code` is a stable machine-readable reason (maps to a 4xx)."""

    code = "invalid_request"

    def __init__(self, message):
        super().__init__(message)
        self.message = message

    def as_dict(self):
        return {"code": self.code, "message": self.message}


class InvalidQuantity(ExchangeError):
    code = "invalid_quantity"


class InvalidPrice(ExchangeError):
    code = "invalid_price"


class InvalidOrder(ExchangeError):
    """A malformed field other than price or quantity (side, flags, client id, interval)."""

    code = "invalid_order"


class UnknownMember(ExchangeError):
    code = "unknown_member"


class UnknownOrder(ExchangeError):
    code = "unknown_order"


class IntervalClosed(ExchangeError):
    code = "interval_closed"


class IntervalNotOpen(ExchangeError):
    """The interval is further ahead than the exchange accepts orders for."""

    code = "interval_not_open"


class DuplicateClientId(ExchangeError):
    """The member already used this client order id for a different order."""

    code = "duplicate_client_id"


class NotYourOrder(ExchangeError):
    code = "not_your_order"


class TooManyOrders(ExchangeError):
    """A per-member or whole-book limit on open orders would be exceeded."""

    code = "too_many_orders"


class AboveCap(ExchangeError):
    """A buy larger than the member's whole cap could never complete."""

    code = "above_cap"
