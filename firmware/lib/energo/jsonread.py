# The strict JSON reader of energo.jsonexact (numbers kept as their source text),
# in a module of its own so a meter can drop it after boot (energo.release): it
# parses JSON only to read back its newest record, while the writer runs every
# interval. The reader works on bytes so indexing stays O(1) on MicroPython.

try:
    from micropython import const
except ImportError:  # CPython: const() is only a marker for the MicroPython compiler
    def const(value):
        return value

from energo.jsonexact import JsonError, Number

_DEPTH_MAX = const(6)


_WS = b" \t\r\n"


def _skip_ws(buf, i):
    n = len(buf)
    while i < n and buf[i] in _WS:
        i += 1
    return i


def _parse_string(buf, i):
    """The string whose opening quote is buf[i] (buf is bytes), and the index after it.

    One copy of the text for a string without escapes: the slice. On MicroPython decode()
    shares the slice's bytes (and returns an interned name without allocating when the text
    is one), and only a string with escapes is joined from its pieces."""
    out = []
    start = i + 1
    i = start
    n = len(buf)
    while True:
        if i >= n:
            raise JsonError("unterminated string")
        c = buf[i]
        if c == 0x22:
            piece = buf[start:i].decode()
            if not out:
                return piece, i + 1
            out.append(piece)
            return "".join(out), i + 1
        if c < 0x20:
            raise JsonError("control character in string")
        if c == 0x5C:
            out.append(buf[start:i].decode())
            if i + 1 >= n:
                raise JsonError("unterminated escape")
            e = buf[i + 1]
            if e == 0x75:  # \uXXXX
                code = _hex4(buf, i + 2)
                i += 6
                if 0xD800 <= code < 0xDC00 and buf[i : i + 2] == b"\\u":
                    low = _hex4(buf, i + 2)
                    if 0xDC00 <= low < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        i += 6
                if 0xD800 <= code < 0xE000:
                    raise JsonError("lone surrogate in string")
                out.append(chr(code))
            else:
                mapped = _ESCAPES.get(e)
                if mapped is None:
                    raise JsonError("bad escape in string")
                out.append(mapped)
                i += 2
            start = i
        else:
            i += 1


_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f", 0x6E: "\n", 0x72: "\r",
            0x74: "\t"}


def _hex4(buf, i):
    chunk = bytes(buf[i : i + 4])
    if len(chunk) != 4:
        raise JsonError("truncated \\u escape")
    try:
        return int(chunk.decode(), 16)
    except (ValueError, UnicodeError):
        raise JsonError("bad \\u escape")


def _parse_number(buf, i):
    start = i
    n = len(buf)
    if i < n and buf[i] == 0x2D:
        i += 1
    if i >= n or not 0x30 <= buf[i] <= 0x39:
        raise JsonError("bad number")
    if buf[i] == 0x30:
        i += 1
    else:
        while i < n and 0x30 <= buf[i] <= 0x39:
            i += 1
    if i < n and buf[i] == 0x2E:
        i += 1
        if i >= n or not 0x30 <= buf[i] <= 0x39:
            raise JsonError("bad number fraction")
        while i < n and 0x30 <= buf[i] <= 0x39:
            i += 1
    if i < n and buf[i] in b"eE":
        i += 1
        if i < n and buf[i] in b"+-":
            i += 1
        if i >= n or not 0x30 <= buf[i] <= 0x39:
            raise JsonError("bad number exponent")
        while i < n and 0x30 <= buf[i] <= 0x39:
            i += 1
    if i - start > 40:
        raise JsonError("number too long")
    return Number(bytes(buf[start:i]).decode()), i


def _parse_value(buf, i, depth):
    i = _skip_ws(buf, i)
    if i >= len(buf):
        raise JsonError("unexpected end of JSON")
    c = buf[i]
    if c == 0x22:
        return _parse_string(buf, i)
    if c == 0x7B:
        return _parse_object(buf, i, depth + 1)
    if c == 0x5B:
        return _parse_array(buf, i, depth + 1)
    for word, value in ((b"true", True), (b"false", False), (b"null", None)):
        if buf[i : i + len(word)] == word:
            return value, i + len(word)
    return _parse_number(buf, i)


def _parse_object(buf, i, depth):
    if depth > _DEPTH_MAX:
        raise JsonError("JSON nested too deeply")
    obj = {}
    i = _skip_ws(buf, i + 1)
    if i < len(buf) and buf[i] == 0x7D:
        return obj, i + 1
    while True:
        i = _skip_ws(buf, i)
        if i >= len(buf) or buf[i] != 0x22:
            raise JsonError("expected a quoted key")
        key, i = _parse_string(buf, i)
        if key in obj:
            raise JsonError("duplicate key %r" % key)
        i = _skip_ws(buf, i)
        if i >= len(buf) or buf[i] != 0x3A:
            raise JsonError("expected ':' after key %r" % key)
        obj[key], i = _parse_value(buf, i + 1, depth)
        i = _skip_ws(buf, i)
        if i < len(buf) and buf[i] == 0x2C:
            i += 1
            continue
        if i < len(buf) and buf[i] == 0x7D:
            return obj, i + 1
        raise JsonError("expected ',' or '}' in object")


def _parse_array(buf, i, depth):
    if depth > _DEPTH_MAX:
        raise JsonError("JSON nested too deeply")
    arr = []
    i = _skip_ws(buf, i + 1)
    if i < len(buf) and buf[i] == 0x5D:
        return arr, i + 1
    while True:
        value, i = _parse_value(buf, i, depth)
        arr.append(value)
        i = _skip_ws(buf, i)
        if i < len(buf) and buf[i] == 0x2C:
            i += 1
            continue
        if i < len(buf) and buf[i] == 0x5D:
            return arr, i + 1
        raise JsonError("expected ',' or ']' in array")


def load_object(text, what):
    """A JSON object from text (str or bytes), strictly; JsonError names `what` on failure."""
    buf = text.encode() if isinstance(text, str) else bytes(text)
    try:
        i = _skip_ws(buf, 0)
        if i >= len(buf) or buf[i] != 0x7B:
            raise JsonError("not a JSON object")
        obj, i = _parse_object(buf, i, 1)
        if _skip_ws(buf, i) != len(buf):
            raise JsonError("trailing data after JSON object")
    except JsonError as exc:
        raise JsonError("%s: %s" % (what, exc.args[0]))
    except UnicodeError:
        raise JsonError("%s: not valid UTF-8" % what)
    return obj
