"""What the XDP dataplane makes of an lvs.cf model: pure code, no bcc, no I/O.

:func:`plan` turns a :class:`compiler.model.Config` into the services and real
servers the XDP program serves, with their map indexes, flags and Maglev members,
plus the compile-time features and sizes, and NAT's idle timeouts. Forwarding methods:
direct routing, tunnel and NAT (``network = nat``, where a real server's port maps the
VIP's: VIP:80 -> RIP:8080). The C renderer, the map writer, the
``xdp``/``xdp-maps`` emitters and the tests all start from this one object.

Scheduler mapping (docs/xdp.md has the full semantics):

* ``rr``: Maglev table, every real server of weight > 0 counted once;
* ``wrr``: Maglev table by weight;
* ``sh`` / ``mh``: Maglev table by weight, indexed by the source address;
* ``dh``: Maglev table by weight, indexed by the destination address;
* ``lc``, ``wlc``, ``sed``, ``nq``: the ``rr`` (lc) or ``wrr`` table's slot and a
  second slot, whichever real has fewer connections by the program's counts (power
  of two choices); ``lblc``/``lblcr``: the ``dh`` slot unless it is overloaded;
  each reported as a note (IPVS compares every server);
* ``fo``, ``ovf``: approximated by ``wrr``, reported as a note.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from compiler.model import Config, Network, Protocol, Scheduler, VirtualService
from compiler.source import Span

from .maglev import DEFAULT_SIZE, Member

# struct service.flags (lb_consts.h)
SVC_F_TUNNEL = 1 << 0
SVC_F_PERSIST = 1 << 1
SVC_F_HASH_SRC = 1 << 2
SVC_F_HASH_DST = 1 << 3
SVC_F_NAT = 1 << 4
# struct real.flags
REAL_F_FAILED = 1 << 0
REAL_F_QUIESCED = 1 << 1

PROTO = {Protocol.TCP: 6, Protocol.UDP: 17}
# IPVS's idle timeouts (ipvsadm --set): tcp, tcpfin, udp seconds, for lvs.cf's 0 (unset)
IPVS_TIMEOUTS = (900, 120, 300)

_HASH = {
    Scheduler.RR: ("flow", None),
    Scheduler.WRR: ("flow", None),
    Scheduler.SH: ("source", None),
    Scheduler.MH: ("source", None),
    Scheduler.DH: ("destination", None),
    Scheduler.LC: ("flow", None),
    Scheduler.WLC: ("flow", None),
    Scheduler.SED: ("flow", None),
    Scheduler.NQ: ("flow", None),
    Scheduler.FO: ("flow", "wrr"),
    Scheduler.OVF: ("flow", "wrr"),
    Scheduler.LBLC: ("destination", None),
    Scheduler.LBLCR: ("destination", None),
}
# the least-connection family: struct service.flags bits 5-7 (lb_consts.h SVC_LC_*)
SVC_LC_SHIFT = 5
LC_KIND = {
    Scheduler.LC: 1,
    Scheduler.WLC: 2,
    Scheduler.SED: 3,
    Scheduler.NQ: 4,
    Scheduler.LBLC: 5,
    Scheduler.LBLCR: 5,
}


class PlanError(Exception):
    """The model asks for something the XDP dataplane cannot do."""

    def __init__(self, message: str, span: Span | None = None, help: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.help = help


@dataclass(frozen=True, slots=True)
class PlanNote:
    """Something the XDP dataplane does differently from IPVS for this config (an
    fwmark matched by port, an approximated scheduler, an ignored real-server port),
    with the lvs.cf position that asks for it. ``str()`` is ``FILE:LINE:COL: MESSAGE``;
    :meth:`render` the diagnostic-style line ``FILE:LINE:COL: note: MESSAGE`` that
    ``lvs-compile emit --target xdp`` and ``lvs-router apply --dataplane xdp`` print."""

    message: str
    span: Span | None = None

    def __str__(self) -> str:
        return f"{self.span}: {self.message}" if self.span else self.message

    def render(self) -> str:
        return f"{self.span}: note: {self.message}" if self.span else f"note: {self.message}"


@dataclass(frozen=True, slots=True)
class Sizes:
    """Compile-time sizes (lb_consts.h names in :meth:`defines`)."""

    max_services: int = 64
    max_reals: int = 1024
    ring_size: int = DEFAULT_SIZE
    ct_size: int = 262139
    persist_size: int = 65521

    def defines(self) -> list[tuple[str, int]]:
        return [
            ("MAX_SERVICES", self.max_services),
            ("MAX_REALS", self.max_reals),
            ("RING_SIZE", self.ring_size),
            ("CT_SIZE", self.ct_size),
            ("PERSIST_SIZE", self.persist_size),
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class RealPlan:
    index: int  # in the reals map, >= 1
    name: str
    address: IPv4Address | IPv6Address
    port: int
    weight: int  # configured
    table_weight: int  # what the Maglev table uses (rr: 1 for weight > 0)

    @property
    def key(self) -> str:
        """Maglev member key: the same on every router for the same server."""
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePlan:
    index: int
    name: str
    vip: IPv4Address | IPv6Address
    port: int  # 0: every port of the VIP (fwmark or port-0 persistent service)
    proto: int
    method: Network
    scheduler: Scheduler
    hash_by: str  # flow | source | destination
    flags: int
    persist_s: int
    pmask: IPv4Address  # IPv4 services: the persistence netmask
    reals: tuple[RealPlan, ...]
    pmask6: int = 128  # IPv6 services: the persistence prefix length (lvs.cf pmask = /N)
    equal_weights: bool = False  # rr (and lc): every server of weight > 0 counts once
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False)

    def table_weight(self, weight: int) -> int:
        """What a real server of ``weight`` counts for in the Maglev table."""
        return min(weight, 1) if self.equal_weights else weight

    def members(self) -> list[Member]:
        return [Member(r.key, r.table_weight) for r in self.reals]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    services: tuple[ServicePlan, ...]
    features: frozenset[str]
    sizes: Sizes
    notes: tuple[PlanNote, ...] = ()
    # NAT idle timeouts in seconds: lvs.cf tcp_timeout, tcpfin_timeout, udp_timeout
    timeouts: tuple[int, int, int] = IPVS_TIMEOUTS

    @property
    def reals(self) -> tuple[RealPlan, ...]:
        return tuple(r for s in self.services for r in s.reals)


def _ipv4(value: object, what: str, span: Span | None) -> IPv4Address | IPv6Address:
    """An address the XDP dataplane serves: IPv4, or IPv6 (feature ipv6)."""
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    raise PlanError(
        f"{what} {value} is not an IP address",
        span,
        "the XDP dataplane serves IPv4 and IPv6 addresses; resolve host names in lvs.cf",
    )


def real_port(nat: bool, service_port: int, vs_port: int, rs_port: int) -> int:
    """The port a real server has in the plan (part of its Maglev key): NAT maps the
    VIP's port to the server's (0: the VIP's own); direct routing and tunnel keep the
    destination port; in a service of every port (fwmark, port 0) each server keeps
    its own."""
    if not service_port:
        return rs_port
    return (rs_port or vs_port) if nat else vs_port


def _service(
    group: list[VirtualService],
    config: Config,
    index: int,
    first_real: int,
    notes: list[PlanNote],
) -> ServicePlan:
    vs = group[0]  # virtuals sharing an fwmark and VIP: the first one's settings
    span = vs.span
    method = config.forwarding(vs)
    if vs.address is None:
        raise PlanError(f"virtual {vs.name} has no address", span)
    vip = _ipv4(vs.address, f"virtual {vs.name}: address", span)
    hash_by, approx = _HASH[vs.scheduler]
    if approx:
        notes.append(
            PlanNote(
                f"virtual {vs.name}: scheduler {vs.scheduler.value} is approximated by "
                f"{approx} in the XDP dataplane",
                vs.spans.get("scheduler", span),
            )
        )
    lc = LC_KIND.get(vs.scheduler, 0)
    if lc:
        how = (
            "the destination's server unless it is overloaded and a second one is not"
            if lc == LC_KIND[Scheduler.LBLC]
            else "the less loaded of two servers"
        )
        notes.append(
            PlanNote(
                f"virtual {vs.name}: scheduler {vs.scheduler.value} picks {how} by this "
                "router's connection counts in the XDP dataplane (IPVS compares every "
                "server; docs/xdp.md)",
                vs.spans.get("scheduler", span),
            )
        )
    port = 0 if vs.is_fwmark else vs.port
    if vs.is_fwmark:
        names = " and ".join(v.name for v in group)
        for member in group:
            notes.append(
                PlanNote(
                    f"virtual {names}: fwmark {vs.fwmark} is matched as every "
                    f"{vs.protocol.value} port of {vip} by the XDP dataplane (it sees no "
                    "firewall marks): traffic to other ports of this VIP is balanced too",
                    member.spans.get("fwmark", member.span),
                )
            )
    flags = {Network.TUNNEL: SVC_F_TUNNEL, Network.NAT: SVC_F_NAT}.get(method, 0)
    if hash_by == "source":
        flags |= SVC_F_HASH_SRC
    elif hash_by == "destination":
        flags |= SVC_F_HASH_DST
    if vs.persistent:
        flags |= SVC_F_PERSIST
    flags |= lc << SVC_LC_SHIFT
    equal = vs.scheduler in (Scheduler.RR, Scheduler.LC)
    reals: list[RealPlan] = []
    for member in group:
        for rs in member.servers:
            if not rs.active:
                continue
            address = _ipv4(rs.address, f"server {rs.name}: address", rs.span)
            if address.version != vip.version:
                raise PlanError(
                    f"virtual {vs.name}: server {rs.name} {address} is not IPv{vip.version} "
                    f"like the VIP {vip}",
                    rs.spans.get("address", rs.span),
                    "direct routing keeps the client's packet: VIP and server share a family",
                )
            nat = method is Network.NAT
            if port and rs.port != vs.port and not nat:
                notes.append(
                    PlanNote(
                        f"virtual {vs.name}: server {rs.name} port {rs.port} is ignored: "
                        f"{method.value} forwarding keeps the destination port {vs.port}",
                        rs.spans.get("port", rs.span),
                    )
                )
            rport = real_port(nat, port, vs.port, rs.port)
            if any(r.key == f"{address}:{rport}" for r in reals):
                continue  # as in IPVS: each (RIP, port) once, the first one's weight
            reals.append(
                RealPlan(
                    index=first_real + len(reals),
                    name=rs.name,
                    address=address,
                    port=rport,
                    weight=rs.weight,
                    table_weight=min(rs.weight, 1) if equal else rs.weight,
                )
            )
    return ServicePlan(
        index=index,
        name=vs.name,
        vip=vip,
        port=port,
        proto=PROTO[vs.protocol],
        method=method,
        scheduler=vs.scheduler,
        hash_by=hash_by,
        flags=flags,
        persist_s=vs.persistent,
        # piranha: pmask 0.0.0.0 and 255.255.255.255 both mean "unset" (a /32)
        pmask=vs.pmask if vs.pmask and int(vs.pmask) else IPv4Address("255.255.255.255"),
        reals=tuple(reals),
        pmask6=vs.pmask6 or 128,
        equal_weights=equal,
        span=span,
    )


def plan(config: Config, sizes: Sizes | None = None, *, ipv6: bool = False) -> Plan:
    """The XDP dataplane's view of ``config`` (its active virtual services).

    ``ipv6``: take IPv6 virtuals (direct routing, IP6IP6 and NAT: bpf/ipv6.h, nat6.h).
    Every caller that loads or shows a program asks for it -- the daemon and
    ``lvs-router apply``/``show`` (runtime/backends.py), the emitter and
    dataplane/xdp_cli.py -- so an IPv6 virtual gets feature ``ipv6`` compiled in. Off
    by default so that a caller which only knows IPv4 state says so: it then gets a
    PlanError at an IPv6 virtual's line rather than a program it cannot drive."""
    notes: list[PlanNote] = []
    groups: dict[tuple, list[VirtualService]] = {}
    for vs in config.active_virtuals:
        if vs.address is None:
            raise PlanError(f"virtual {vs.name} has no address", vs.span)
        vip = _ipv4(vs.address, f"virtual {vs.name}: address", vs.span)
        if vip.version == 6 and not ipv6:
            raise PlanError(
                f"virtual {vs.name}: address {vip} is IPv6, which this caller of the XDP "
                "planner does not take",
                vs.spans.get("address", vs.span),
                "IPv6 direct routing, IP6IP6 and NAT are served with plan(..., ipv6=True), "
                "as the daemon, `lvs-router apply --dataplane xdp` and the loader ask for "
                "(docs/xdp.md)",
            )
        key = (vip, 0 if vs.is_fwmark else vs.port, PROTO[vs.protocol])
        group = groups.setdefault(key, [])
        if group and not (vs.is_fwmark and group[0].fwmark == vs.fwmark):
            raise PlanError(
                f"virtual {vs.name} and virtual {group[0].name} both match "
                f"{vip} port {key[1] or 'any'} {vs.protocol.value}",
                vs.span,
                "fwmark and port-0 services match every port of their VIP",
            )
        group.append(vs)
    services: list[ServicePlan] = []
    next_real = 1
    for group in groups.values():
        svc = _service(group, config, len(services), next_real, notes)
        services.append(svc)
        next_real += len(svc.reals)
    sizes = sizes or Sizes()
    if len(services) > sizes.max_services:
        sizes = dataclasses.replace(sizes, max_services=-(-len(services) // 64) * 64)
    if next_real > sizes.max_reals:
        sizes = dataclasses.replace(sizes, max_reals=-(-next_real // 1024) * 1024)
    features = set()
    for s in services:
        features.add({Network.TUNNEL: "tunnel", Network.NAT: "nat"}.get(s.method, "direct"))
        if s.flags & SVC_F_PERSIST:
            features.add("persistence")
        if s.port == 0:
            features.add("any-port")
        if s.flags & SVC_F_HASH_SRC:
            features.add("sh")
        if s.flags & SVC_F_HASH_DST:
            features.add("dh")
        if s.scheduler in LC_KIND:
            features.add("lc")
        if s.vip.version == 6:
            features.add("ipv6")
    set_ = (config.tcp_timeout, config.tcpfin_timeout, config.udp_timeout)
    timeouts = tuple(mine or ipvs for mine, ipvs in zip(set_, IPVS_TIMEOUTS, strict=True))
    return Plan(
        services=tuple(services),
        features=frozenset(features),
        sizes=sizes,
        notes=tuple(notes),
        timeouts=timeouts,  # type: ignore[arg-type]
    )


# The XDP program's hashes (scheduling.h), for predicting its choices: the same
# packet gives the same number here, in BPF and on every router.
_M32 = 0xFFFFFFFF
HASH_SEED = 0x4C565321


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _step(h: int, k: int) -> int:
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl(k, 15)
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _final(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _words(addr: IPv4Address | IPv6Address) -> list[int]:
    """The address as the program loads it: __be32 words read little-endian (one
    for IPv4, four for IPv6)."""
    b = addr.packed
    return [int.from_bytes(b[i : i + 4], "little") for i in range(0, len(b), 4)]


def _half(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def flow_hash(
    saddr: IPv4Address | IPv6Address,
    daddr: IPv4Address | IPv6Address,
    sport: int,
    dport: int,
    proto: int,
) -> int:
    """scheduling.h flow_hash (IPv4) and ipv6.h flow_hash6 (IPv6: the same steps over
    each address's four words)."""
    h = HASH_SEED
    for w in _words(saddr) + _words(daddr):
        h = _step(h, w)
    h = _step(h, (_half(sport) << 16) | _half(dport))
    return _final(_step(h, proto))


def addr_hash(addr: IPv4Address | IPv6Address) -> int:
    """scheduling.h addr_hash (IPv4) and scheduling6.h addr_hash6 (IPv6: a step per
    word): the sh, dh and persistence hash of an address."""
    h = HASH_SEED
    for w in _words(addr):
        h = _step(h, w)
    return _final(h)


def persist_client(addr: IPv4Address | IPv6Address, svc: ServicePlan) -> IPv4Address | IPv6Address:
    """The address a persistence template is keyed by: the source masked by the
    service's netmask (IPv4) or prefix length (IPv6), as the program masks it."""
    if isinstance(addr, IPv6Address):
        bits = svc.pmask6
        return IPv6Address(int(addr) & (((1 << bits) - 1) << (128 - bits)))
    return IPv4Address(int(addr) & int(svc.pmask))
