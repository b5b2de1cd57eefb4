"""`/api/v1/sessions`: charging sessions (charge-and-pay), for the members they concern.

A member sees the sessions their vehicles paid for and those at their chargers; the admin
token sees all. A session of someone else answers 404, as an unknown one does, so ids of
other members' sessions cannot be probed. The signed receipt is included, so the app can
hand it to `energo verify`.
"""
import re

from host_tools.api import schemas
from host_tools.api.auth import ADMIN
from host_tools.api.errors import bad_request, not_found
from host_tools.api.validate import Query

SESSIONS_MAX = 500
_INT_OR_NULL = schemas.INT_OR_NULL
SESSION = schemas.obj(
    session={"type": "string", "pattern": "^[0-9a-f]{32}$"}, station=schemas.STR,
    vehicle=schemas.STR, member=schemas.STR, owner=schemas.STR,
    state={"type": "string", "enum": ["authorized", "settled", "expired"]}, offline=schemas.BOOL,
    price_micro_per_kwh=schemas.INT, fee_micro_per_kwh=schemas.INT, hold_micro=schemas.INT,
    wh=_INT_OR_NULL, energy_micro=_INT_OR_NULL, fee_micro=_INT_OR_NULL,
    total_micro=_INT_OR_NULL, released_micro=_INT_OR_NULL, stop=schemas.STR_OR_NULL,
    authorized_at_s=schemas.INT, settled_at_s=_INT_OR_NULL, receipt=schemas.STR_OR_NULL)
SESSIONS = schemas.obj(sessions=schemas.array(SESSION))
SESSION_ONE = schemas.obj(session=SESSION)
QUERY = (Query("limit", 1, SESSIONS_MAX, 100, "How many sessions, newest first."),)


def session_id(text):
    """Path parameter: a session id is its 32-hex-digit nonce."""
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise bad_request("invalid_parameter", "a session id is 32 lower-case hex digits")
    return text


def _service(ctx):
    from host_tools.settlement.ev import EvService

    return EvService(ctx.ledger, None)


def _scope(ctx):
    return None if ctx.principal.kind == ADMIN else ctx.principal.member


def list_sessions(ctx):
    return 200, {"sessions": _service(ctx).sessions(_scope(ctx), ctx.query["limit"])}


def get_session(ctx):
    found = _service(ctx).session(ctx.path["session"])
    member = _scope(ctx)
    if found is None or (member is not None and member not in (found["member"],
                                                               found["owner"])):
        raise not_found("no_session", "no such session")
    return 200, {"session": found}
