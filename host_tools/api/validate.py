"""Validation at the edge: strict JSON, a small JSON-Schema subset, query parameters.

The schemas that validate request bodies are the same dicts the OpenAPI document publishes, so
a client reading the document learns exactly what the server accepts. Only the subset the
routes use is implemented (object with `properties`/`required`/`additionalProperties: false`,
integer with bounds, string with length/pattern/enum, boolean); a schema using anything else is
a programming error and fails loudly at import time, not at request time.
"""
import json
import re

from host_tools.api.errors import bad_request, unprocessable

BODY_BYTES_MAX = 64 * 1024
# Bodies are flat objects; a deeply nested document is garbage, refused before it costs stack.
_JSON_DEPTH_MAX = 8
_QUERY_FIELDS_MAX = 16
_SUPPORTED = {
    "object": {"type", "properties", "required", "additionalProperties", "description"},
    "integer": {"type", "minimum", "maximum", "description", "default"},
    "string": {"type", "minLength", "maxLength", "pattern", "enum", "description"},
    "boolean": {"type", "description", "default"},
}


def check_schema(schema):
    """Refuse (at import) a schema that uses keywords `validate` does not enforce."""
    kind = schema.get("type")
    if kind not in _SUPPORTED or set(schema) - _SUPPORTED[kind]:
        raise TypeError(f"unsupported schema {schema!r}")
    if kind == "object":
        if schema.get("additionalProperties", True) is not False:
            raise TypeError("object schemas must set additionalProperties: false")
        for sub in schema.get("properties", {}).values():
            check_schema(sub)
        missing = set(schema.get("required", ())) - set(schema.get("properties", {}))
        if missing:
            raise TypeError(f"required fields without a schema: {sorted(missing)}")
    return schema


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _depth(value, level=1):
    if level > _JSON_DEPTH_MAX:
        return level
    if isinstance(value, dict):
        return max([level] + [_depth(v, level + 1) for v in value.values()])
    if isinstance(value, list):
        return max([level] + [_depth(v, level + 1) for v in value])
    return level


def parse_json(body):
    """Bytes → a JSON value; NaN/Infinity, duplicate keys, bad UTF-8 and deep nesting refused."""
    if len(body) > BODY_BYTES_MAX:
        raise bad_request("body_too_large", f"body exceeds {BODY_BYTES_MAX} bytes")
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise bad_request("invalid_json", f"the body is not a JSON document: {reason}") from None
    if _depth(value) > _JSON_DEPTH_MAX:
        raise bad_request("invalid_json", f"the body nests deeper than {_JSON_DEPTH_MAX} levels")
    return value


def validate(schema, value, where="body"):
    """Check `value` against `schema`; returns it, or raises a 422 naming the first bad field."""
    kind = schema["type"]
    if kind == "object":
        if not isinstance(value, dict):
            raise unprocessable("invalid_field", f"{where} must be a JSON object")
        properties = schema.get("properties", {})
        for key in value:
            if key not in properties:
                shown = key if len(key) <= 40 else key[:40] + "…"
                raise unprocessable("unknown_field", f"{where} has an unknown field {shown!r}")
        for key in schema.get("required", ()):
            if key not in value:
                raise unprocessable("missing_field", f"{where} needs the field {key!r}")
        for key, item in value.items():
            validate(properties[key], item, f"{key}" if where == "body" else f"{where}.{key}")
        return value
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise unprocessable("invalid_field", f"{where} must be an integer")
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise unprocessable("invalid_field", f"{where} must be in {low}..{high}, got {value}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise unprocessable("invalid_field", f"{where} must be true or false")
        return value
    if not isinstance(value, str):
        raise unprocessable("invalid_field", f"{where} must be a string")
    if "enum" in schema and value not in schema["enum"]:
        raise unprocessable("invalid_field", f"{where} must be one of {', '.join(schema['enum'])}")
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", BODY_BYTES_MAX):
        raise unprocessable("invalid_field", f"{where} has the wrong length ({len(value)})")
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        raise unprocessable("invalid_field", f"{where} does not match {schema['pattern']}")
    return value


class Query:
    """One query parameter: integer, with bounds and a default (all the routes need)."""

    __slots__ = ("name", "minimum", "maximum", "default", "description", "required")

    def __init__(self, name, minimum, maximum, default=None, description="", required=False):
        self.name = name
        self.required = required
        self.minimum = minimum
        self.maximum = maximum
        self.default = default
        self.description = description

    def schema(self):
        schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def parse(self, text):
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise bad_request("invalid_parameter", f"{self.name} must be an integer")
        value = int(text)
        if not self.minimum <= value <= self.maximum:
            raise bad_request("invalid_parameter",
                              f"{self.name} must be in {self.minimum}..{self.maximum}")
        return value


def parse_query(pairs, specs):
    """[(name, text)] → {name: int}; unknown, repeated or malformed parameters are refused."""
    if len(pairs) > _QUERY_FIELDS_MAX:
        raise bad_request("invalid_parameter", "too many query parameters")
    by_name = {spec.name: spec for spec in specs}
    result = {}
    for name, text in pairs:
        spec = by_name.get(name)
        if spec is None:
            raise bad_request("unknown_parameter", f"unknown query parameter {name[:40]!r}")
        if name in result:
            raise bad_request("invalid_parameter", f"query parameter {name!r} is repeated")
        result[name] = spec.parse(text)
    for spec in specs:
        if spec.required and spec.name not in result:
            raise bad_request("missing_parameter", f"query parameter {spec.name!r} is required")
        result.setdefault(spec.name, spec.default)
    return result
