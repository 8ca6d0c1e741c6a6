"""What nanny sends and how it judges the reply: escapes, prefix / ``*`` / regex matching,
and ``send_program`` argument substitution. Pure, except that regular expressions are
compiled and run by the C library's own POSIX engine (``regcomp(REG_EXTENDED)``, as
nanny did), in the C locale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass, field

from compiler.model import VirtualService

REGEX_READ = 254  # nanny reads up to sizeof(read_buf) - 1 bytes for a regex
_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", "'": "'", '"': '"'}


def nanny_text(vs: VirtualService, keyword: str) -> str | None:
    """The string nanny receives for ``send``/``expect``/``send_program``: lvsd strips
    double quotes only, so a value written in single quotes keeps them."""
    value = getattr(vs, keyword)
    if value is not None and keyword in vs.single_quoted:
        return f"'{value}'"
    return value


def unescape(text: str) -> str:
    """nanny's ``convert_str``: ``\\\\ \\r \\n \\t \\' \\"`` become the characters, left to
    right; strings shorter than two bytes are left alone. Any other backslash (or a
    trailing one) made nanny loop forever; here it stays as written (the compiler warns
    about it)."""
    if "\\" not in text or len(text.encode("utf-8", "surrogateescape")) <= 1:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def to_bytes(text: str) -> bytes:
    """lvs.cf text as the bytes nanny had (the file is read as bytes; surrogate escapes
    carry any byte that is not UTF-8)."""
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- matchers


@dataclass(frozen=True, slots=True)
class Prefix:
    """``expect`` without regex: one read of ``len(expect)`` bytes must return them all
    and they must equal ``expect`` (nanny's ``strncmp``: a prefix match of the reply)."""

    expect: bytes
    read_size: int = field(init=False, compare=False)
    _want: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        size = min(len(self.expect), REGEX_READ)
        object.__setattr__(self, "read_size", size or 1)
        object.__setattr__(self, "_want", self.expect[:size])

    def match(self, data: bytes) -> str | None:
        """None when ``data`` (the one read) matches, else why not."""
        want = self._want
        if data[: len(want)] == want:
            return None
        if len(data) < len(want):
            return f"reply too short: {len(data)} of {len(want)} bytes ({data!r})"
        return f"reply {data[: len(want)]!r} does not start with {want!r}"


@dataclass(frozen=True, slots=True)
class AnyByte:
    """``expect = "*"``: any one byte. (nanny also passed an empty read, i.e. the server
    closing the connection; we count that as a failure.)"""

    read_size: int = 1

    def match(self, data: bytes) -> str | None:
        return None if data else "connection closed without a reply"


@dataclass(frozen=True, slots=True)
class Regex:
    """``use_regex = 1``: a POSIX extended regex searched anywhere in the first read (up
    to 254 bytes, up to the first NUL byte, as nanny's C string was)."""

    pattern: bytes
    _compiled: _PosixRegex | None = field(default=None, compare=False, repr=False)
    error: str | None = field(default=None, compare=False)

    read_size: int = REGEX_READ

    @classmethod
    def compile(cls, pattern: bytes) -> Regex:
        try:
            return cls(pattern, _PosixRegex(pattern))
        except ValueError as err:
            return cls(pattern, None, str(err))

    def match(self, data: bytes) -> str | None:
        if self._compiled is None:
            # nanny logged the regcomp error once and then failed every check
            return f"expect is not a valid regular expression ({self.error})"
        if self._compiled.search(data.split(b"\0", 1)[0]):
            return None
        return f"reply {data[:60]!r} does not match /{self.pattern.decode(errors='replace')}/"


Matcher = Prefix | AnyByte | Regex


def matcher(expect: str, use_regex: bool) -> Matcher:
    """The matcher for an already unescaped ``expect`` string."""
    raw = to_bytes(expect)
    if use_regex:
        return Regex.compile(raw)
    if raw == b"*":
        return AnyByte()
    return Prefix(raw)


# --------------------------------------------------------------------------- send_program


def program_argv(command: str, host: str, port: int) -> tuple[str, ...]:
    """``send_program`` split on blanks as nanny's ``strtok(" ")`` did (runs of spaces
    are one separator, tabs are not separators), with a token that is exactly ``%h``
    replaced by the real server's address and exactly ``%p`` by its port."""
    out = []
    for token in command.split(" "):
        if not token:
            continue
        out.append(host if token == "%h" else str(port) if token == "%p" else token)
    return tuple(out)


def program_output(stdout: bytes) -> bytes:
    """What nanny compared with ``expect``: the program's output without its trailing
    newline. (nanny dropped the last byte read, newline or not, and compared up to the
    first NUL; we drop one ``\\n`` only and compare all bytes.)"""
    return stdout[:-1] if stdout.endswith(b"\n") else stdout


# --------------------------------------------------------------------------- libc regex

_REG_EXTENDED = 1
_REG_NOSUB = 8
_LC_ALL_MASK = 0x1FBF  # glibc: every category bit of LC_ALL
_REGEX_T_SIZE = 256  # generous: 64 bytes on x86-64 glibc, 32 on musl


class _Libc:
    """The C library's regcomp/regexec, called in the C locale (nanny never called
    setlocale) whatever locale Python set for this thread."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c") or "libc.so.6"
        lib = ctypes.CDLL(name, use_errno=True)
        self.regcomp = lib.regcomp
        self.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.regexec = lib.regexec
        self.regexec.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self.regerror = lib.regerror
        self.regerror.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.regfree = lib.regfree
        self.regfree.argtypes = [ctypes.c_void_p]
        self.uselocale = lib.uselocale
        self.uselocale.restype = ctypes.c_void_p
        self.uselocale.argtypes = [ctypes.c_void_p]
        newlocale = lib.newlocale
        newlocale.restype = ctypes.c_void_p
        newlocale.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
        self.c_locale = newlocale(_LC_ALL_MASK, b"C", None)
        self.lock = threading.Lock()

    def in_c_locale(self, fn, *args):  # type: ignore[no-untyped-def]
        with self.lock:
            old = self.uselocale(self.c_locale) if self.c_locale else None
            try:
                return fn(*args)
            finally:
                if old:
                    self.uselocale(old)


_libc: _Libc | None = None


def _lib() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class _PosixRegex:
    """A compiled ``regex_t``; freed with the object."""

    def __init__(self, pattern: bytes) -> None:
        lib = _lib()
        self._buf = ctypes.create_string_buffer(_REGEX_T_SIZE)
        rc = lib.in_c_locale(lib.regcomp, self._buf, pattern, _REG_EXTENDED | _REG_NOSUB)
        if rc != 0:
            message = ctypes.create_string_buffer(256)
            lib.regerror(rc, self._buf, message, len(message))
            raise ValueError(message.value.decode(errors="replace"))
        self._lib = lib

    def search(self, subject: bytes) -> bool:
        return self._lib.in_c_locale(self._lib.regexec, self._buf, subject, 0, None, 0) == 0

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.regfree(self._buf)
