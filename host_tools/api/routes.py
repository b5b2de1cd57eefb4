"""The route table: one entry per endpoint, read by the server (dispatch, validation, auth) and
by `openapi.py` (the published document). Adding an endpoint means adding one `Route` here.
"""
import re

from host_tools.api import dashboard, market, schemas, sessions, views
from host_tools.api.errors import bad_request
from host_tools.api.validate import Query, check_schema

MEMBER_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_ID_MAX = 2**62
_TIME_MAX = 2**40  # seconds: year 36812, far beyond any interval start a ledger holds
_PRICE_MAX = 10**9  # µ/kWh: 1000 currency units per kWh, an absurd price refused at the edge
_ENERGY_MAX = 10**12  # Wh: 1 TWh


def _int_schema(minimum, maximum, description=""):
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if description:
        schema["description"] = description
    return schema


class PathParam:
    __slots__ = ("name", "schema", "convert")

    def __init__(self, name, schema, convert):
        self.name = name
        self.schema = schema
        self.convert = convert


def _member_name(text):
    if not re.fullmatch(MEMBER_NAME_PATTERN, text):
        raise bad_request("invalid_parameter", "the member name in the path is not valid")
    return text


def _order_id(text):
    if not re.fullmatch(r"[1-9][0-9]{0,18}", text) or int(text) > _ID_MAX:
        raise bad_request("invalid_parameter", "the order id in the path must be a positive integer")
    return int(text)


PATH_PARAMS = {
    "name": PathParam("name", {"type": "string", "pattern": f"^{MEMBER_NAME_PATTERN}$"},
                      _member_name),
    "order_id": PathParam("order_id", _int_schema(1, _ID_MAX), _order_id),
    "session": PathParam("session", {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                         sessions.session_id),
}


class Route:
    """An endpoint. `auth`: public, admin, member (the caller's own data) or member_or_admin."""

    __slots__ = ("method", "path", "auth", "handler", "summary", "query", "body", "response",
                 "status", "tag", "regex", "params", "degraded_status")

    def __init__(self, method, path, auth, handler, summary, *, query=(), body=None,
                 response=None, status=200, tag="ledger", degraded_status=None):
        self.method = method
        self.path = path
        self.auth = auth
        self.handler = handler
        self.summary = summary
        self.query = tuple(query)
        self.body = None if body is None else check_schema(body)
        if response is None:
            raise TypeError(f"{method} {path} needs a response schema")
        self.response = response
        self.status = status
        self.degraded_status = degraded_status  # answered with the same schema (health checks)
        self.tag = tag
        self.params = [PATH_PARAMS[name] for name in re.findall(r"{(\w+)}", path)]
        literal = re.split(r"{(\w+)}", path)  # literal, name, literal, name, ...
        self.regex = re.compile("^" + "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]{{1,100}})"
            for i, part in enumerate(literal)) + "$")


def _page(default, maximum, before_max):
    return (Query("limit", 1, maximum, default, "How many items to return."),
            Query("before", 1, before_max, before_max, "Return items before this position."))


_NAME = {"type": "string", "pattern": f"^{MEMBER_NAME_PATTERN}$", "maxLength": 63}
_PRICE = _int_schema(1, _PRICE_MAX, "micro-units per kWh")
_PPM = _int_schema(0, 1_000_000, "parts per million of the member's cap")

MEMBER_BODY = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {"name": _NAME,
                   "storage_capacity_wh": _int_schema(0, _ENERGY_MAX, "storage capacity owned")},
}
DEVICE_BODY = {
    "type": "object", "additionalProperties": False,
    "required": ["device_id", "public_key", "role", "member"],
    "properties": {
        "device_id": {"type": "string", "pattern": "^[mc]-[0-9a-f]{12}$"},
        "public_key": {"type": "string", "pattern": "^([0-9A-Fa-f]{2}){1,200}$", "maxLength": 400,
                       "description": "SubjectPublicKeyInfo DER, hex"},
        "role": {"type": "string", "enum": ["meter", "charger"]},
        "member": _NAME,
    },
}
ORDER_BODY = {
    "type": "object", "additionalProperties": False,
    "required": ["side", "qty_wh", "price_micro_per_kwh", "interval_start_s"],
    "properties": {
        "side": {"type": "string", "enum": ["buy", "sell"]},
        "qty_wh": _int_schema(1, _ENERGY_MAX),
        "price_micro_per_kwh": _PRICE,
        "interval_start_s": _int_schema(0, _TIME_MAX, "delivery interval start (unix s)"),
        "client_id": {"type": "string", "minLength": 1, "maxLength": 64,
                      "pattern": "^[\\x20-\\x7e]+$",
                      "description": "makes a resubmission idempotent"},
        "gtc": {"type": "boolean", "default": False},
        "immediate": {"type": "boolean", "default": False},
    },
}
AGENT_BODY = {
    "type": "object", "additionalProperties": False,
    "required": ["enabled", "target_buy_micro_per_kwh", "target_sell_micro_per_kwh",
                 "floor_micro_per_kwh", "ceiling_micro_per_kwh"],
    "properties": {
        "enabled": {"type": "boolean"},
        "target_buy_micro_per_kwh": _PRICE, "target_sell_micro_per_kwh": _PRICE,
        "floor_micro_per_kwh": _PRICE, "ceiling_micro_per_kwh": _PRICE,
        "upper_threshold_ppm": _PPM, "lower_threshold_ppm": _PPM,
    },
}

_EXPLICIT_INTERVAL = Query("interval_start_s", 0, _TIME_MAX, None,
                           "Delivery interval start (unix s).", required=True)


class Text:
    """A non-JSON response body (the Prometheus exposition)."""

    __slots__ = ("content_type", "text")

    def __init__(self, content_type, text):
        self.content_type = content_type
        self.text = text


def _metrics(ctx):
    return 200, Text("text/plain; version=0.0.4; charset=utf-8", ctx.app.render_metrics(ctx))


def _openapi(ctx):
    from host_tools.api import openapi

    return 200, openapi.document()


ROUTES = [
    Route("GET", "/openapi.json", "public", _openapi, "This OpenAPI document", tag="service",
          response=schemas.OPENAPI),
    Route("GET", "/metrics", "public", _metrics, "Prometheus metrics (text exposition format)",
          tag="service", response=schemas.METRICS),
    Route("GET", "/healthz", "public", views.health,
          "Liveness: the database answers and the service's own checks pass", tag="service",
          response=schemas.HEALTH, degraded_status=503),
    Route("GET", "/api/v1/digest", "public", views.digest,
          "Public digest: totals per asset, member count, latest signed checkpoints",
          response=schemas.DIGEST),
    Route("GET", "/api/v1/checkpoints", "public", views.checkpoints,
          "Signed checkpoints, newest first", query=_page(20, 200, _ID_MAX),
          response=schemas.CHECKPOINTS),
    Route("GET", "/api/v1/intervals", "public", views.intervals,
          "Closed intervals' community totals, newest first", query=_page(20, 200, _TIME_MAX),
          response=schemas.INTERVALS),
    Route("POST", "/api/v1/members", "admin", views.create_member,
          "Add a member; returns the member's token (shown only once)", body=MEMBER_BODY,
          status=201, response=schemas.MEMBER_CREATED),
    Route("GET", "/api/v1/members", "admin", views.members,
          "Every member with balances and cap", response=schemas.MEMBERS),
    Route("GET", "/api/v1/members/{name}", "member_or_admin", views.member,
          "A member's balances, cap and storage capacity", response=schemas.MEMBER),
    Route("POST", "/api/v1/members/{name}/token", "admin", views.rotate_token,
          "Issue a new token for a member (the old one stops working)", status=201,
          response=schemas.TOKEN),
    Route("GET", "/api/v1/members/{name}/entries", "member", views.entries,
          "The member's ledger entries, newest first", query=_page(50, 500, _ID_MAX),
          response=schemas.ENTRIES),
    Route("PUT", "/api/v1/members/{name}/agent", "member", views.put_agent,
          "Set the member's trading agent (target prices, thresholds)", body=AGENT_BODY,
          tag="exchange", response=schemas.AGENT),
    Route("GET", "/api/v1/members/{name}/agent", "member", views.get_agent,
          "The member's trading agent settings", tag="exchange",
          response=schemas.AGENT),
    Route("POST", "/api/v1/devices", "admin", views.enroll_device,
          "Enroll a device key; returns its MQTT credentials", body=DEVICE_BODY, status=201,
          tag="devices", response=schemas.DEVICE_CREATED),
    Route("GET", "/api/v1/devices", "admin", views.devices, "Enrolled devices", tag="devices",
          response=schemas.DEVICES),
    Route("POST", "/api/v1/orders", "member", market.place_order,
          "Place a limit order (the caller's own)", body=ORDER_BODY, status=201, tag="exchange",
          response=schemas.ORDER_PLACED),
    Route("GET", "/api/v1/orders", "member", market.list_orders, "The caller's open orders",
          tag="exchange", response=schemas.ORDERS),
    Route("GET", "/api/v1/orders/{order_id}", "member", market.get_order,
          "One of the caller's orders (open or finished) while its interval is open",
          tag="exchange", response=schemas.ORDER_ONE),
    Route("DELETE", "/api/v1/orders/{order_id}", "member", market.cancel_order,
          "Cancel one of the caller's open orders", tag="exchange",
          response=schemas.ORDER_ONE),
    Route("GET", "/api/v1/depth", "public", market.depth, "Order book depth of an interval",
          query=(Query("interval_start_s", 0, _TIME_MAX, None,
                       "Delivery interval start (default: the oldest open one)."),
                 Query("levels", 1, 100, 20, "Price levels per side.")), tag="exchange",
          response=schemas.DEPTH),
    Route("GET", "/api/v1/trades", "public", market.trades,
          "Trades of one delivery interval (anonymous)",
          query=(_EXPLICIT_INTERVAL, Query("limit", 1, 1000, 200, "How many trades.")),
          tag="exchange", response=schemas.TRADES),
    Route("GET", "/api/v1/sessions", "member_or_admin", sessions.list_sessions,
          "Charging sessions: the caller's (as payer or station owner), or all for the admin",
          query=sessions.QUERY, tag="charging", response=sessions.SESSIONS),
    Route("GET", "/api/v1/sessions/{session}", "member_or_admin", sessions.get_session,
          "One charging session with its signed receipt", tag="charging",
          response=sessions.SESSION_ONE),
    Route("GET", "/api/v1/prices", "public", market.prices,
          "Open quotes and reference prices of the latest closed intervals",
          query=(Query("limit", 1, 96, 16, "How many closed intervals."),), tag="exchange",
          response=schemas.PRICES),
]


class OptionalTokenRoute(Route):
    """A public route whose answer grows with the caller's token (anonymous: totals only);
    a token that matches nobody is still refused (401), so a typo is not silently public."""

    __slots__ = ()
    optional_token = True


# The live dashboard: its page, the page's script and style, and the data it polls.
DASHBOARD_ROUTES = [
    Route("GET", "/", "public", dashboard.static_handler("dashboard.html"),
          "The live community dashboard (HTML; token in the URL fragment: /#token=...)",
          tag="dashboard", response=dashboard.PAGE_SCHEMA),
    *[Route("GET", f"/static/{name}", "public", dashboard.static_handler(name),
            f"The dashboard's {name.rsplit('.', 1)[1].upper()}", tag="dashboard",
            response={"type": "string",
                      "contentMediaType": dashboard.STATIC_FILES[name].split(";")[0]})
      for name in ("dashboard.js", "dashboard.css")],
    OptionalTokenRoute(
        "GET", "/api/v1/dashboard", "public", dashboard.view,
        "The dashboard's data: community totals for everyone; members' rows for their own "
        "token (member) or the admin token", tag="dashboard",
        query=(Query("intervals", 1, dashboard.INTERVALS_MAX, dashboard.INTERVALS_DEFAULT,
                     "How many closed intervals the price chart shows."),),
        response=dashboard.RESPONSE),
]


def every_route():
    """The API's routes and the dashboard's, in matching order."""
    return ROUTES + DASHBOARD_ROUTES


def match(method, path):
    """(route, path params) or raises LookupError with the allowed methods of a known path."""
    allowed = []
    for route in every_route():
        found = route.regex.match(path)
        if found is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        params = {param.name: param.convert(found.group(param.name)) for param in route.params}
        return route, params
    raise LookupError(sorted(set(allowed)))
