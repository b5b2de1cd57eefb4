# Exact JSON for signed records: numbers stay as their source text, strings are
# encoded the same way on CPython and MicroPython (ASCII only, \u escapes).
#
# Why our own: a signature covers bytes, so we never re-serialise what we
# parsed, and an ESP32's single-precision float cannot hold a meter register.
# The writer is here; the reader is energo.jsonread, imported on first use: a
# meter reads JSON only at boot and releases the reader's code afterwards.


class JsonError(ValueError):
    """Text that is not the strict JSON we accept; the message says why."""


class Number:
    """A JSON number kept as its exact source text."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return "Number(%r)" % self.text

    def __eq__(self, other):
        return isinstance(other, Number) and other.text == self.text

    def scaled(self, digits):
        """The value times 10**digits as an exact int; JsonError if that is not whole."""
        text = self.text
        mantissa, _, exp_text = text.replace("E", "e").partition("e")
        exp = int(exp_text) if exp_text else 0
        whole, _, frac = mantissa.partition(".")
        sign = -1 if whole.startswith("-") else 1
        digits_text = whole.lstrip("-") + frac
        shift = digits + exp - len(frac)
        value = int(digits_text)
        if shift >= 0:
            return sign * value * 10 ** shift
        div = 10 ** -shift
        if value % div:
            raise JsonError("number %s has more than %d decimals" % (text, digits))
        return sign * (value // div)


def dump_string(text):
    """text as a JSON string literal for a signed body or record; JsonError for '|'."""
    # Most strings are printable ASCII that needs no escape: one string then, not a list of
    # its characters (iterating a str makes no garbage on MicroPython: one-character strings
    # are interned).
    for ch in text:
        if ch < " " or ch > "~" or ch == '"' or ch == "\\" or ch == "|":
            return _escaped(text)
    return '"%s"' % text


def _escaped(text):
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:
                code -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
            else:
                out.append("\\u%04x" % code)
        elif ch == "|":
            raise JsonError("'|' is not allowed in a signed string: %r" % text)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump_value(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return dump_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Number):
        return value.text
    raise JsonError("cannot encode %r" % (value,))


def load_object(text, what):
    """A JSON object from text (str or bytes), strictly; JsonError names `what` on failure."""
    from energo.jsonread import load_object as load

    return load(text, what)
