"""Syntax blocks -> the typed model, with piranha's value rules and ordering rules.

For each statement this module does what piranha's ``CHECK_ARGS`` and ``get*``
helpers do: ``=`` must be the second word, the number of values must match, and
each value is read by its keyword's :class:`~compiler.keywords.Kind`. A bad
statement produces a diagnostic and is skipped, so one run reports every problem;
the keyword then keeps its previous value or default. Legacy and extended
spellings are mapped here and nowhere else.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from . import codes
from .diagnostics import Diagnostic, Severity, make
from .keywords import GLOBAL, SCHEDULERS_05, SERVER, VIRTUAL, Keyword, Kind
from .lexer import Line, line_span, source_line_span, word_span
from .model import (
    Config,
    Dialect,
    FailoverService,
    Host,
    HostDevice,
    Hostname,
    Network,
    Protocol,
    RealServer,
    Scheduler,
    ServiceType,
    VirtualService,
)
from .parser import Block, SyntaxFile, gc_paused
from .services import service_port
from .source import Span

_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)
_ENUMS: dict[str, Any] = {
    "service": ServiceType,
    "network": Network,
    "protocol": Protocol,
    "scheduler": Scheduler,
}
_ZERO = IPv4Address(0)
_ALL_ONES = IPv4Address(0xFFFFFFFF)
_UNSET_MASK = {"vip_nmask": _ZERO, "nat_nmask": _ZERO, "pmask": _ALL_ONES}


def c_strtol(tok: str) -> int | None:
    """``strtol(tok, &end, 0)`` followed by piranha's ``if (*end) error`` test.

    Leading white space and a sign are allowed; ``0x`` is hex and a leading 0 octal;
    the empty string reads as 0 (strtol consumes nothing and ``*end`` is NUL).
    """
    if tok.isdigit() and (tok[0] != "0" or len(tok) == 1):
        return int(tok)
    if tok == "":
        return 0
    m = _INT_RE.fullmatch(tok)
    if m is None:
        return None
    sign, digits = m.groups()
    if digits.startswith(("0x", "0X")):
        v = int(digits, 16)
    elif digits[0] == "0" and len(digits) > 1:
        v = int(digits, 8)
    else:
        v = int(digits)
    return -v if sign == "-" else v


def inet_aton(tok: str) -> IPv4Address | None:
    """glibc inet_aton, as piranha uses it: also accepts ``10.1`` and ``0x0a000001``."""
    if not tok or "\x00" in tok:
        return None
    try:
        return IPv4Address(socket.inet_aton(tok))
    except (OSError, ValueError):
        return None


_PREFIX_RE = re.compile(r"/?[0-9]{1,3}")


@dataclass(frozen=True, slots=True)
class PmaskWord:
    """A `pmask` value that may be a prefix length (`64`, `/64`): its meaning depends
    on the virtual's address family, known only at the end of the block
    (:func:`_resolve_pmask`). ``mask`` is what piranha's inet_aton makes of it."""

    text: str
    mask: IPv4Address | None

    @property
    def prefix(self) -> int:
        return int(self.text.lstrip("/"))


class _Bad(Exception):
    """A statement is rejected; carries the diagnostic."""

    def __init__(self, diag: Diagnostic) -> None:
        super().__init__(diag.message)
        self.diag = diag


@dataclass
class _Ctx:
    file: str
    dialect: Dialect
    source: Sequence[str]  # the file's lines, for the model's spans
    diags: list[Diagnostic] = field(default_factory=list)
    # per keyword table (by id): statement text -> its effect (see _statements)
    memo: dict[int, dict[str, _Effect]] = field(
        default_factory=lambda: {id(GLOBAL): {}, id(VIRTUAL): {}, id(SERVER): {}}
    )

    def too_new(self, line: Line, index: int, what: str, since: str) -> _Bad:
        """A piranha 0.5 rejection: the 2001 parser predates ``what``."""
        return _Bad(
            make(
                codes.NEWER_THAN_DIALECT,
                f"unknown command: {what} arrived after piranha 0.5 ({since}); "
                "the 0.5 parser rejects the file here",
                word_span(self.file, line, index),
                help="use --dialect piranha for piranha 0.8.x routers",
            )
        )

    def extension(self, line: Line, index: int, what: str) -> None:
        """Record use of an extended-dialect feature: a note, or an error in piranha mode."""
        if self.dialect.strict:
            raise _Bad(
                make(
                    codes.EXTENSION,
                    f"{what} is not accepted by piranha",
                    word_span(self.file, line, index),
                    severity=Severity.ERROR,
                    help="drop --dialect piranha to use the extended dialect",
                )
            )
        self.diags.append(
            make(
                codes.EXTENSION,
                f"{what}: an extension; piranha would reject this line",
                word_span(self.file, line, index),
            )
        )


# --------------------------------------------------------------------------- values


def _value(ctx: _Ctx, kw: Keyword, line: Line) -> Any:
    """Check ``KEY = VALUE...`` shape and read the value(s) of one statement."""
    words = line.words
    f = ctx.file
    if len(words) < 2 or words[1] != "=":
        raise _Bad(
            make(
                codes.EQUAL_EXPECTED,
                f"equal (=) expected after `{kw.name}`",
                word_span(f, line, 1),
                help=f"write `{kw.name} = VALUE`, with `=` as a word of its own",
            )
        )
    if kw.kind is Kind.LIST:
        return _list(ctx, line)
    n = kw.arity
    if len(words) < 2 + n:
        shape = f"`{kw.name} = IP DEVICE`" if n == 2 else f"`{kw.name} = VALUE`"
        raise _Bad(
            make(
                codes.MISSING_ARGS,
                f"missing arguments: `{kw.name}` takes {n} value{'s' if n > 1 else ''}",
                line_span(f, line),
                help=f"write {shape}",
            )
        )
    if len(words) > 2 + n:
        extra = words[2 + n]
        if extra.startswith("#") and not line.quote(2 + n):
            hint = "lvs.cf has no trailing comments: a comment must be a line of its own"
        else:
            hint = 'quote a value that contains blanks: `send = "GET / HTTP/1.0"`'
        raise _Bad(
            make(
                codes.EXTRA_ARGS,
                f"unexpected arguments after the value of `{kw.name}`",
                word_span(f, line, 2 + n),
                help=hint,
            )
        )
    tok = words[2]
    k = kw.kind
    if k is Kind.INT:
        return _int(ctx, line, 2, kw.name)
    if k is Kind.BOOL:
        v = _int(ctx, line, 2, kw.name)
        if v not in (0, 1):
            raise _Bad(
                make(
                    codes.BOOL_EXPECTED,
                    f"boolean expected: `{kw.name}` is 0 or 1, not {tok}",
                    word_span(f, line, 2),
                    help="write 1 for on and 0 for off",
                )
            )
        return bool(v)
    if k is Kind.SECONDS:
        v = c_strtol(tok)
        if v is not None:
            return v
        try:
            fv = float(tok)
        except ValueError:
            fv = -1.0
        if fv >= 0 and re.fullmatch(r"[0-9]*\.[0-9]+|[0-9]+\.[0-9]*", tok):
            ctx.extension(line, 2, f"a fractional `{kw.name}`")
            return fv
        return _int(ctx, line, 2, kw.name)
    if k is Kind.PORT:
        v = c_strtol(tok)
        if v is not None:
            return v
        port = service_port(tok)
        if port is None:
            raise _Bad(
                make(
                    codes.UNKNOWN_SERVICE,
                    f"invalid argument: `{tok}` is neither a port number nor a TCP service name",
                    word_span(f, line, 2),
                    help="use a number, or a name from /etc/services such as `http`",
                )
            )
        return port
    if k is Kind.CHOICE:
        return _choice(ctx, kw, line)
    if k is Kind.STRING:
        return tok
    if k is Kind.QSTRING:
        return tok
    if k in (Kind.HOST, Kind.HOST_NONZERO):
        host = _host(ctx, line, 2)
        if k is Kind.HOST_NONZERO and host == _ZERO:
            raise _Bad(
                make(
                    codes.ZERO_ADDRESS,
                    f"invalid host name or ip address: `{kw.name}` cannot be 0.0.0.0",
                    word_span(f, line, 2),
                    help=f"give the router's real address, or leave `{kw.name}` out",
                )
            )
        return host
    if k is Kind.HOST_DEVICE:
        return HostDevice(address=_host(ctx, line, 2), device=words[3])
    if k is Kind.IP:
        ip = inet_aton(tok)
        if ip is None:
            ip6 = _ipv6(tok)
            if ip6 is None:
                raise _Bad(
                    make(
                        codes.BAD_IP,
                        f"invalid host name or ip address: `{kw.name}` needs an IP address, "
                        f"not `{tok}`",
                        word_span(f, line, 2),
                        help="piranha does not resolve host names here",
                    )
                )
            ctx.extension(line, 2, "an IPv6 address")
            return ip6
        return ip
    if k is Kind.NETMASK:
        ip = inet_aton(tok)
        if ip is None:
            raise _Bad(
                make(
                    codes.BAD_NETMASK,
                    f"Bad subnet mask specified: `{tok}` is not a dotted-quad netmask",
                    word_span(f, line, 2),
                    help="write a mask such as 255.255.255.0",
                )
            )
        return ip
    if k is Kind.PMASK:
        ip = inet_aton(tok)
        if _PREFIX_RE.fullmatch(tok):  # a prefix length: which one the address tells
            return PmaskWord(tok, ip)
        if ip is None:
            ctx.diags.append(
                make(
                    codes.BAD_PMASK,
                    f"`{tok}` is not a netmask; piranha ignores this pmask",
                    word_span(f, line, 2),
                    help="write a mask such as 255.255.255.0, or remove the line",
                )
            )
            return None
        return ip
    raise AssertionError(f"unhandled kind {k}")  # pragma: no cover


def _int(ctx: _Ctx, line: Line, index: int, name: str) -> int:
    v = c_strtol(line.words[index])
    if v is None:
        raise _Bad(
            make(
                codes.INT_EXPECTED,
                f"integer expected: `{name}` needs a whole number, not `{line.words[index]}`",
                word_span(ctx.file, line, index),
                help="decimal, 0x hex or 0-prefixed octal",
            )
        )
    return v


def _choice(ctx: _Ctx, kw: Keyword, line: Line) -> Any:
    tok = line.words[2]
    if tok in kw.choices:
        if (
            ctx.dialect is Dialect.PIRANHA_05
            and kw.name == "scheduler"
            and tok not in SCHEDULERS_05
        ):
            raise ctx.too_new(line, 2, f"`scheduler = {tok}`", "2001-07")
    elif tok in kw.ext_choices:
        ctx.extension(line, 2, f"`{kw.name} = {tok}`")
    else:
        allowed = kw.choices + (kw.ext_choices if ctx.dialect is Dialect.EXTENDED else ())
        if tok.lower() in allowed:
            hint = f"values are case-sensitive: write `{tok.lower()}`"
        else:
            hint = "one of: " + ", ".join(allowed)
        raise _Bad(
            make(
                codes.BAD_ARGUMENT,
                f"invalid argument: `{tok}` is not a valid `{kw.name}`",
                word_span(ctx.file, line, 2),
                help=hint,
            )
        )
    enum = _ENUMS.get(kw.name)
    return enum(tok) if enum else tok


def _ipv6(tok: str) -> IPv6Address | None:
    if ":" not in tok:
        return None
    try:
        return IPv6Address(tok)
    except ValueError:
        return None


def _host(ctx: _Ctx, line: Line, index: int) -> Host:
    tok = line.words[index]
    ip = inet_aton(tok)
    if ip is not None:
        return ip
    ip6 = _ipv6(tok)
    if ip6 is not None:
        ctx.extension(line, index, "an IPv6 address")
        return ip6
    if _HOSTNAME_RE.fullmatch(tok) and not tok.replace(".", "").isdigit():
        ctx.diags.append(
            make(
                codes.HOSTNAME,
                f"`{tok}` is a host name: it is resolved when the daemon starts, not now",
                word_span(ctx.file, line, index),
                help="an IP address makes the configuration independent of DNS",
            )
        )
        return Hostname(tok)
    raise _Bad(
        make(
            codes.BAD_HOST,
            f"invalid host name or ip address: `{tok}`",
            word_span(ctx.file, line, index),
            help="write a dotted-quad address such as 192.0.2.10",
        )
    )


def _list(ctx: _Ctx, line: Line) -> tuple[str, ...]:
    words = line.words[2:]
    if not words or words[0] != "[" or "]" not in words[1:]:
        raise _Bad(
            make(
                codes.LIST_EXPECTED,
                "list expected: write `dirs = [ a b c ]` on one line",
                line_span(ctx.file, line),
                help="`[` and `]` are words of their own, separated by blanks",
            )
        )
    return tuple(words[1 : words.index("]", 1)])


# --------------------------------------------------------------------------- blocks


class LineSpans(Mapping[str, Span]):
    """keyword -> :class:`Span` of the line that set it, each Span made when asked for.

    The model's ``spans`` maps every keyword written in a block to the span of its
    line. Building those spans eagerly was a Span object per statement — 600,000 of
    them for a large file, of which a check reads a handful. This mapping keeps
    only line numbers (a dict of str -> int, which the garbage collector does not
    even track) and the file's lines, shared by the whole model, and computes the
    span on lookup exactly as :func:`~compiler.lexer.line_span` does (from the
    keyword to the last non-blank), so ``node.spans.get("port")`` returns the same
    Span as before. Use it like any read-only mapping.
    """

    __slots__ = ("_file", "_numbers", "_source")

    def __init__(self, file: str, source: Sequence[str], numbers: dict[str, int]) -> None:
        self._file = file
        self._source = source  # the file's lines, index = line number - 1
        self._numbers = numbers

    def __getitem__(self, keyword: str) -> Span:
        number = self._numbers[keyword]
        return source_line_span(self._file, number, self._source[number - 1])

    def get(self, keyword: str, default: Any = None) -> Any:
        # Mapping.get goes through __getitem__ and a KeyError; this is the hot path
        number = self._numbers.get(keyword)
        if number is None:
            return default
        return source_line_span(self._file, number, self._source[number - 1])

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._numbers

    def __iter__(self) -> Iterator[str]:
        return iter(self._numbers)

    def __len__(self) -> int:
        return len(self._numbers)

    def __repr__(self) -> str:
        return f"LineSpans({dict(self)!r})"


def _source_lines(syntax: SyntaxFile) -> list[str]:
    """The file's lines as far as the syntax knows them (for a SyntaxFile built by hand)."""
    texts: dict[int, str] = {}
    todo: list[Line | Block] = list(syntax.items)
    while todo:
        item = todo.pop()
        if isinstance(item, Block):
            todo.append(item.header)
            todo.extend(item.items)
        elif not item.synthetic:
            texts[item.number] = item.text
    lines = [""] * max(texts, default=0)
    for number, text in texts.items():
        lines[number - 1] = text
    return lines


# What one accepted statement does to its block's fields: (keyword, {field: value},
# quote) where quote is the quote character of a QSTRING value, else None.
_Effect = tuple[str, dict[str, Any], str | None]


def _effect(ctx: _Ctx, table: dict[str, Keyword], line: Line) -> _Effect | None:
    """Read one statement; None (with a diagnostic in ctx.diags) if it is rejected."""
    words = line.words
    kw = table[words[0]]
    if (
        kw.kind is Kind.HOST
        and len(words) == 3
        and words[1] == "="
        and not kw.extension
        and kw.in_piranha_05
    ):
        # The one statement that is new on almost every line of a large file: a real
        # server's `address = IP`. A dotted quad needs none of the checks below
        # (known to every dialect, no extension, shape correct), so read it directly;
        # anything else takes the general path.
        ip = inet_aton(words[2])
        if ip is not None:
            return kw.name, {kw.name: ip}, None
    try:
        if kw.extension:
            ctx.extension(line, 0, f"`{kw.name}` inside a block")
        elif ctx.dialect is Dialect.PIRANHA_05 and not kw.in_piranha_05:
            raise ctx.too_new(line, 0, f"`{kw.name}`", kw.since)
        value = _value(ctx, kw, line)
    except _Bad as bad:
        ctx.diags.append(bad.diag)
        return None
    name = kw.name
    kind = kw.kind
    if kind is Kind.HOST_DEVICE and name == "address":
        return name, {"address": value.address, "device": value.device}, None
    if kind is Kind.QSTRING:
        return name, {name: value}, line.quote(2)
    # (test membership first: comparing an address with None raises internally)
    if name in _UNSET_MASK and value == _UNSET_MASK[name]:
        return name, {name: None}, None  # piranha's spelling of "no mask"
    return name, {name: value}, None


def _statements(
    ctx: _Ctx,
    table: dict[str, Keyword],
    lines: list[Line],
    fields: dict[str, Any],
    spans: dict[str, int],
    seen: dict[str, int],
) -> None:
    """Apply statements in order to ``fields``; record keyword -> line number in ``spans``.

    ``seen`` is where a repeated keyword is detected; for a virtual it is reset at
    each server block (a keyword set again after a server block is not reported),
    for a real server it can be ``spans`` itself.

    A statement's effect depends only on its text (and the dialect), and a large
    file repeats the same few statement lines thousands of times, so effects are
    memoised by the line's text: a repeated ``active = 1`` costs one dict lookup.
    Only statements read without any diagnostic are memoised; the others are
    read again each time so that every occurrence gets its own diagnostic.
    """
    memo = ctx.memo[id(table)]
    known = memo.get
    update = fields.update
    diags = ctx.diags
    for line in lines:
        effect = known(line.text)
        if effect is None:
            before = len(diags)
            effect = _effect(ctx, table, line)
            if effect is None:
                continue
            if len(diags) == before:
                memo[line.text] = effect
        name, updates, quote = effect
        if name in seen:
            diags.append(
                make(
                    codes.DUPLICATE_KEY,
                    f"`{name}` is set again; the value on line {seen[name]} is overridden",
                    word_span(ctx.file, line, 0),
                    help="piranha keeps the last value; remove one of the lines",
                )
            )
        seen[name] = spans[name] = line.number
        update(updates)
        if quote is not None:
            quoted = fields.setdefault("single_quoted", set())
            if quote == "'":
                quoted.add(name)
            else:
                quoted.discard(name)


def _service(ctx: _Ctx, block: Block) -> VirtualService:
    fields: dict[str, Any] = {"name": block.name}
    lines: list[Line] = []
    servers: list[RealServer] = []
    # Statements apply in order; a server block takes the virtual's port as it is
    # when the block starts (piranha's ordering trap), so flush pending lines first.
    spans: dict[str, int] = {}
    for item in block.items:
        if isinstance(item, Block):
            if lines:
                _statements(ctx, VIRTUAL, lines, fields, spans, {})
                lines = []
            servers.append(_server(ctx, item, fields.get("port", 80)))
        else:
            lines.append(item)
    _statements(ctx, VIRTUAL, lines, fields, spans, {})
    if "pmask" in spans:
        _resolve_pmask(ctx, block, fields, spans["pmask"])
    if block.unclosed_at_eof:
        _unclosed(ctx, block)
    fields["single_quoted"] = frozenset(fields.get("single_quoted", ()))
    fields["servers"] = tuple(servers)
    cls = FailoverService if block.kind == "failover" else VirtualService
    return cls(
        **fields,
        span=line_span(ctx.file, block.header),
        spans=LineSpans(ctx.file, ctx.source, spans),
    )


def _resolve_pmask(ctx: _Ctx, block: Block, fields: dict[str, Any], number: int) -> None:
    """`pmask = N` or `pmask = /N` by the virtual's family: for an IPv6 virtual the
    persistence prefix length (``pmask6``, extended dialect); for an IPv4 one what
    piranha makes of it (``/N``: not a netmask, ignored; ``N``: the netmask inet_aton
    reads, 0.0.0.N), reported. A dotted netmask on an IPv6 virtual is an error."""
    word = fields.get("pmask")
    ipv6 = isinstance(fields.get("address"), IPv6Address)
    if not isinstance(word, PmaskWord) and not (ipv6 and word is not None and int(word)):
        return  # a netmask on an IPv4 virtual (as piranha reads it), or unset
    line = next(i for i in block.items if isinstance(i, Line) and i.number == number and i.words)
    at = word_span(ctx.file, line, 2)
    fields.pop("pmask")
    if ipv6 and not isinstance(word, PmaskWord):
        ctx.diags.append(
            make(
                codes.PMASK_FAMILY,
                f"pmask {word} is an IPv4 netmask but the virtual's address is IPv6",
                at,
                help="IPv6 persistence is grouped by prefix length: write `pmask = 64`",
            )
        )
        return
    assert isinstance(word, PmaskWord)
    if ipv6:
        if not 1 <= word.prefix <= 128:
            ctx.diags.append(
                make(
                    codes.PMASK_FAMILY,
                    f"pmask {word.text} is not an IPv6 prefix length (1..128)",
                    at,
                    help="write the persistence prefix length, such as `pmask = 64`",
                )
            )
            return
        try:
            ctx.extension(line, 2, "a persistence prefix length")
        except _Bad as bad:
            ctx.diags.append(bad.diag)
            return
        fields["pmask6"] = None if word.prefix == 128 else word.prefix
        return
    if word.mask is None:  # `/N`: piranha cannot read it and ignores it
        ctx.diags.append(
            make(
                codes.BAD_PMASK,
                f"`{word.text}` is not a netmask; piranha ignores this pmask",
                at,
                help="a prefix length is for IPv6 virtuals; write a netmask such as "
                "255.255.255.0, or remove the line",
            )
        )
        return
    if word.mask == IPv4Address(0):  # `pmask = 0`: piranha's unset mask, no surprise
        fields["pmask"] = word.mask
        return
    ctx.diags.append(
        make(
            codes.PMASK_FAMILY,
            f"pmask {word.text} on an IPv4 virtual is the netmask {word.mask} (piranha reads "
            "a number as an address), not a prefix length",
            at,
            severity=Severity.WARNING,
            help="write the netmask in dotted form, such as 255.255.255.0; prefix lengths "
            "are for IPv6 virtuals",
        )
    )
    if word.mask != _ALL_ONES:
        fields["pmask"] = word.mask


def _server(ctx: _Ctx, block: Block, port: int) -> RealServer:
    fields: dict[str, Any] = {"name": block.name, "port": port}
    spans: dict[str, int] = {}
    # the grammar admits only statements in a server block, never a nested block
    _statements(ctx, SERVER, block.items, fields, spans, spans)  # type: ignore[arg-type]
    if block.unclosed_at_eof:
        _unclosed(ctx, block)
    return RealServer(
        **fields,
        span=line_span(ctx.file, block.header),
        spans=LineSpans(ctx.file, ctx.source, spans),
    )


def _unclosed(ctx: _Ctx, block: Block) -> None:
    """Report a block that the end of the file closed (``block.unclosed_at_eof``)."""
    ctx.diags.append(
        make(
            codes.UNCLOSED_BLOCK,
            f"`{block.kind} {block.name}` is not closed before the end of the file",
            line_span(ctx.file, block.header),
            severity=Severity.ERROR if ctx.dialect is Dialect.PIRANHA_05 else None,
            help="add `}` on a line of its own; piranha 0.8.6 accepts the file, 0.5 rejects it",
        )
    )


def lower(syntax: SyntaxFile, file: str, dialect: Dialect) -> tuple[Config, list[Diagnostic]]:
    """Build the model from the parsed blocks; never raises on bad values."""
    with gc_paused():
        return _lower(syntax, file, dialect)


def _lower(syntax: SyntaxFile, file: str, dialect: Dialect) -> tuple[Config, list[Diagnostic]]:
    source = syntax.source_lines
    ctx = _Ctx(file, dialect, _source_lines(syntax) if source is None else source)
    fields: dict[str, Any] = {}
    lines: list[Line] = []
    virtuals: list[VirtualService] = []
    failovers: list[FailoverService] = []
    for item in syntax.items:
        if isinstance(item, Block):
            svc = _service(ctx, item)
            if isinstance(svc, FailoverService):
                failovers.append(svc)
            else:
                virtuals.append(svc)
        else:
            lines.append(item)
    spans: dict[str, int] = {}
    _statements(ctx, GLOBAL, lines, fields, spans, {})
    # piranha: with `primary` but no `primary_private`, both private addresses
    # default to the public ones (lvsconfig.c, end of lvsParseConfig).
    if "primary" in fields and "primary_private" not in fields:
        fields["primary_private"] = fields["primary"]
        fields["backup_private"] = fields.get("backup")
    # a virtual's own `network` equal to the global one says nothing more
    network = fields.get("network", Network.NAT)
    virtuals = [replace(v, network=None) if v.network is network else v for v in virtuals]
    config = Config(
        **fields,
        virtuals=tuple(virtuals),
        failovers=tuple(failovers),
        file=file,
        spans=LineSpans(file, ctx.source, spans),
    )
    return config, ctx.diags
