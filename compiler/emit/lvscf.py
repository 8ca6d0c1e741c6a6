"""``--target lvs.cf``: the model written back as a canonical lvs.cf.

The layout is piranha's GUI's (piranha-gui ``parse.php``): global keywords one per
line, then each ``virtual`` and ``failover`` block with its keywords indented five
spaces and its ``server`` blocks' keywords nine. Only values that differ from the
default are written, except ``active`` and ``address``, which every block states.
Parsing the output gives back an equal model — in the dialect the model belongs to:
a model using extended features (IPv6, a per-virtual ``network``...) parses back only
in the extended dialect.

Meaning is kept where piranha's syntax makes it subtle:

* A ``server`` block takes the virtual's ``port`` as it stands when the block starts,
  so ``port`` comes before the servers, and a server whose port differs from the
  virtual's gets a ``port`` line of its own.
* ``send``, ``expect``, ``send_program``, ``start_cmd`` and ``stop_cmd`` keep their
  quote character: piranha hands single quotes on to nanny
  (``VirtualService.single_quoted``). Other values are quoted only when they must be
  (blanks, empty, a leading quote), with whichever quote character the value lacks.
* With ``primary`` set and ``primary_private`` unset piranha copies ``primary`` and
  ``backup`` into the private addresses, so those two are written only when they are
  not exactly that copy.

lvs.cf has no escapes, so some values cannot be written at all; they raise
:class:`~compiler.emit.EmitError`: a value that needs quoting but contains both quote
characters, a double-quoted-meaning string holding ``"`` and a blank, a single-quoted
one holding ``'``, a block name ending in ``{``, and the like.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from ..keywords import GLOBAL, SERVER, VIRTUAL, Keyword, Kind
from ..lexer import MAX_WORDS
from ..model import Config, HostDevice, Hostname, RealServer, VirtualService
from ..source import Span
from . import EmitError

TARGET = "lvs.cf"
VIRTUAL_INDENT = " " * 5
SERVER_INDENT = " " * 9
_BLANKS = " \t"
_QUOTES = "\"'"

# piranha-gui's order; keywords it never wrote follow the ones they sit next to
GLOBAL_ORDER = (
    "serial_no", "primary", "primary_private", "primary_shared", "service", "rsh_command",
    "backup_active", "backup", "backup_private", "backup_shared", "heartbeat",
    "heartbeat_port", "keepalive", "deadtime", "network", "nat_router", "nat_nmask",
    "reservation_conflict_action", "debug_level", "ipvsadm", "sync", "active_cmd",
    "inactive_cmd", "monitor_links", "syncdaemon", "syncd_iface", "syncd_id", "tcp_timeout",
    "tcpfin_timeout", "udp_timeout", "hard_shutdown",
)  # fmt: skip
VIRTUAL_ORDER = (
    "active", "address", "sorry_server", "vip_nmask", "fwmark", "port", "persistent", "pmask",
    "send", "expect", "use_regex", "send_program", "load_monitor", "scheduler", "protocol",
    "network", "timeout", "reentry", "quiesce_server", "client_monitor", "start_cmd",
    "stop_cmd", "master", "dirs",
)  # fmt: skip
SERVER_ORDER = ("address", "active", "port", "weight")
_ALWAYS = frozenset({"active", "address"})


def _order(preferred: tuple[str, ...], table: dict[str, Keyword]) -> list[Keyword]:
    names = [n for n in preferred if n in table] + [n for n in table if n not in preferred]
    return [table[n] for n in names]


def _fail(message: str, span: Span | None = None, help: str | None = None) -> EmitError:
    return EmitError(TARGET, message, span, help)


# --------------------------------------------------------------------------- words


def word(value: str, *, last: bool, what: str, span: Span | None = None) -> str:
    """One lvs.cf word that reads back as ``value``, quoted only if it must be.

    piranha's tokenizer looks for a closing quote from the first blank after the
    opening one, so a quoted word without blanks can only be the last on its line.
    """
    if value and not any(c in _BLANKS for c in value) and value[0] not in _QUOTES:
        return value
    if not last and not any(c in _BLANKS for c in value):
        raise _fail(
            f"{what} `{value}` would need quotes, which piranha allows only at the end "
            "of a line for a value without blanks",
            span,
        )
    for q in _QUOTES:
        if q not in value:
            return q + value + q
    raise _fail(
        f"{what} contains both quote characters and needs quoting; lvs.cf has no escapes",
        span,
        "remove the blanks or one kind of quote from the value",
    )


def _qstring(value: str, single: bool, what: str, span: Span | None) -> str:
    """A send/expect-like value: single quotes kept (they reach nanny), else double."""
    if single:
        if "'" in value:
            raise _fail(f"{what} was single-quoted and contains `'`; lvs.cf has no escapes", span)
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    if value and not any(c in _BLANKS for c in value) and value[0] not in _QUOTES:
        return value  # unquoted means the same as double-quoted
    raise _fail(
        f'{what} contains `"` and must be double-quoted; lvs.cf has no escapes',
        span,
        "single quotes would change the value nanny receives (it keeps them)",
    )


def _seconds(v: float, what: str, span: Span | None) -> str:
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v) or (v < 0 and not v.is_integer()):
        raise _fail(f"{what} {v!r} cannot be written", span)
    if v.is_integer():
        return str(int(v))
    return format(Decimal(repr(v)), "f")


def _host(v: Any) -> str:
    if isinstance(v, IPv4Address | IPv6Address | Hostname):
        return str(v)
    raise TypeError(f"not a host: {v!r}")


def value_text(kw: Keyword, v: Any, node: Any, span: Span | None) -> str:
    """The text after ``KEYWORD = `` for one value of keyword ``kw``."""
    what = f"`{kw.name}`"
    k = kw.kind
    if k is Kind.BOOL:
        return "1" if v else "0"
    if k in (Kind.INT, Kind.PORT):
        return str(int(v))
    if k is Kind.SECONDS:
        return _seconds(v, what, span)
    if k is Kind.PMASK and isinstance(v, int):
        return str(v)
    if k in (Kind.HOST, Kind.HOST_NONZERO, Kind.IP, Kind.NETMASK, Kind.PMASK):
        return _host(v)
    if k is Kind.CHOICE:
        return v.value if isinstance(v, Enum) else str(v)
    if k is Kind.STRING:
        return word(v, last=True, what=what, span=span)
    if k is Kind.QSTRING:
        single = kw.name in getattr(node, "single_quoted", ())
        return _qstring(v, single, what, span)
    if k is Kind.HOST_DEVICE:
        assert isinstance(v, HostDevice)
        return f"{_host(v.address)} {word(v.device, last=True, what='the device', span=span)}"
    if k is Kind.LIST:
        if len(v) > MAX_WORDS - 4:
            raise _fail(f"{what} has {len(v)} entries; a line holds at most {MAX_WORDS} words")
        items = []
        for item in v:
            if item == "]":
                raise _fail(f"{what} cannot hold the entry `]`", span)
            items.append(word(item, last=False, what=f"an entry of {what}", span=span))
        return " ".join(["[", *items, "]"])
    raise AssertionError(f"unhandled kind {k}")  # pragma: no cover


# --------------------------------------------------------------------------- blocks


def _defaults(obj: Any) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def _value(obj: Any, name: str) -> Any:
    if name == "address" and isinstance(obj, VirtualService):
        # the model keeps `address = IP DEVICE` as two fields
        if (obj.address is None) != (obj.device is None):
            raise _fail(f"`{obj.name}`: an address needs its device and vice versa", obj.span)
        if obj.address is None:
            return None
        return HostDevice(address=obj.address, device=obj.device or "")
    if name == "pmask" and isinstance(obj, VirtualService) and obj.pmask6 is not None:
        return obj.pmask6  # an IPv6 virtual's prefix length: `pmask = 64`
    return getattr(obj, name)


def _statements(
    obj: Any,
    table: dict[str, Keyword],
    preferred: tuple[str, ...],
    indent: str,
    *,
    always: frozenset[str] = _ALWAYS,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """``KEYWORD = VALUE`` lines of one block: set values that differ from the default."""
    defaults = _defaults(obj)
    spans = getattr(obj, "spans", {})
    out = []
    for kw in _order(preferred, table):
        name = kw.name
        v = _value(obj, name)
        # "equal" as the model compares: keepalive 2.0 is the default 2
        if name in skip or v is None or (name not in always and v == defaults.get(name)):
            continue
        out.append(f"{indent}{name} = {value_text(kw, v, obj, spans.get(name))}")
    return out


def _header(kind: str, name: str, indent: str, span: Span | None) -> str:
    if name.endswith("{"):
        raise _fail(
            f"the {kind} name `{name}` ends with `{{`, which piranha reads as the brace", span
        )
    return f"{indent}{kind} {word(name, last=False, what=f'the {kind} name', span=span)} {{"


def _server(rs: RealServer, vport: int) -> list[str]:
    # a server without a `port` line takes the virtual's, so write it when it differs
    port = frozenset() if rs.port == vport else frozenset({"port"})
    skip = frozenset({"port"}) - port
    body = _statements(rs, SERVER, SERVER_ORDER, SERVER_INDENT, always=_ALWAYS | port, skip=skip)
    return [_header("server", rs.name, VIRTUAL_INDENT, rs.span), *body, f"{VIRTUAL_INDENT}}}"]


def _service(vs: VirtualService, kind: str) -> list[str]:
    out = [_header(kind, vs.name, "", vs.span)]
    # every virtual keyword, `port` included, comes before the server blocks
    out += _statements(vs, VIRTUAL, VIRTUAL_ORDER, VIRTUAL_INDENT)
    for rs in vs.servers:
        out += _server(rs, vs.port)
    out.append("}")
    return out


def _globals(config: Config) -> list[str]:
    skip: frozenset[str] = frozenset()
    if (
        config.primary is not None
        and config.primary_private == config.primary
        and config.backup_private == config.backup
    ):
        skip = frozenset({"primary_private", "backup_private"})  # piranha derives these
    elif config.primary is not None and config.primary_private is None:
        raise _fail(
            "`primary_private` is unset while `primary` is set; piranha would copy `primary`",
            config.spans.get("primary"),
        )
    return _statements(config, GLOBAL, GLOBAL_ORDER, "", skip=skip)


def emit(config: Config) -> str:
    out = _globals(config)
    for vs in config.virtuals:
        out += _service(vs, "virtual")
    for fs in config.failovers:
        out += _service(fs, "failover")
    if not out:
        # piranha refuses an empty file ("Empty configuration"); a comment is enough
        out = ["# every setting has its default value"]
    return "".join(line + "\n" for line in out)
