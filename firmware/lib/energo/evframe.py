# Link frames of charge-and-pay (docs/charging-protocol.md, "The local link"): one JSON object
# per UART line between charger and vehicle. Reached through energo.evproto.frame / read_frame,
# which import this module on first use: the settlement service never needs it, and the
# message checks stay in evproto where both sides share them.
import json

from energo.evproto import LINE_MAX, ProtocolError, _check, _dump, _fields
from energo.jsonexact import JsonError

# Link frames: fields after "k" as "name:kind" words (evproto._fields); a name ending in "?"
# may be absent.
FRAMES = {
    "offer": "offer:signed cert:signed",
    "auth": "auth:signed",
    "grant": "grant:signed",
    "reject": "reason:reason detail:text reject?:signed",
    "status": "wh:wh cost:money i:current",
    "stop": "",
    "final": "record:record",
    "meter": "meter:signed",
    "receipt": "receipt:signed begin:record end:record",
    "error": "reason:reason detail:text",
}


def _frame_string(text):
    # Frames carry whole OCMF records and signed lines, which contain '|', so they are
    # written here rather than with jsonexact's signed-string writer. Printable ASCII, which
    # is what records and signed lines are, escapes only '"' and '\\' as json.dumps does (the
    # same on MicroPython and CPython): one string built in C instead of a list of ~700
    # characters (a final record's frame made ~13 KB of garbage on MicroPython that way).
    for ch in text:
        if not " " <= ch <= "~":
            return _escaped(text)
    return json.dumps(text)


def _escaped(text):
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:
                raise ProtocolError("malformed", "character outside the basic plane")
            out.append("\\u%04x" % code)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def frame(kind, **fields):
    """One link line (bytes ending in '\\n') of frame kind with its fields, checked."""
    spec = FRAMES.get(kind)
    if spec is None:
        raise ProtocolError("malformed", "unknown frame kind %r" % (kind,))
    pairs = list(_fields(spec))  # parsed once: used twice
    names = [name.rstrip("?") for name, _ in pairs]
    for key in fields:
        if key not in names:
            raise ProtocolError("malformed", "%s frame has unknown field %r" % (kind, key))
    parts = ['"k":' + _frame_string(kind)]
    for name, ftype in pairs:
        key = name.rstrip("?")
        if fields.get(key) is None:
            if name != key:
                continue
            raise ProtocolError("malformed", "%s frame lacks %r" % (kind, key))
        value = _check(ftype, fields[key], kind + "." + key)
        text = _frame_string(value) if isinstance(value, str) else _dump(value)
        parts.append(_frame_string(key) + ":" + text)
    line = ("{%s}\n" % ",".join(parts)).encode()
    if len(line) > LINE_MAX:
        raise ProtocolError("oversized", "%s frame: %d bytes, limit %d" % (kind, len(line),
                                                                         LINE_MAX))
    return line


def read_frame(line):
    """The checked fields of one link line (with "k"); ProtocolError 'malformed'/'oversized'."""
    from energo.jsonread import load_object

    if isinstance(line, str):
        line = line.encode()
    if not isinstance(line, (bytes, bytearray)):
        raise ProtocolError("malformed", "a frame is a line of bytes")
    if len(line) > LINE_MAX:
        raise ProtocolError("oversized", "frame of %d bytes, limit %d" % (len(line), LINE_MAX))
    try:
        obj = load_object(bytes(line).rstrip(b"\r\n"), "frame")
    except JsonError as exc:
        raise ProtocolError("malformed", exc.args[0])
    kind = obj.get("k")
    spec = FRAMES.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise ProtocolError("malformed", "unknown frame kind %r" % (kind,))
    out = {"k": kind}
    pairs = list(_fields(spec))  # parsed once: used twice
    for name, ftype in pairs:
        key = name.rstrip("?")
        if key not in obj or (name != key and obj[key] is None):
            if name != key:
                continue
            raise ProtocolError("malformed", "%s frame lacks %r" % (kind, key))
        out[key] = _check(ftype, obj[key], kind + "." + key)
    names = [name.rstrip("?") for name, _ in pairs]
    for key in obj:
        if key != "k" and key not in names:
            raise ProtocolError("malformed", "%s frame has unknown field %r" % (kind, key))
    return out
