"""The API's refusals: an HTTP status, a stable machine-readable code and a one-line message.

`ApiError` is a `ValueError`: every refusal is raised before anything is written (or inside the
one database transaction that is then rolled back), so a client that gets a 4xx knows that the
ledger, the book and the registry did not change.
"""


class ApiError(ValueError):
    """A request refused with `status`; the body is `{"error": code, "message": message}`."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def as_dict(self):
        return {"error": self.code, "message": self.message}


def bad_request(code, message):
    return ApiError(400, code, message)


def unprocessable(code, message):
    return ApiError(422, code, message)


def unauthorized(message):
    # RFC 6750: a missing or invalid bearer token is a 401 with a challenge.
    return ApiError(401, "unauthorized", message,
                    {"WWW-Authenticate": 'Bearer realm="energo"'})


def forbidden(message):
    return ApiError(403, "forbidden", message)


def not_found(code, message):
    return ApiError(404, code, message)


def conflict(code, message):
    return ApiError(409, code, message)


def unavailable(code, message):
    return ApiError(503, code, message)
