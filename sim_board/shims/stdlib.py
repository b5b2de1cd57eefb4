"""Stateless library modules the firmware may import, cut down to MicroPython's names.

Why cut down: firmware that uses a CPython-only name (`hashlib.sha256().hexdigest()`,
`json.JSONDecoder`) would pass in the emulator and fail on the chip.
"""
import array
import binascii
import collections
import errno as host_errno
import hashlib as host_hashlib
import heapq
import io
import json
import math
import random as host_random
import re
import struct
import types

_ERRNO_NAMES = ("EACCES", "EADDRINUSE", "EAGAIN", "EALREADY", "EBADF", "ECONNABORTED",
                "ECONNREFUSED", "ECONNRESET", "EEXIST", "EHOSTUNREACH", "EINPROGRESS", "EINVAL",
                "EIO", "EISDIR", "ENOBUFS", "ENODEV", "ENOENT", "ENOMEM", "ENOTCONN", "EOPNOTSUPP", "EPERM", "ETIMEDOUT")
_MATH_NAMES = ("acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "copysign",
               "cos", "cosh", "degrees", "e", "erf", "erfc", "exp", "expm1", "fabs", "floor",
               "fmod", "frexp", "gamma", "inf", "isclose", "isfinite", "isinf", "isnan", "ldexp",
               "lgamma", "log", "log10", "log2", "modf", "nan", "pi", "pow", "radians", "sin",
               "sinh", "sqrt", "tan", "tanh", "tau", "trunc")


def _module(name, source, names, **extra):
    m = types.ModuleType(name)
    for attr in names:
        setattr(m, attr, getattr(source, attr))
    for attr, value in extra.items():
        setattr(m, attr, value)
    return m


class _Hash:
    """A MicroPython hash object: update() and digest() only (no hexdigest on the chip)."""

    def __init__(self, algorithm, data=None):
        self._h = host_hashlib.new(algorithm)
        if data is not None:
            self.update(data)

    def update(self, data):
        self._h.update(data)

    def digest(self):
        return self._h.digest()


def _hash_factory(algorithm):
    def factory(data=None):
        return _Hash(algorithm, data)

    factory.__name__ = algorithm
    return factory


def build_errno(board, runtime):
    errorcode = {getattr(host_errno, n): n for n in _ERRNO_NAMES}
    return _module("errno", host_errno, _ERRNO_NAMES, errorcode=errorcode)


def build_struct(board, runtime):
    return _module("struct", struct, ("calcsize", "pack", "pack_into", "unpack", "unpack_from"))


def build_binascii(board, runtime):
    return _module("binascii", binascii,
                   ("a2b_base64", "b2a_base64", "hexlify", "unhexlify", "crc32"))


def build_json(board, runtime):
    return _module("json", json, ("dump", "dumps", "load", "loads"))


def build_hashlib(board, runtime):
    return _module("hashlib", host_hashlib, (), sha1=_hash_factory("sha1"),
                   sha256=_hash_factory("sha256"), md5=_hash_factory("md5"))


def build_math(board, runtime):
    return _module("math", math, _MATH_NAMES)


def build_collections(board, runtime):
    return _module("collections", collections, ("OrderedDict", "deque", "namedtuple"))


def build_heapq(board, runtime):
    return _module("heapq", heapq, ("heapify", "heappop", "heappush"))


def build_re(board, runtime):
    return _module("re", re, ("compile", "match", "search", "sub"))


def build_io(board, runtime):
    return _module("io", io, ("BytesIO", "StringIO", "IOBase"), open=runtime.open)


def build_array(board, runtime):
    return _module("array", array, ("array",))


def build_random(board, runtime):
    """A random generator per board, seeded from the board's stream (reproducible with --seed)."""
    rng = host_random.Random(board.random_seed())
    m = types.ModuleType("random")
    for attr in ("getrandbits", "randint", "randrange", "choice", "random", "uniform", "seed"):
        setattr(m, attr, getattr(rng, attr))
    return m
