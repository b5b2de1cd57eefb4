# Tiny check helper shared by the portable scripts (MicroPython has no unittest).
_count = [0]


def eq(got, want, what):
    _count[0] += 1
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def true(cond, what):
    eq(bool(cond), True, what)


def raises(exc_type, fn, what):
    _count[0] += 1
    try:
        fn()
    except exc_type as exc:
        return str(exc)
    raise AssertionError("%s: no %s raised" % (what, exc_type.__name__))


def done():
    print("ok %d checks" % _count[0])
