"""Semantic checks over the model: mistakes piranha accepts but that will not work.

Each check is a function ``(config, dialect) -> Iterable[Diagnostic]`` registered in
``CHECKS``; ``check()`` runs them all. Checks only read the model: no re-parsing, no
I/O, no name resolution, and they accept any model (host names, IPv6, missing
addresses) without raising. Each is one pass over the file, so a file with 100,000
real servers checks in a fraction of a second.

What is checked is what piranha would *do*: lvsd's ipvsadm command lines, nanny's
probe loop, pulse's heartbeat timers (docs/diagnostics.md explains every code with
the piranha behaviour behind it). Severity follows one rule: an **error** when the
configuration cannot work at all (ipvsadm refuses it, nanny crashes or never
succeeds); a **warning** when it runs but probably not as meant; a **note** for a
fact worth knowing. Runtime checks look only at active virtuals and active real
servers, because piranha ignores inactive ones completely.

The module is long but flat: helpers, then the checks grouped by topic (virtual
services, real servers, IPVS parameters, health checks, routers), then a small
parser that judges POSIX extended regular expressions the way glibc's regcomp does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address

from . import codes
from .diagnostics import Diagnostic, Severity, make
from .keywords import GLOBAL, VIRTUAL
from .model import (
    Config,
    Dialect,
    Network,
    Protocol,
    RealServer,
    ServiceType,
    VirtualService,
)
from .source import Span

Check = Callable[[Config, Dialect], Iterable[Diagnostic]]
CHECKS: list[Check] = []


def check(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    for c in CHECKS:
        yield from c(config, dialect)


def _register(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


# --------------------------------------------------------------------------- helpers

_ZERO = IPv4Address(0)
_MAX_WEIGHT = 65535  # ipvsadm: string_to_number(optarg, 0, 65535)
_MAX_IPVS_TIMEOUT = 86400 * 31  # ipvsadm's MAX_TIMEOUT for -p and --set
_MAX_INT = 2**31 - 1  # piranha prints fwmark with %d


def _at(node: VirtualService | RealServer, *keywords: str) -> Span | None:
    """The line of the first of ``keywords`` that was written, else the block header."""
    spans = node.spans
    for k in keywords:
        span = spans.get(k)
        if span is not None:
            return span
    return node.span


def _file_start(config: Config) -> Span:
    return Span(config.file, 1, 1, 1)


def _line(span: Span | None) -> str:
    return f" (line {span.line})" if span is not None else ""


def _active(config: Config) -> Iterator[VirtualService]:
    return (v for v in config.virtuals if v.active)


def _active_services(config: Config) -> Iterator[VirtualService]:
    """Active virtual and failover blocks: everything a nanny is started for."""
    yield from _active(config)
    yield from (f for f in config.failovers if f.active)


def _has_backup(config: Config) -> bool:
    """pulse runs as a pair (and sends heartbeats) only with backup_active and a backup."""
    return config.backup_active and config.backup is not None and config.backup != _ZERO


def _ip_family(host: object) -> int:
    """4 or 6 for an IP address; 0 for a host name or nothing (unknown until run time)."""
    if isinstance(host, IPv4Address):
        return 4
    if isinstance(host, IPv6Address):
        return 6
    return 0


def _host_key(host: object) -> object:
    """A cheap dictionary key equal for equal hosts: hashing an IPv4Address runs Python
    code, its integer does not (this matters for 100,000 real servers)."""
    return host._ip if type(host) is IPv4Address else host  # type: ignore[attr-defined]


def _contiguous(mask: IPv4Address) -> bool:
    inverse = ~int(mask) & 0xFFFFFFFF
    return inverse & (inverse + 1) == 0


def _prefix(mask: int) -> int:
    return 32 - ((~mask & 0xFFFFFFFF).bit_length())


def _nanny_text(vs: VirtualService, keyword: str) -> str | None:
    """The string nanny receives for ``send``/``expect``: lvsd strips only double
    quotes, so a single-quoted value arrives with its quote characters."""
    value = getattr(vs, keyword)
    if value is not None and keyword in vs.single_quoted:
        return f"'{value}'"
    return value


_NANNY_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", "'": "'", '"': '"'}


@lru_cache(maxsize=1024)
def _nanny_unescape(text: str) -> tuple[str, int | None]:
    """nanny's convert_str(): the converted text, and the index of the first backslash
    it cannot convert. convert_str never advances past such a backslash, so nanny
    spins there forever (piranha 0.5 and 0.8 alike); only strings of two or more
    bytes are converted. (Cached: a large file repeats the same few strings.)"""
    if "\\" not in text or len(text.encode("utf-8", "surrogateescape")) <= 1:
        return text, None
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        replacement = _NANNY_ESCAPES.get(text[i + 1]) if i + 1 < n else None
        if replacement is None:
            return "".join(out), i
        out.append(replacement)
        i += 2
    return "".join(out), None


_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {9: "\\t", 10: "\\n", 13: "\\r", 127: "\\x7f"}


def _show(text: str, limit: int = 40) -> str:
    """A string from the file as it was written, for a message: control characters
    (which nanny's unescaping may have produced) shown as escapes, long ones cut."""
    shown = text.translate(_CONTROL)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# --------------------------------------------------------------------------- virtual services


@_register
def no_active_service(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS201: pulse exits at start when no service of the selected kind is active.

    A file without any virtual or failover block is taken for a fragment holding only
    global settings, the mirror image of a virtual-only fragment, and is not reported."""
    if not config.virtuals and not config.failovers:
        return
    fos = config.service is ServiceType.FOS
    blocks: tuple[VirtualService, ...] = config.failovers if fos else config.virtuals
    if any(b.active for b in blocks):
        return
    kind = "failover" if fos else "virtual"
    if blocks:
        span = blocks[0].span
        if len(blocks) == 1:
            what = f"{kind} `{blocks[0].name}` is not active"
        else:
            what = f"none of the {len(blocks)} {kind} blocks is active"
    else:
        span = config.spans.get("service") or (*config.virtuals, *config.failovers)[0].span
        what = f"the file has no {kind} block"
    yield make(
        codes.NO_ACTIVE_SERVICE,
        f'{what}: pulse refuses to start ("no active {"fos" if fos else "lvs"} services defined")',
        span or _file_start(config),
        help=f"set `active = 1` in the {kind} block that should run; a backup copy or a "
        "template may leave this as it is",
    )


@_register
def virtual_without_address(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS202: an active virtual with no VIP cannot receive traffic."""
    for vs in _active(config):
        if vs.address is None:
            yield make(
                codes.VIRTUAL_WITHOUT_ADDRESS,
                f"virtual `{vs.name}` is active but has no `address`: lvsd would create the "
                "IPVS service on 0.0.0.0 and pulse would bring up no VIP, so no client can "
                "reach it",
                vs.span,
                help="add `address = VIP DEVICE`, for example `address = 192.0.2.10 eth0:1`",
            )


@_register
def duplicate_virtual_service(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS203: two active (VIP, protocol, port) services are one IPVS service."""
    seen: dict[tuple, VirtualService] = {}
    for vs in _active(config):
        if vs.fwmark or vs.address is None:
            continue
        key = (_host_key(vs.address), vs.protocol, vs.port)
        first = seen.setdefault(key, vs)
        if first is vs:
            continue
        yield make(
            codes.DUPLICATE_VIRTUAL,
            f"virtual `{vs.name}` repeats {vs.protocol.value} {vs.address}:{vs.port} of virtual "
            f"`{first.name}`{_line(first.span)}: lvsd's second `ipvsadm -A` fails, so no "
            f"health check runs for the real servers of `{vs.name}`",
            _at(vs, "address"),
            help="give each virtual its own address or port, or move the real servers into "
            "one virtual",
        )


def _scheduling(vs: VirtualService) -> dict[str, str]:
    """The settings one IPVS fwmark service holds once, as lvsd would pass them."""
    persistent = max(vs.persistent, 0)  # lvsd passes -p only when positive
    settings = {"scheduler": vs.scheduler.value, "persistent": str(persistent)}
    if persistent:
        settings["pmask"] = (
            f"/{vs.pmask6 or 128}"
            if isinstance(vs.address, IPv6Address)
            else str(vs.pmask or "255.255.255.255")
        )
    return settings


@_register
def shared_fwmark(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS204/LVS205: virtuals with one fwmark are one IPVS service (sample 12)."""
    groups: dict[int, VirtualService] = {}
    for vs in _active(config):
        if not vs.fwmark:
            continue
        first = groups.setdefault(vs.fwmark, vs)
        if first is vs:
            continue
        mine, theirs = _scheduling(vs), _scheduling(first)
        conflict = next(
            (k for k in ("scheduler", "persistent", "pmask") if mine.get(k) != theirs.get(k)),
            None,
        )
        if conflict is not None:
            have, want = mine.get(conflict, "unset"), theirs.get(conflict, "unset")
            yield make(
                codes.SHARED_FWMARK_CONFLICT,
                f"virtual `{vs.name}` shares fwmark {vs.fwmark} with virtual `{first.name}`"
                f"{_line(first.span)} but has {conflict} {have}, not {want}: one fwmark "
                "service has one scheduler and one persistence setting",
                _at(vs, conflict, "fwmark"),
                help="make scheduler, persistent and pmask identical in every virtual that "
                "uses this fwmark",
            )
            continue
        yield make(
            codes.SHARED_FWMARK,
            f"virtual `{vs.name}` shares fwmark {vs.fwmark} with virtual `{first.name}`"
            f"{_line(first.span)}: together they are one IPVS fwmark service whose real "
            "servers are those of both",
            _at(vs, "fwmark"),
            notes=(
                f"piranha 0.8.6 runs `ipvsadm -A -f {vs.fwmark}` once per virtual; the second "
                "one fails, and lvsd then starts health checks (and adds real servers) only "
                f"for `{first.name}`",
            ),
        )


@_register
def duplicate_name(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS206: names identify virtuals and servers in logs and in the piranha GUI."""
    for kind, blocks in (("virtual", config.virtuals), ("failover", config.failovers)):
        seen: dict[str, VirtualService] = {}
        for vs in blocks:
            first = seen.setdefault(vs.name, vs)
            if first is not vs:
                yield make(
                    codes.DUPLICATE_NAME,
                    f"a second {kind} named `{vs.name}` (the first is on line "
                    f"{first.span.line if first.span else '?'}): logs and the piranha GUI "
                    "cannot tell them apart",
                    vs.span,
                    help=f"rename one of the {kind} blocks",
                )
            servers = vs.servers
            if len(servers) < 2 or len({rs.name for rs in servers}) == len(servers):
                continue
            names: dict[str, RealServer] = {}
            for rs in vs.servers:
                other = names.setdefault(rs.name, rs)
                if other is not rs:
                    yield make(
                        codes.DUPLICATE_NAME,
                        f"a second server named `{rs.name}` in {kind} `{vs.name}` (the first "
                        f"is on line {other.span.line if other.span else '?'}): lvsd's log "
                        "lines (`nanny for child VIRTUAL/SERVER died`) become ambiguous",
                        rs.span,
                        help="rename one of the server blocks",
                    )


@_register
def blocks_of_the_other_mode(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS207/LVS208: `service` selects virtual (lvs) or failover (fos) blocks."""
    if config.service is ServiceType.LVS:
        for fo in config.failovers:
            if fo.active:
                yield make(
                    codes.FAILOVER_IGNORED,
                    f"failover `{fo.name}` is not used: with `service = lvs` piranha runs the "
                    "virtual blocks and ignores the failover blocks",
                    fo.span,
                    help="GUI-written files keep failover blocks around; switch with "
                    "`service = fos` to use them instead",
                )
        return
    for vs in _active(config):
        yield make(
            codes.VIRTUAL_IGNORED,
            f"virtual `{vs.name}` is active but not used: with `service = fos` piranha runs "
            "only the failover blocks",
            vs.span,
            help="set `service = lvs` to run the virtual services, or `active = 0` here",
        )


# --------------------------------------------------------------------------- real servers


@_register
def no_active_real_server(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS210: the VIP is brought up, but nothing serves it."""
    for vs in _active(config):
        for rs in vs.servers:
            if rs.active:
                break
        else:
            what = "no server block" if not vs.servers else "no active real server"
            yield make(
                codes.NO_ACTIVE_REAL_SERVER,
                f"virtual `{vs.name}` is active but has {what}: its VIP accepts connections "
                "that have nowhere to go",
                vs.span,
                help="add `active = 1` to a server block, or set the virtual inactive",
            )


@_register
def real_server_without_address(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS211: nanny would probe 0.0.0.0 and ipvsadm refuses it as a destination."""
    for vs in _active(config):
        for rs in vs.servers:
            if rs.address is None and rs.active:
                yield make(
                    codes.SERVER_WITHOUT_ADDRESS,
                    f"real server `{rs.name}` of virtual `{vs.name}` is active but has no "
                    "`address`: nanny would probe 0.0.0.0 (this router itself) and IPVS "
                    "refuses 0.0.0.0 as a destination",
                    rs.span,
                    help="add `address = IP` to the server block",
                )


def _direct(config: Config, vs: VirtualService) -> bool:
    """Direct routing or tunnelling to a (VIP, port) service: IPVS keeps the VIP's port."""
    return not vs.fwmark and config.forwarding(vs) in (Network.DIRECT, Network.TUNNEL)


@_register
def duplicate_real_server(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS212 (same address and port) and LVS214 (same IPVS destination after direct
    routing or tunnelling replaces the port)."""
    for vs in _active(config):
        if len(vs.servers) < 2:
            continue
        live = [rs for rs in vs.servers if rs.active and rs.address is not None]
        if len({_host_key(rs.address) for rs in live}) == len(live):
            continue  # every address once: nothing can repeat
        direct = _direct(config, vs)
        exact: dict[tuple, RealServer] = {}
        by_address: dict[object, RealServer] = {}
        for rs in live:
            first = exact.setdefault((rs.address, rs.port), rs)
            if first is not rs:
                yield make(
                    codes.DUPLICATE_REAL_SERVER,
                    f"real server `{rs.name}` repeats {rs.address}:{rs.port} of `{first.name}`"
                    f"{_line(first.span)}: lvsd starts one health check for the pair and "
                    "ignores the second",
                    _at(rs, "address"),
                    help="remove one of the two server blocks",
                )
                continue
            if not direct:
                continue
            other = by_address.setdefault(rs.address, rs)
            if other is not rs:
                fatal = config.hard_shutdown
                yield make(
                    codes.DESTINATION_COLLISION,
                    f"real servers `{other.name}` ({other.address}:{other.port}) and "
                    f"`{rs.name}` ({rs.address}:{rs.port}) are one IPVS destination: with "
                    f"{config.forwarding(vs).value} forwarding IPVS uses the virtual port "
                    f"{vs.port} for both, so the second nanny's `ipvsadm -a` fails and that "
                    "nanny exits"
                    + (", which makes lvsd stop every service (hard_shutdown)" if fatal else ""),
                    _at(rs, "port", "address"),
                    severity=None if fatal else Severity.WARNING,
                    help="keep one server block per real server address, or use NAT "
                    "(`network = nat`) to reach different ports",
                )


@_register
def real_server_port_ignored(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS213: only NAT (and fwmark services) can send a real server another port."""
    for vs in _active(config):
        if not _direct(config, vs):
            continue
        port = vs.port
        for rs in vs.servers:
            if rs.port != port and rs.active and "port" in rs.spans:
                yield make(
                    codes.REAL_PORT_IGNORED,
                    f"real server `{rs.name}` has port {rs.port}, but with "
                    f"{config.forwarding(vs).value} forwarding IPVS sends it the virtual "
                    f"port {vs.port}; nanny still health-checks port {rs.port}",
                    rs.spans["port"],
                    help=f"remove the port line (or make it {vs.port}); port translation "
                    "needs `network = nat`",
                )


@_register
def weight_out_of_range(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS215/LVS216: weights ipvsadm refuses, and weight 0."""
    for vs in _active(config):
        for rs in vs.servers:
            w = rs.weight
            if 0 < w <= _MAX_WEIGHT or not rs.active:
                continue
            span = _at(rs, "weight")
            if w == 0:
                yield make(
                    codes.ZERO_WEIGHT,
                    f"real server `{rs.name}` is active with weight 0: piranha 0.5 adds it "
                    "quiesced (no new connections, ever); piranha 0.8's nanny adds it with "
                    "weight 1 instead and, with a load monitor, drops it to 0 later",
                    span,
                    help="to take a server out of service set `active = 0`; otherwise give it "
                    "a positive weight",
                )
            elif w < 0:
                yield make(
                    codes.WEIGHT_OUT_OF_RANGE,
                    f"weight {w} is negative: ipvsadm accepts 0..{_MAX_WEIGHT}, so piranha 0.5 "
                    "cannot add the server (piranha 0.8's nanny silently uses weight 1)",
                    span,
                    help="use a weight from 1 to 65535",
                )
            else:
                yield make(
                    codes.WEIGHT_OUT_OF_RANGE,
                    f"weight {w} is above {_MAX_WEIGHT}, the largest ipvsadm accepts: nanny's "
                    f"`ipvsadm ... -w {w}` fails and the nanny exits",
                    span,
                    help="use a weight from 1 to 65535; only the ratios between weights matter",
                )


@_register
def port_after_servers(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS217: a server block copies the virtual's port as it is when the block starts."""
    for vs in _active(config):
        port = vs.port
        inherited = [rs for rs in vs.servers if rs.port != port and "port" not in rs.spans]
        port_span = vs.spans.get("port") if inherited else None
        if port_span is None:
            continue
        stale = [
            rs
            for rs in inherited
            if rs.active and rs.span is not None and rs.span.line < port_span.line
        ]
        if stale:
            first = stale[0]
            others = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
            yield make(
                codes.PORT_AFTER_SERVERS,
                f"`port = {vs.port}` comes after server `{first.name}`{_line(first.span)}"
                f"{others}, which keep{'s' if not others else ''} the earlier port "
                f"{first.port}: piranha gives a server the virtual's port as it stands when "
                "the server block starts",
                port_span,
                help="move the `port` line above the first server block",
            )


@_register
def sorry_server_is_real_server(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS218: the fallback for "every real server is down" is one of those servers."""
    for vs in _active(config):
        sorry = vs.sorry_server
        if sorry is None:
            continue
        twin = next((rs for rs in vs.servers if rs.active and rs.address == sorry), None)
        if twin is not None:
            yield make(
                codes.SORRY_IS_REAL_SERVER,
                f"sorry_server {sorry} is also real server `{twin.name}`: lvsd adds the sorry "
                "server when every real server has failed, including this one",
                _at(vs, "sorry_server"),
                help="point sorry_server at a host that is not in the pool (a maintenance "
                "page server)",
            )


def _classful(address: int) -> int:
    """The prefix length `ifconfig DEV IP up` gets without a netmask (kernel
    inet_abc_len); 0 for class D/E addresses."""
    first = address >> 24
    return 8 if first < 128 else 16 if first < 192 else 24 if first < 224 else 0


@_register
def nat_real_server_off_subnet(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS219: NAT real servers use nat_router as their gateway, so share its subnet."""
    router = config.nat_router
    if router is None or not isinstance(router.address, IPv4Address):
        return
    gateway = int(router.address)
    mask = config.nat_nmask
    if mask is None:
        prefix = _classful(gateway)
        why = f"nat_nmask is not set, so `ifconfig` gives nat_router its classful /{prefix}"
    elif not _contiguous(mask):
        return
    else:
        prefix = _prefix(int(mask))
        why = f"nat_nmask {mask}"
    if not 0 < prefix < 32:
        return
    bits = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    net = gateway & bits
    subnet = f"{IPv4Address(net)}/{prefix}"
    for vs in _active(config):
        if config.forwarding(vs) is not Network.NAT:
            continue
        for rs in vs.servers:
            address = rs.address
            if rs.active and isinstance(address, IPv4Address) and int(address) & bits != net:
                yield make(
                    codes.NAT_OFF_SUBNET,
                    f"NAT real server {address} is outside {subnet}, the subnet of nat_router "
                    f"{router.address} ({why}): it cannot use nat_router as its gateway",
                    _at(rs, "address"),
                    help="NAT real servers send their replies through nat_router; put them on "
                    "its subnet, or correct nat_nmask",
                )


@_register
def address_family_mismatch(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS220: IPVS mixes IPv4 and IPv6 only for tunnel destinations, without sync."""
    for vs in _active(config):
        family = _ip_family(vs.address)
        if not family or vs.fwmark:
            continue
        method = config.forwarding(vs)
        if method is Network.TUNNEL and not config.syncdaemon:
            continue
        why = (
            "IPVS refuses mixed-family destinations while the sync daemon runs"
            if method is Network.TUNNEL
            else f"IPVS mixes families only for tunnel destinations, not {method.value}"
        )
        alien = IPv6Address if family == 4 else IPv4Address
        targets: list[tuple[str, object, VirtualService | RealServer, str]] = [
            (f"real server `{rs.name}`", rs.address, rs, "address")
            for rs in vs.servers
            if type(rs.address) is alien and rs.active
        ]
        if type(vs.sorry_server) is alien:
            targets.append(("the sorry server", vs.sorry_server, vs, "sorry_server"))
        for who, address, node, keyword in targets:
            yield make(
                codes.FAMILY_MISMATCH,
                f"{who} ({address}) is IPv{6 if family == 4 else 4} but virtual `{vs.name}` "
                f"is IPv{family}: {why}",
                _at(node, keyword),
                help="use real servers of the VIP's address family",
            )


# --------------------------------------------------------------------------- IPVS parameters


@_register
def port_out_of_range(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS225/LVS226: ports ipvsadm refuses."""
    for vs in _active(config):
        if not vs.fwmark:
            if not 0 <= vs.port <= 65535:
                yield make(
                    codes.PORT_OUT_OF_RANGE,
                    f"port {vs.port} is outside 0..65535: ipvsadm refuses "
                    f"`-A {'-u' if vs.protocol is Protocol.UDP else '-t'} "
                    f"{vs.address}:{vs.port}` and the virtual service is never created",
                    _at(vs, "port"),
                    help="use a port from 1 to 65535",
                )
            elif vs.port == 0 and vs.persistent <= 0:
                yield make(
                    codes.ZERO_PORT,
                    "port 0 (every port) is only allowed for a persistent service: ipvsadm "
                    'refuses it ("Zero port specified for non-persistent service")',
                    _at(vs, "port"),
                    help="give the service its port, or add `persistent = SECONDS`",
                )
        for rs in vs.servers:
            if not 0 <= rs.port <= 65535 and rs.active and "port" in rs.spans:
                yield make(
                    codes.PORT_OUT_OF_RANGE,
                    f"real-server port {rs.port} is outside 0..65535: nanny's `ipvsadm -a ... "
                    f"-r {rs.address}:{rs.port}` fails and the nanny exits",
                    rs.spans["port"],
                    help="use a port from 1 to 65535",
                )


@_register
def persistence_out_of_range(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS227/LVS228: `-p` takes 1..2678400 seconds; lvsd skips it unless positive."""
    for vs in _active(config):
        p = vs.persistent
        if p > _MAX_IPVS_TIMEOUT:
            yield make(
                codes.PERSISTENCE_TOO_LONG,
                f"persistent {p} is longer than 31 days ({_MAX_IPVS_TIMEOUT} s), the most "
                "ipvsadm accepts: `ipvsadm -A ... -p` fails and the virtual service is never "
                "created",
                _at(vs, "persistent"),
                help=f"use at most {_MAX_IPVS_TIMEOUT} seconds",
            )
        elif p < 0:
            yield make(
                codes.NEGATIVE_PERSISTENCE,
                f"persistent {p} is negative: lvsd passes `-p` only for a positive value, so "
                "the service is not persistent",
                _at(vs, "persistent"),
                help="write `persistent = 0` (or leave it out) for no persistence, or a "
                "number of seconds",
            )


@_register
def fwmark_out_of_range(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS229: ipvsadm -f takes a positive mark; piranha prints it as a C int."""
    for vs in _active(config):
        if vs.fwmark and not 0 < vs.fwmark <= _MAX_INT:
            yield make(
                codes.FWMARK_OUT_OF_RANGE,
                f"fwmark {vs.fwmark} is outside 1..{_MAX_INT}: piranha keeps the mark in a C "
                "int, so lvsd hands ipvsadm a mark it refuses and the service is never "
                "created",
                _at(vs, "fwmark"),
                help="use the positive mark your iptables `-j MARK --set-mark` rule sets",
            )


@_register
def pmask_without_persistence(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS230: lvsd passes -M only together with -p."""
    for vs in _active(config):
        mask = vs.pmask if vs.pmask6 is None else f"/{vs.pmask6}"
        if mask is not None and vs.persistent <= 0:
            yield make(
                codes.PMASK_WITHOUT_PERSISTENCE,
                f"pmask {mask} has no effect: the service is not persistent, and lvsd "
                "passes `-M` only together with `-p`",
                _at(vs, "pmask"),
                help="add `persistent = SECONDS` if clients of one network should stick to one "
                "real server; otherwise remove the pmask line",
            )


@_register
def non_contiguous_netmask(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS231: a netmask whose one bits have gaps."""
    items: list[tuple[str, IPv4Address | None, Config | VirtualService]] = [
        ("nat_nmask", config.nat_nmask, config)
    ]
    for vs in _active(config):
        if vs.vip_nmask is not None or vs.pmask is not None:
            items.append(("vip_nmask", vs.vip_nmask, vs))
            items.append(("pmask", vs.pmask, vs))
    for keyword, mask, node in items:
        if isinstance(mask, IPv4Address) and not _contiguous(mask):
            span = node.spans.get(keyword)
            use = (
                "IPVS groups clients by `address & pmask`, so the groups are scattered address sets"
                if keyword == "pmask"
                else "the kernel refuses it when ifconfig sets it, and the address keeps its "
                "classful mask"
            )
            yield make(
                codes.NONCONTIGUOUS_MASK,
                f"{keyword} {mask} is not a contiguous netmask: {use}",
                span,
                help="write a mask of leading one bits, such as 255.255.255.0",
            )


@_register
def udp_fwmark_service(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS232: ipvsadm -f has no protocol; `protocol = udp` only changes the probe."""
    for vs in _active(config):
        if vs.fwmark and vs.protocol is Protocol.UDP:
            yield make(
                codes.UDP_FWMARK,
                f"fwmark {vs.fwmark} selects the packets of this service, TCP and UDP alike "
                "(`ipvsadm -A -f` has no -t/-u); `protocol = udp` only makes nanny probe the "
                "real servers over UDP",
                _at(vs, "protocol"),
            )


# --------------------------------------------------------------------------- health checks


@_register
def send_ignored(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS240: nanny drops the send string when it runs a send_program."""
    for vs in _active_services(config):
        if vs.send_program is not None and vs.send is not None:
            yield make(
                codes.SEND_IGNORED,
                "`send` is ignored: with `send_program` nanny runs the program and never "
                "connects to send anything",
                _at(vs, "send"),
                help="remove the `send` line (the program does the whole check)",
            )


@_register
def send_program_without_expect(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS241: nanny compares a send_program's output with expect; with none, it fails."""
    for vs in _active_services(config):
        if vs.send_program is not None and vs.expect is None:
            yield make(
                codes.SEND_PROGRAM_WITHOUT_EXPECT,
                "`send_program` without `expect`: nanny counts every run as a failed check, "
                "so no real server of this service is ever added",
                _at(vs, "send_program"),
                help='add `expect = "OK"` (the exact output of the program, without its final '
                "newline)",
            )


@_register
def udp_without_expect(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS242: nanny's UDP probe reads one byte and then dereferences the missing expect."""
    for vs in _active(config):
        if (
            vs.protocol is Protocol.UDP
            and vs.expect is None
            and vs.send_program is None
            and not (vs.port == 80 and vs.send is None)
        ):
            yield make(
                codes.UDP_WITHOUT_EXPECT,
                "UDP health check without `expect`: nanny waits for a reply and then reads the "
                "missing expect string, so it crashes as soon as a real server answers (and "
                "fails every check while none does)",
                _at(vs, "protocol"),
                help='add `expect` (`expect = "*"` accepts any reply), or check with '
                "`send_program`",
            )


def _regex_checked(vs: VirtualService) -> str | None:
    """The pattern regcomp sees for a virtual that uses one, after nanny's unescaping;
    None when no regex is compiled or nanny never gets that far (LVS246)."""
    if not vs.use_regex or vs.send_program is not None:
        return None
    text = _nanny_text(vs, "expect")
    if text is None:
        return None
    converted, stuck = _nanny_unescape(text)
    return None if stuck is not None else converted


@_register
def invalid_regex(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS243: nanny regcomp()s expect with REG_EXTENDED; on failure every check fails."""
    for vs in _active(config):
        pattern = _regex_checked(vs)
        if pattern is None:
            continue
        error = ere_error(pattern)
        if error is not None:
            yield make(
                codes.INVALID_REGEX,
                f"`expect` is not a valid POSIX extended regular expression (regcomp: "
                f"{error}): nanny logs the error and fails every check",
                _at(vs, "expect"),
                help="fix the pattern; nanny first turns `\\\\` into `\\`, so write `\\\\.` "
                "for a literal dot",
            )


_PERL_ESCAPES = {"d": "[0-9]", "D": "[^0-9]", "A": "^", "Z": "$", "z": "$"}


@_register
def regex_perl_escape(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS244: glibc reads an unknown escape as the plain letter."""
    for vs in _active(config):
        pattern = _regex_checked(vs)
        if pattern is None or "\\" not in pattern or ere_error(pattern) is not None:
            continue
        i = pattern.find("\\")
        while 0 <= i < len(pattern) - 1:
            letter = pattern[i + 1]
            if letter in _PERL_ESCAPES:
                yield make(
                    codes.PERL_REGEX_ESCAPE,
                    f"`\\{letter}` in the expect pattern is the letter {letter} to POSIX "
                    f"regcomp, not what it means in Perl",
                    _at(vs, "expect"),
                    help=f"write `{_PERL_ESCAPES[letter]}` instead",
                )
                break
            i = pattern.find("\\", i + 2)


@_register
def use_regex_ineffective(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS245: use_regex needs an expect string that nanny matches itself."""
    for vs in _active(config):
        if not vs.use_regex:
            continue
        if vs.send_program is not None:
            why = "nanny compares the output of `send_program` with `expect` exactly"
        elif vs.expect is None:
            why = "there is no `expect` to use as the pattern"
        else:
            continue
        yield make(
            codes.USE_REGEX_INEFFECTIVE,
            f"`use_regex = 1` has no effect: {why}",
            _at(vs, "use_regex"),
            help="remove `use_regex`, or give an `expect` pattern for nanny's own probe",
        )


@_register
def unsupported_escape(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS246: nanny's convert_str loops forever on a backslash it does not know."""
    for vs in _active_services(config):
        for keyword in ("send", "expect"):
            text = _nanny_text(vs, keyword)
            if text is None:
                continue
            _, stuck = _nanny_unescape(text)
            if stuck is None:
                continue
            escape = text[stuck : stuck + 2]
            yield make(
                codes.UNSUPPORTED_ESCAPE,
                f"`{_show(escape)}` in `{keyword}`: nanny understands only \\\\ \\r \\n \\t \\' "
                '\\" and loops forever on any other backslash, so this service is never '
                "checked",
                _at(vs, keyword),
                help=f"double the backslash (`\\{escape}`) to pass a backslash on, for example "
                "to a regular expression",
            )


_QUOTE_EFFECT = {
    "send": "the quote characters are sent to the real server too",
    "expect": "the reply must then start with a ' character",
    "send_program": "nanny tries to run a program whose name starts with '",
    "start_cmd": "the quote characters become part of the command",
    "stop_cmd": "the quote characters become part of the command",
}


@_register
def single_quoted_string(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS247: piranha keeps single quotes; lvsd strips only double quotes."""
    for vs in _active_services(config):
        if not vs.single_quoted:
            continue
        for keyword in sorted(vs.single_quoted):
            effect = _QUOTE_EFFECT.get(keyword)
            if effect is None:
                continue
            yield make(
                codes.SINGLE_QUOTED,
                f"`{keyword}` is in single quotes: piranha passes the quotes on, so {effect}",
                _at(vs, keyword),
                help="use double quotes, which piranha removes",
            )


@_register
def placeholder_inside_word(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS248: nanny substitutes %h and %p only as whole space-separated words."""
    for vs in _active_services(config):
        program = vs.send_program
        if program is None or "%" not in program:
            continue
        word = next(
            (w for w in program.split(" ") if w not in ("%h", "%p") and ("%h" in w or "%p" in w)),
            None,
        )
        if word is not None:
            yield make(
                codes.PLACEHOLDER_INSIDE_WORD,
                f"`{_show(word)}` in `send_program` is passed literally: nanny replaces %h "
                "(real-server address) and %p (its port) only when they are a whole word",
                _at(vs, "send_program"),
                help="pass %h and %p as arguments of their own and build the rest in the program",
            )


@_register
def timeout_not_positive(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS249: nanny computes reentry / timeout and waits timeout seconds per step."""
    for vs in _active_services(config):
        t = vs.timeout
        if t > 0:
            continue
        why = (
            "nanny divides `reentry` by it at start and dies"
            if t == 0
            else "nanny's connect and read waits become unbounded and its check loop spins"
        )
        yield make(
            codes.TIMEOUT_NOT_POSITIVE,
            f"`timeout = {t}`: {why}",
            _at(vs, "timeout"),
            help="timeout is the check interval in seconds; piranha's default is 10",
        )


@_register
def reentry_shorter_than_timeout(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS250/LVS251: nanny re-adds after reentry / timeout good checks; 0 means 180."""
    for vs in _active(config):
        r, t = vs.reentry, vs.timeout
        if r == 0:
            yield make(
                codes.REENTRY_ZERO,
                "`reentry = 0` does not mean at once: nanny treats 0 as unset and waits its "
                "default of 180 seconds of good checks",
                _at(vs, "reentry"),
                help=f"to re-add a server on its first good check, set `reentry = {max(t, 1)}` "
                "(the timeout)",
            )
        elif t > 0 and r < t:
            yield make(
                codes.REENTRY_SHORTER_THAN_TIMEOUT,
                f"`reentry = {r}` is shorter than `timeout = {t}`: nanny re-adds a failed "
                "server after reentry / timeout = 0 good checks, that is on the first one",
                _at(vs, "reentry"),
                help="make reentry a multiple of timeout: nanny counts reentry / timeout "
                "consecutive good checks",
            )


@_register
def load_monitor(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS252: the load monitor runs a command against every real server."""
    for vs in _active(config):
        cmd = vs.load_monitor
        if cmd is None or cmd == "none":
            continue
        rsh = config.rsh_command
        if cmd == "uptime":
            what = (
                f"nanny runs `{rsh} RIP uptime` about every 20 s: this router needs password-"
                f"less {rsh} access to every real server"
            )
        elif cmd in ("rsh", "ssh"):
            what = (
                f"nanny runs `{cmd} RIP uptime` about every 20 s: this router needs password-"
                f"less {cmd} access to every real server"
            )
        elif cmd == "rup":
            what = "nanny runs `rup RIP` about every 20 s: every real server must run rpc.rstatd"
        elif cmd == "ruptime":
            what = (
                "nanny runs `ruptime RIP` about every 20 s: every real server must run rwhod "
                "(and piranha 0.8 may not parse ruptime's output)"
            )
        else:
            what = (
                f"nanny runs `{_show(cmd)} RIP` about every 20 s and reads a load average "
                "(`load...: N.NN,`) from its output"
            )
        notes = []
        if vs.servers and all(rs.weight <= 1 for rs in vs.servers if rs.active):
            notes.append(
                "with weight 1 the load adjustment rounds to no change: weights move only "
                "between WEIGHT and 10 x WEIGHT"
            )
        yield make(
            codes.LOAD_MONITOR,
            f"`load_monitor = {_show(cmd)}`: {what}",
            _at(vs, "load_monitor"),
            notes=notes,
            help="`load_monitor = none` turns load-based weights off",
        )


# --------------------------------------------------------------------------- routers


@_register
def nat_without_nat_router(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS260/LVS269: NAT real servers reply through the floating nat_router address."""
    if config.nat_router is not None:
        return
    inherited: VirtualService | None = None
    for vs in _active(config):
        if vs.network is Network.NAT:
            yield make(
                codes.NAT_WITHOUT_ROUTER,
                f"virtual `{vs.name}` uses NAT but there is no `nat_router`: NAT real servers "
                "reply through that floating gateway address, and no router brings it up",
                _at(vs, "network"),
                help="add `nat_router = IP DEVICE` to the global settings",
            )
        elif vs.network is None and inherited is None and config.network is Network.NAT:
            inherited = vs
    if inherited is None:
        return
    if "network" in config.spans:
        yield make(
            codes.NAT_WITHOUT_ROUTER,
            "`network = nat` with active virtual services but no `nat_router`: NAT real "
            "servers reply through that floating gateway address, and no router brings it up",
            config.spans["network"],
            help="add `nat_router = IP DEVICE` (the real servers' default gateway), or use "
            "`network = direct`",
        )
    else:
        yield make(
            codes.NETWORK_DEFAULTS_TO_NAT,
            "there is no `network` line, so piranha forwards with NAT, and there is no "
            "`nat_router` for the real servers to reply through",
            inherited.span,
            help="write `network = direct` (or `tunnel`) if the real servers answer clients "
            "themselves; for NAT add `network = nat` and `nat_router = IP DEVICE`",
        )


@_register
def deadtime_too_short(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS261: the backup declares the primary dead after `deadtime` without heartbeat."""
    if not _has_backup(config):
        return
    k, d = config.keepalive, config.deadtime
    if k <= 0 or d >= 2 * k:
        return
    span = config.spans.get("deadtime") or config.spans.get("keepalive")
    if d <= k:
        why = (
            "heartbeats come only every keepalive seconds, so the backup declares the "
            "primary dead between two of them and the routers flap"
        )
    else:
        why = "a single lost or late heartbeat makes the backup take over"
    yield make(
        codes.DEADTIME_TOO_SHORT,
        f"deadtime {d:g} is {'not longer than' if d <= k else 'less than twice'} keepalive "
        f"{k:g}: {why}",
        span or config.spans.get("backup_active"),
        help=f"use a deadtime of several keepalives (piranha's guide: a multiple), e.g. "
        f"`deadtime = {3 * k:g}`",
    )


@_register
def backup_active_without_backup(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS262: pulse clears backup_active when the backup address is 0.0.0.0 or unset."""
    if config.backup_active and (config.backup is None or config.backup == _ZERO):
        yield make(
            codes.BACKUP_ACTIVE_WITHOUT_BACKUP,
            "`backup_active = 1` without a backup address: pulse clears it at start "
            '("Undefined backup node marked as active"), so this router runs alone and sends '
            "no heartbeats",
            config.spans.get("backup_active"),
            help="set `backup = IP` of the backup router, or `backup_active = 0`",
        )


@_register
def primary_equals_backup(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS263: pulse's role and heartbeat peer come from these two addresses."""
    p, b = config.primary, config.backup
    if p is not None and p == b:
        yield make(
            codes.PRIMARY_IS_BACKUP,
            f"primary and backup are both {p}: pulse takes the primary role on whichever "
            "router holds that address and sends heartbeats to itself; the other router "
            "cannot bind its heartbeat socket",
            config.spans.get("backup"),
            help="backup is the public address of the second router",
        )


_IGNORED_WHY = {
    "serial_no": "it is a revision counter the piranha GUI writes",
    "heartbeat": "heartbeats are sent whenever `backup_active = 1`",
    "debug_level": "it was meant for a log level that was never implemented",
    "sync": "it is a leftover of piranha's file synchronisation",
    "master": "it is a leftover of piranha's file synchronisation",
    "dirs": "it is a leftover of piranha's file synchronisation",
}
_IGNORED_GLOBAL = tuple(k for k, kw in GLOBAL.items() if kw.ignored)
_IGNORED_VIRTUAL = tuple(k for k, kw in VIRTUAL.items() if kw.ignored)


# What lvs-router does with a keyword piranha ignored, where it gives it a meaning.
_IGNORED_HELP = {
    "heartbeat": "lvs-router gives it a meaning: with `heartbeat = 1`, `lvs-router run` "
    "runs pulse (heartbeats, VIP takeover) in the router process",
}


def _ignored(keyword: str, span: Span) -> Diagnostic:
    why = _IGNORED_WHY.get(keyword, "no daemon reads it")
    return make(
        codes.IGNORED_KEYWORD,
        f"`{keyword}` is parsed but never used by piranha: {why}",
        span,
        help=_IGNORED_HELP.get(keyword, "harmless; GUI-written files contain it"),
    )


@_register
def ignored_keyword(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS264: keywords piranha reads and never uses."""
    for keyword in _IGNORED_GLOBAL:
        span = config.spans.get(keyword)
        if span is not None:
            yield _ignored(keyword, span)
    for vs in (*config.virtuals, *config.failovers):
        spans = vs.spans
        for keyword in _IGNORED_VIRTUAL:
            if keyword in spans:
                yield _ignored(keyword, spans[keyword])


@_register
def shared_scsi_incomplete(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS265: FOS shared SCSI needs both devices, and then a conflict action."""
    spans = config.spans
    primary, backup = bool(config.primary_shared), bool(config.backup_shared)
    if primary != backup:
        given = "primary_shared" if primary else "backup_shared"
        yield make(
            codes.SHARED_SCSI_INCOMPLETE,
            f"only `{given}` is set: pulse uses shared SCSI only when both primary_shared and "
            "backup_shared name a device",
            spans.get(given),
            help="set both devices (as each router sees the shared disk), or neither",
        )
    elif config.reservation_conflict_action is not None and not primary:
        yield make(
            codes.SHARED_SCSI_INCOMPLETE,
            "`reservation_conflict_action` has no effect without primary_shared and backup_shared",
            spans.get("reservation_conflict_action"),
            help="remove it, or configure the shared SCSI devices",
        )
    elif (
        primary and config.reservation_conflict_action is None and config.service is ServiceType.FOS
    ):
        yield make(
            codes.SHARED_SCSI_INCOMPLETE,
            "shared SCSI without `reservation_conflict_action`: on a reservation conflict "
            "pulse compares the unset value and crashes",
            spans.get("primary_shared"),
            help="add `reservation_conflict_action = nothing` (or `preempt`)",
        )


@_register
def ipvs_timeout_out_of_range(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS266: lvsd runs `ipvsadm --set TCP TCPFIN UDP`; ipvsadm takes 0..31 days."""
    for keyword in ("tcp_timeout", "tcpfin_timeout", "udp_timeout"):
        value = getattr(config, keyword)
        if 0 <= value <= _MAX_IPVS_TIMEOUT:
            continue
        yield make(
            codes.IPVS_TIMEOUT_OUT_OF_RANGE,
            f"{keyword} {value} is outside 0..{_MAX_IPVS_TIMEOUT}: lvsd's `ipvsadm --set` "
            "fails and the kernel keeps all three of its current timeouts",
            config.spans.get(keyword),
            help="use seconds from 1 to 2678400, or 0 to keep the kernel's value",
        )


@_register
def syncd_id_truncated(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS267: pulse passes `--syncid (syncd_id & 0xff)`."""
    sid = config.syncd_id
    if not 0 <= sid <= 255:
        yield make(
            codes.SYNCD_ID_TRUNCATED,
            f"syncd_id {sid} is outside 0..255: pulse passes `--syncid {sid & 0xFF}` "
            f"(syncd_id & 0xff)",
            config.spans.get("syncd_id"),
            help="use an id from 0 to 255, the same on both routers",
        )


@_register
def monitor_links_without_backup(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    """LVS268: pulse checks links only when it runs as a pair."""
    if config.monitor_links and not _has_backup(config):
        yield make(
            codes.MONITOR_LINKS_WITHOUT_BACKUP,
            "`monitor_links` has no effect: pulse checks the links only when "
            "`backup_active = 1` and a backup is set",
            config.spans.get("monitor_links"),
            help="link monitoring makes a router with a dead NIC hand over to its backup; a "
            "single router has no one to hand over to",
        )


# --------------------------------------------------------------------------- POSIX regex
#
# nanny compiles `expect` with regcomp(REG_EXTENDED) in the C locale (it never calls
# setlocale). Python's `re` differs from that in both directions (`a{` and `a)` are
# fine in one and errors in the other), so this is a small recursive-descent parser of
# the ERE syntax glibc accepts, with glibc's error rules: GNU operators \w \W \s \S \b
# \B \< \> \` \' exist, other escaped characters are literal, an unmatched `)` is an
# ordinary character, `{` always opens an interval, `*` `+` `?` `{` need something to
# repeat (and an anchor is not something), back references name completed groups of
# the same alternative, bracket expressions know [:class:], [=c=] and [.c.] with one
# character. tests/unit/test_checks.py compares it with the C library's regcomp.

_REGERROR = {
    "BADPAT": "Invalid regular expression",
    "ECOLLATE": "Invalid collation character",
    "ECTYPE": "Invalid character class name",
    "EESCAPE": "Trailing backslash",
    "ESUBREG": "Invalid back reference",
    "EBRACK": "Unmatched [, [^, [:, [., or [=",
    "EPAREN": "Unmatched ( or \\(",
    "EBRACE": "Unmatched \\{",
    "BADBR": "Invalid content of \\{\\}",
    "ERANGE": "Invalid range end",
    "BADRPT": "Invalid preceding regular expression",
    "ESIZE": "Regular expression too big",
}
_CHAR_CLASSES = frozenset(
    b"alpha upper lower digit xdigit space print punct graph cntrl blank alnum".split()
)
_DUP_MAX = 0x7FFF  # RE_DUP_MAX
# token kinds outside bracket expressions
(_CHAR, _ANY, _ANCHOR, _WORD, _BACKREF, _OPEN, _CLOSE, _ALT, _STAR, _PLUS, _QMARK,
 _LBRACE, _RBRACE, _LBRACKET, _LONE_BACKSLASH, _END) = range(16)  # fmt: skip
_REPEATS = (_STAR, _PLUS, _QMARK, _LBRACE)
_PLAIN_KINDS = dict(zip(b".^$()|*+?{}[", (_ANY, _ANCHOR, _ANCHOR, _OPEN, _CLOSE, _ALT,
                    _STAR, _PLUS, _QMARK, _LBRACE, _RBRACE, _LBRACKET), strict=True))  # fmt: skip
_ESCAPED_KINDS = {
    **dict.fromkeys(b"<>bB`'", _ANCHOR),
    **dict.fromkeys(b"wWsS", _WORD),
    **dict.fromkeys(b"123456789", _BACKREF),
}
_COMMA, _RBRACKET = ord(","), ord("]")


class _RegexError(Exception):
    pass


class _ERE:
    """One pass over the pattern bytes; raises _RegexError with glibc's error name."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.groups = 0  # groups opened so far
        self.closed = 0  # bit i: group i+1 is complete (a back-reference target)
        self.kind, self.c, self.size = self._peek()

    def _peek(self) -> tuple[int, int, int]:
        """(kind, byte, length) of the token at ``pos``. ``byte`` is what glibc compares
        with ',' and digits inside an interval: the character, the escaped character of
        a plain escape, -1 for operators that carry other data."""
        d, i = self.data, self.pos
        if i >= len(d):
            return _END, -1, 0
        c = d[i]
        if c == 0x5C:  # backslash
            if i + 1 >= len(d):
                return _LONE_BACKSLASH, -1, 1
            kind = _ESCAPED_KINDS.get(d[i + 1], _CHAR)
            return kind, (d[i + 1] if kind in (_CHAR, _WORD) else -1), 2
        kind = _PLAIN_KINDS.get(c, _CHAR)
        return kind, (-1 if kind == _ANCHOR else c), 1

    def _advance(self) -> None:
        self.pos += self.size
        self.kind, self.c, self.size = self._peek()

    def _fail(self, error: str) -> None:
        raise _RegexError(error)

    # -- alternation, concatenation, repetition

    def parse(self) -> None:
        self._alternation(0)

    def _branch_ends(self, depth: int) -> bool:
        return self.kind in (_ALT, _END) or (depth > 0 and self.kind == _CLOSE)

    def _alternation(self, depth: int) -> None:
        before = self.closed
        self._branch(depth)
        while self.kind == _ALT:
            self._advance()
            if not self._branch_ends(depth):
                # a back reference may only name a group of its own alternative
                so_far, self.closed = self.closed, before
                self._branch(depth)
                self.closed |= so_far

    def _branch(self, depth: int) -> None:
        self._atom(depth)
        while not self._branch_ends(depth):
            self._atom(depth)

    def _atom(self, depth: int) -> None:
        k = self.kind
        if k in (_ALT, _END):
            return
        if k == _OPEN:
            self._group(depth + 1)
            self._advance()
        elif k == _LBRACKET:
            self._bracket()
        elif k == _ANCHOR:
            self._advance()
            return  # nothing repeats an anchor: `^*` is an error
        elif k in _REPEATS:
            self._fail("BADRPT")  # nothing to repeat
        elif k == _LONE_BACKSLASH:
            self._fail("EESCAPE")
        else:
            if k == _BACKREF and not self.closed >> (self.data[self.pos + 1] - 0x31) & 1:
                self._fail("ESUBREG")
            self._advance()  # a character, `.`, \w..., a back reference, `)` or `}`
        while self.kind in _REPEATS:
            self._repeat()

    def _group(self, depth: int) -> None:
        index = self.groups
        self.groups += 1
        self._advance()
        if self.kind != _CLOSE:
            self._alternation(depth)
            if self.kind != _CLOSE:
                self._fail("EPAREN")
        if index < 9:
            self.closed |= 1 << index

    def _number(self) -> int:
        """Digits up to `,` or `}`: the number, -1 for none, -2 for anything else."""
        num = -1
        while True:
            self._advance()
            if self.kind == _END:
                return -2
            if self.kind == _RBRACE or self.c == _COMMA:
                return num
            if num == -2 or self.kind != _CHAR or not 0x30 <= self.c <= 0x39:
                num = -2
            else:
                num = min(_DUP_MAX + 1, max(num, 0) * 10 + self.c - 0x30)

    def _repeat(self) -> None:
        if self.kind == _LBRACE:
            low = self._number()
            if low == -1:
                if self.c != _COMMA:
                    self._fail("BADBR")  # `{}`
                low = 0  # `{,n}` is `{0,n}`
            high = low
            if low != -2:
                if self.c == _COMMA:
                    high = self._number()
                elif self.kind != _RBRACE:
                    high = -2
            if low == -2 or high == -2:
                self._fail("EBRACE" if self.kind == _END else "BADBR")
            if (high != -1 and low > high) or self.kind != _RBRACE:
                self._fail("BADBR")
            if (low if high == -1 else high) > _DUP_MAX:
                self._fail("ESIZE")
        self._advance()

    # -- bracket expressions

    def _bpeek(self) -> tuple[str, int, int]:
        """(kind, byte, length) inside brackets: `[.` `[=` `[:` `-` `]` `^` char end."""
        d, i = self.data, self.pos
        if i >= len(d):
            return "end", -1, 0
        c = d[i]
        if c == 0x5B and i + 1 < len(d) and d[i + 1] in b".=:":
            return "[" + chr(d[i + 1]), d[i + 1], 2
        return {0x2D: "-", 0x5D: "]", 0x5E: "^"}.get(c, "char"), c, 1

    def _bracket(self) -> None:
        self.pos += 1  # `[`
        kind, c, size = self._bpeek()
        if kind == "^":
            self.pos += size
            kind, c, size = self._bpeek()
        if kind == "end":
            self._fail("BADPAT")
        if kind == "]":
            kind = "char"  # a first `]` is an ordinary character
        first = True
        while True:
            start = self._element(kind, c, size, first)
            first = False
            kind, c, size = self._bpeek()
            end = None
            if start[0] not in ("class", "equiv"):
                if kind == "end":
                    self._fail("EBRACK")
                if kind == "-":
                    self.pos += size
                    k2, c2, s2 = self._bpeek()
                    if k2 == "end":
                        self._fail("EBRACK")
                    if k2 == "]":
                        self.pos -= size  # `-` before `]` is an ordinary character
                        kind = "char"
                    else:
                        end = self._element(k2, c2, s2, True)
                        kind, c, size = self._bpeek()
            if end is not None:
                self._range(start, end)
            else:
                self._single(start)
            if kind == "end":
                self._fail("EBRACK")
            if kind == "]":
                self.pos += size
                break
        self.kind, self.c, self.size = self._peek()

    def _element(self, kind: str, c: int, size: int, hyphen_ok: bool) -> tuple[str, bytes]:
        self.pos += size
        if kind in ("[.", "[=", "[:"):
            return self._symbol(kind)
        if kind == "-" and not hyphen_ok and self._bpeek()[0] != "]":
            self._fail("ERANGE")
        return "char", bytes((c,))

    def _symbol(self, kind: str) -> tuple[str, bytes]:
        """The name in `[.name.]`, `[=name=]` or `[:name:]` (at most 31 bytes)."""
        d = self.data
        delim = ord(kind[1])
        if self.pos >= len(d):
            self._fail("EBRACK")
        name = bytearray()
        while True:
            if len(name) >= 32:
                self._fail("EBRACK")
            ch = d[self.pos]
            self.pos += 1
            if self.pos >= len(d):
                self._fail("EBRACK")
            if ch == delim and d[self.pos] == _RBRACKET:
                break
            name.append(ch)
        self.pos += 1
        return {"[.": "coll", "[=": "equiv", "[:": "class"}[kind], bytes(name)

    def _single(self, element: tuple[str, bytes]) -> None:
        what, name = element
        if what == "class" and name not in _CHAR_CLASSES:
            self._fail("ECTYPE")
        if what in ("equiv", "coll") and len(name) != 1:
            self._fail("ECOLLATE")  # the C locale has only one-character elements

    def _range(self, start: tuple[str, bytes], end: tuple[str, bytes]) -> None:
        if start[0] in ("class", "equiv") or end[0] in ("class", "equiv"):
            self._fail("ERANGE")
        if len(start[1]) != 1 or len(end[1]) != 1:
            self._fail("ECOLLATE")
        if start[1] > end[1]:
            self._fail("ERANGE")


def ere_error(pattern: str) -> str | None:
    """What glibc's regerror() would say about ``pattern`` compiled with REG_EXTENDED in
    the C locale, or None if regcomp accepts it."""
    try:
        _ERE(pattern.encode("utf-8", "surrogateescape")).parse()
    except _RegexError as err:
        return _REGERROR[str(err)]
    return None
