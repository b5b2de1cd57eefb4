"""The OpenAPI 3.1 document, generated from the route table so it always matches the server."""
import copy
import functools
import re

from host_tools.api.routes import every_route

API_VERSION = "1.0.0"

_SECURITY = {
    "public": [],
    "admin": [{"adminToken": []}],
    "member": [{"memberToken": []}],
    "member_or_admin": [{"memberToken": []}, {"adminToken": []}],
}
_ERRORS = {
    "400": "Malformed request (JSON, query or path parameter)",
    "401": "Missing or invalid bearer token",
    "403": "The token does not give access to this resource",
    "404": "Unknown resource",
    "409": "Conflicts with the current state (duplicate, closed interval, balance)",
    "413": "Request body larger than 64 KiB",
    "422": "A field is missing, of the wrong type or out of range",
    "503": "A backend this endpoint needs is not configured or busy",
}
_TAGS = {
    "ledger": "Members, balances, entries, intervals and the public digest",
    "exchange": "The community's energy exchange",
    "devices": "Device enrollment",
    "charging": "Charge-and-pay sessions and their signed receipts",
    "service": "The document itself and metrics",
    "dashboard": "The live community dashboard: its page and the data it polls",
}


def _operation_id(route):
    words = re.sub(r"[{}]", "", route.path).strip("/").replace("api/v1/", "")
    return route.method.lower() + "_" + re.sub(r"[^A-Za-z0-9]+", "_", words).strip("_")


def _operation(route):
    parameters = [{"name": param.name, "in": "path", "required": True,
                   "schema": copy.deepcopy(param.schema)} for param in route.params]
    parameters += [{"name": query.name, "in": "query", "required": query.required,
                    "description": query.description, "schema": query.schema()}
                   for query in route.query]
    optional_token = getattr(route, "optional_token", False)
    if route.response.get("type") == "string":
        media_type = route.response.get("contentMediaType", "text/plain")
        content = {media_type: {"schema": copy.deepcopy(route.response)}}
    else:
        content = {"application/json": {"schema": copy.deepcopy(route.response)}}
    responses = {str(route.status): {"description": "Success", "content": content}}
    if route.degraded_status is not None:
        responses[str(route.degraded_status)] = {"description": "Not healthy",
                                                 "content": copy.deepcopy(content)}
    for status, description in _ERRORS.items():
        if status in responses:
            continue
        if status == "403" and route.auth == "public" or \
                status == "401" and route.auth == "public" and not optional_token:
            continue
        if status == "413" and route.body is None:
            continue
        responses[status] = {"description": description,
                             "content": {"application/json": {
                                 "schema": {"$ref": "#/components/schemas/Error"}}}}
    operation = {"operationId": _operation_id(route), "summary": route.summary,
                 "tags": [route.tag], "security": _SECURITY[route.auth], "responses": responses}
    if optional_token:  # anonymous, or a member's or the admin's token for more detail
        operation["security"] = [{}, {"memberToken": []}, {"adminToken": []}]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": copy.deepcopy(route.body)}}}
    return operation


@functools.cache
def _cached():
    paths = {}
    for route in every_route():
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Energo settlement service", "version": API_VERSION,
                 "description": "Members' wallets and history (member token), the public "
                                "digest (totals and checkpoint roots only), device enrollment "
                                "and member creation (admin token), and the energy exchange. "
                                "Energy in Wh, money in micro-units, prices in micro-units "
                                "per kWh: integers throughout."},
        "tags": [{"name": name, "description": text} for name, text in _TAGS.items()],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "The service's admin token"},
                "memberToken": {"type": "http", "scheme": "bearer",
                                "description": "A member's token, issued when the member is "
                                               "created"},
            },
            "schemas": {"Error": {
                "type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            }},
        },
    }


def document():
    """A fresh copy each time: callers may not change the cached original."""
    return copy.deepcopy(_cached())
