"""``--target ipvsadm``: the steady-state IPVS table, exactly as ``ipvsadm-save -n`` prints it.

"Steady state" is the table the file asks for once every health check has passed:
each active virtual's service (piranha's lvsd runs ``ipvsadm -A``) holding each of
its active real servers (each nanny runs ``ipvsadm -a`` on its first good check) at
its configured weight. Left out, because they are not in that state or not in
``ipvsadm-save``'s output: inactive virtuals and servers, sorry servers (added only
while every real server is down), the ``--set`` timeouts and the sync daemon. With
``service = fos`` pulse never starts lvsd, so the table is empty. Two places where
piranha 0.8.6 itself ends up with less than the file asks for are noted below.

The text is what ipvsadm 1.31 (Debian 12) prints for ``-S -n`` — ``print_service_entry``
in ipvsadm.c, sorted by libipvs's ``ipvs_cmp_services`` / ``ipvs_cmp_dests`` — so it can
be diffed against a live ``ipvsadm-save -n`` and fed to ``ipvsadm-restore``::

    -A -t VIP:PORT -s SCHED [-p TIMEOUT [-M MASK]]         (-u for UDP, [v6]:PORT for IPv6)
    -A -f MARK [-6] -s SCHED [-p TIMEOUT [-M MASK]]
    -a -t VIP:PORT -r RIP:RPORT -g|-m|-i -w WEIGHT [--tun-type ipip]

* ``-M`` appears only with ``-p`` and only when the mask is not 255.255.255.255.
  piranha passes ``-M`` only when ``persistent > 0`` and ``pmask`` is neither unset,
  ``0.0.0.0`` nor ``255.255.255.255`` (lvsd.c ``startVirtualServer``).
* A tunnel destination is printed with ``--tun-type ipip`` (1.31's
  ``print_tunnel_rule``; the tunnel type reads as 0 = ipip when the kernel does not
  report one).
* Real-server ports: for a TCP/UDP service whose forwarding is direct routing or
  tunnelling the destination keeps the *service's* port whatever port was given —
  ipvsadm 1.31 rewrites it before asking the kernel ("The destination port must be
  equal to the service port if the IP_VS_CONN_F_TUNNEL or IP_VS_CONN_F_DROUTE is
  set"), and a VM running the Debian kernel showed the same for direct routing. NAT
  destinations and every destination of an fwmark service keep their own ports.
  Two servers that thereby name the same destination are one entry, the first in
  the file. (In piranha the second ``ipvsadm -a`` fails with "Destination already
  exists", which makes that nanny exit — and with ``hard_shutdown = 1`` lvsd then
  stops every service.)
* Virtuals that share a service key — the same fwmark (and address family), or the
  same protocol, VIP and port — are ONE IPVS service. The first virtual in the file
  gives its scheduler and persistence; the destinations are the union of all their
  active servers, without duplicates. (piranha 0.8.6 does less: lvsd's second
  ``ipvsadm -A`` fails with "Service already exists", and ``startVirtualServer``
  then returns before starting that virtual's nannies, so a piranha router shows
  only the first virtual's servers — lvsd.c ``startVirtualServer``. The table here
  is the one the file asks for.)
* Weights are the configured ones. (piranha 0.8.6's nanny adds a server with
  ``max(1, weight >> 5)`` and doubles it every check up to the configured weight —
  nanny.c ``checkState``/``adjustWeight`` — so a configured 0 stays at 1 there; the
  table here is what the file asks for, a quiesced 0.) Load-based weight changes
  (``load_monitor``) are not a steady state and not shown.
* Order: services by fwmark (ordinary services first), address family, protocol
  (TCP before UDP), address, port; destinations by address, then port. Addresses
  compare the way libipvs does, as the C ``int`` difference of the host-order 32-bit
  words, which wraps when two addresses are 2^31 or more apart (``200.0.0.1`` sorts
  before ``10.0.0.1``). When that makes the comparison cyclic (three addresses spread
  over the whole range), ipvsadm's own order depends on the kernel's hash-table dump
  order, which no emitter can know; the order here is then the one a stable sort of
  the file order gives.
* Addresses are formatted like glibc's ``inet_ntop`` (``::ffff:10.0.0.1``).

What ``ipvsadm-save`` cannot express raises :class:`~compiler.emit.EmitError`: a host
name (ipvsadm needs numeric addresses; piranha resolves names at start-up), a missing
address, and values ipvsadm refuses (weight outside 0-65535, persistence above 31 days,
port 0 without persistence, ports outside 0-65535, fwmark outside 1-2^31-1, an IPv4
``pmask`` on an IPv6 service, an address family that differs from the service's
without tunnelling).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cmp_to_key
from ipaddress import IPv4Address, IPv6Address

from ..model import Config, Hostname, Network, Protocol, RealServer, ServiceType, VirtualService
from ..source import Span
from . import EmitError

TARGET = "ipvsadm"

# limits of ipvsadm 1.31's option parser (ipvsadm.c parse_options)
MAX_WEIGHT = 65535
MAX_PERSISTENT = 86400 * 31
MAX_FWMARK = 2**31 - 1  # piranha keeps the mark in a C int and prints it with %d
_ALL_ONES = IPv4Address(0xFFFFFFFF)
_ZERO = IPv4Address(0)
# the kernel's numbers, which the comparators use
_AF = {4: 2, 6: 10}  # AF_INET, AF_INET6
_PROTO = {Protocol.TCP: 6, Protocol.UDP: 17}  # an fwmark service is stored as TCP

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Destination:
    """One real server as the kernel holds it."""

    address: IPAddress
    port: int
    forwarding: Network
    weight: int


@dataclass(frozen=True, slots=True)
class Service:
    """One IPVS virtual service and its destinations, in ``ipvsadm-save`` order.

    ``virtuals`` names the lvs.cf virtuals merged into it, first one first.
    """

    fwmark: int  # 0: a (protocol, address, port) service
    family: int  # 4 or 6
    protocol: Protocol
    address: IPAddress | None  # None for an fwmark service
    port: int
    scheduler: str
    persistent: int  # seconds, 0 = not persistent
    # -M, only when persistent: IPv4 a netmask other than 255.255.255.255; IPv6 a
    # prefix length other than 128 (ipvsadm prints `-M 64`)
    pmask: IPv4Address | int | None
    destinations: tuple[Destination, ...]
    virtuals: tuple[str, ...]

    @property
    def key(self) -> str:
        """The service as ipvsadm names it: ``-t VIP:PORT``, ``-u ...``, ``-f MARK [-6]``."""
        if self.fwmark:
            return f"-f {self.fwmark}" + (" -6" if self.family == 6 else "")
        assert self.address is not None
        flag = "-t" if self.protocol is Protocol.TCP else "-u"
        return f"{flag} {addrport(self.address, self.port)}"


# --------------------------------------------------------------------------- table


def table(config: Config) -> tuple[Service, ...]:
    """The desired IPVS table: one :class:`Service` per IPVS service, sorted like ipvsadm."""
    if config.service is ServiceType.FOS:
        return ()
    first: dict[tuple, Service] = {}  # service key -> the service its first virtual made
    names: dict[tuple, list[str]] = {}
    dests: dict[tuple, dict[tuple[IPAddress, int], Destination]] = {}
    for vs in config.active_virtuals:
        svc = _service(vs)
        key = (svc.fwmark, svc.family) if svc.fwmark else (svc.family, svc.key)
        svc = first.setdefault(key, svc)
        names.setdefault(key, []).append(vs.name)
        held = dests.setdefault(key, {})
        for rs in vs.servers:
            if rs.active:
                d = _destination(config, vs, rs, svc)
                held.setdefault((d.address, d.port), d)  # the first one stays
    out = [
        replace(
            svc,
            destinations=_sorted_dests(dests[key].values()),
            virtuals=tuple(names[key]),
        )
        for key, svc in first.items()
    ]
    return _sorted_services(out)


def _span(node: VirtualService | RealServer, keyword: str) -> Span | None:
    return node.spans.get(keyword) or node.span


def _fail(message: str, span: Span | None, help: str | None = None) -> EmitError:
    return EmitError(TARGET, message, span, help)


def _numeric(addr: object, what: str, span: Span | None) -> IPAddress:
    if isinstance(addr, IPv4Address | IPv6Address):
        return addr
    if isinstance(addr, Hostname):
        raise _fail(
            f"{what} is the host name `{addr}`; ipvsadm-save -n shows numeric addresses",
            span,
            "write the IP address (piranha resolves host names when it starts)",
        )
    raise _fail(f"{what} has no address", span, "add an `address` line")


def _service(vs: VirtualService) -> Service:
    where = f"virtual `{vs.name}`"
    if vs.fwmark:
        if not 0 < vs.fwmark <= MAX_FWMARK:
            raise _fail(
                f"{where}: fwmark {vs.fwmark} is outside 1-{MAX_FWMARK}",
                _span(vs, "fwmark"),
                "ipvsadm accepts only positive marks that fit a C int",
            )
        family = 6 if isinstance(vs.address, IPv6Address) else 4
        address: IPAddress | None = None
        port = 0
        protocol = Protocol.TCP  # ipvsadm -f stores the service as TCP
    else:
        address = _numeric(vs.address, f"the address of {where}", _span(vs, "address"))
        family = address.version
        port = vs.port
        protocol = vs.protocol
        if not 0 <= port <= 65535:
            raise _fail(f"{where}: port {port} is outside 0-65535", _span(vs, "port"))
        if port == 0 and vs.persistent <= 0:
            raise _fail(
                f"{where}: port 0 (any port) needs persistence",
                _span(vs, "port"),
                "ipvsadm refuses a zero port for a non-persistent service; set `persistent`",
            )
    persistent = vs.persistent if vs.persistent > 0 else 0
    pmask = None
    if persistent:
        if persistent > MAX_PERSISTENT:
            raise _fail(
                f"{where}: persistent {persistent} is more than 31 days",
                _span(vs, "persistent"),
                f"ipvsadm accepts 1-{MAX_PERSISTENT} seconds",
            )
        if vs.pmask is not None and vs.pmask not in (_ZERO, _ALL_ONES):
            if family == 6:
                raise _fail(
                    f"{where}: pmask {vs.pmask} is an IPv4 netmask but the service is IPv6",
                    _span(vs, "pmask"),
                    "remove `pmask`; IPv6 persistence granularity is a prefix length",
                )
            pmask = vs.pmask
        if family == 6 and vs.pmask6 is not None and vs.pmask6 != 128:
            pmask = vs.pmask6
    return Service(
        fwmark=vs.fwmark,
        family=family,
        protocol=protocol,
        address=address,
        port=port,
        scheduler=vs.scheduler.value,
        persistent=persistent,
        pmask=pmask,
        destinations=(),
        virtuals=(),
    )


def _destination(config: Config, vs: VirtualService, rs: RealServer, svc: Service) -> Destination:
    address = rs.address
    forwarding = config.forwarding(vs)
    port = rs.port
    # the common case first, cheaply: the error paths below build messages and spans
    if (
        isinstance(address, IPv4Address | IPv6Address)
        and address.version == svc.family
        and 0 <= port <= 65535
        and 0 <= rs.weight <= MAX_WEIGHT
    ):
        if not svc.fwmark and forwarding in (Network.DIRECT, Network.TUNNEL):
            port = svc.port
        return Destination(address, port, forwarding, rs.weight)
    where = f"real server `{rs.name}` of virtual `{vs.name}`"
    address = _numeric(rs.address, where, _span(rs, "address"))
    if address.version != svc.family and forwarding is not Network.TUNNEL:
        raise _fail(
            f"{where}: an IPv{address.version} real server in an IPv{svc.family} service",
            _span(rs, "address"),
            "IPVS mixes address families only for tunnelled real servers",
        )
    if not 0 <= rs.port <= 65535:
        raise _fail(f"{where}: port {rs.port} is outside 0-65535", _span(rs, "port"))
    if not 0 <= rs.weight <= MAX_WEIGHT:
        raise _fail(
            f"{where}: weight {rs.weight} is outside 0-{MAX_WEIGHT}",
            _span(rs, "weight"),
            f"ipvsadm accepts weights 0-{MAX_WEIGHT}",
        )
    port = rs.port
    if not svc.fwmark and forwarding in (Network.DIRECT, Network.TUNNEL):
        port = svc.port
    return Destination(address, port, forwarding, rs.weight)


# --------------------------------------------------------------------------- order


def _int32(v: int) -> int:
    """A C ``int`` holding the result of an unsigned 32-bit subtraction."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _words(addr: IPAddress | None) -> tuple[int, ...]:
    if addr is None:
        return (0, 0, 0, 0)
    b = addr.packed
    return tuple(int.from_bytes(b[i : i + 4], "big") for i in range(0, len(b), 4))


def _cmp_addr(a: IPAddress | None, b: IPAddress | None, family: int) -> int:
    # libipvs: the first entry's family decides; IPv4 compares one word, IPv6 four
    wa, wb = _words(a), _words(b)
    if family == 4:
        return _int32(wa[0] - wb[0])
    wa, wb = (*wa, 0, 0, 0)[:4], (*wb, 0, 0, 0)[:4]
    r = 0
    for x, y in zip(wa, wb, strict=True):
        r = _int32(x - y)
        if r:
            break
    return r


def _cmp_services(s1: Service, s2: Service) -> int:
    r = _int32(s1.fwmark - s2.fwmark)
    if r:
        return r
    r = _AF[s1.family] - _AF[s2.family]
    if r:
        return r
    r = _PROTO[s1.protocol] - _PROTO[s2.protocol]
    if r:
        return r
    r = _cmp_addr(s1.address, s2.address, s1.family)
    if r:
        return r
    return s1.port - s2.port


def _cmp_dests(d1: Destination, d2: Destination) -> int:
    r = _cmp_addr(d1.address, d2.address, d1.address.version)
    if r:
        return r
    return d1.port - d2.port


def _no_wrap(addresses: list[int]) -> bool:
    """libipvs's wrapping compare is plain integer order when no two IPv4 addresses
    are 2^31 or more apart, which is every real table; then a key sort is exact."""
    return not addresses or max(addresses) - min(addresses) < 1 << 31


def _sorted_dests(dests: Iterable[Destination]) -> tuple[Destination, ...]:
    ds = list(dests)
    if all(d.address.version == 4 for d in ds):
        ints = [int(d.address) for d in ds]
        if _no_wrap(ints):
            order = sorted(range(len(ds)), key=lambda i: (ints[i], ds[i].port))
            return tuple(ds[i] for i in order)
    return tuple(sorted(ds, key=cmp_to_key(_cmp_dests)))


def _sorted_services(services: list[Service]) -> tuple[Service, ...]:
    plain = [s for s in services if not s.fwmark]
    if all(s.family == 4 for s in plain) and _no_wrap([int(s.address) for s in plain]):  # type: ignore[arg-type]
        return tuple(
            sorted(
                services,
                key=lambda s: (
                    s.fwmark,
                    _AF[s.family],
                    _PROTO[s.protocol],
                    int(s.address) if s.address is not None else 0,
                    s.port,
                ),
            )
        )
    return tuple(sorted(services, key=cmp_to_key(_cmp_services)))


# --------------------------------------------------------------------------- text


def inet_ntop(addr: IPAddress) -> str:
    """glibc's ``inet_ntop``: like ``str()`` except for IPv4-compatible/-mapped IPv6."""
    if isinstance(addr, IPv4Address):
        return str(addr)
    b = addr.packed
    words = [int.from_bytes(b[i : i + 2], "big") for i in range(0, 16, 2)]
    # the longest run of zero words (the first of equal runs), if at least 2 long
    best_base, best_len, cur_base = -1, 0, -1
    for i in range(9):
        if i < 8 and words[i] == 0:
            if cur_base < 0:
                cur_base = i
            continue
        if cur_base >= 0:
            if i - cur_base > best_len:
                best_base, best_len = cur_base, i - cur_base
            cur_base = -1
    if best_len < 2:
        best_base, best_len = -1, 0
    out: list[str] = []
    for i in range(8):
        if best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            continue
        if i:
            out.append(":")
        if i == 6 and best_base == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
            out.append(str(IPv4Address(b[12:])))
            break
        out.append(f"{words[i]:x}")
    if best_base >= 0 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def addrport(addr: IPAddress, port: int) -> str:
    """``a.b.c.d:port`` or ``[v6]:port``, as ipvsadm's ``addrport_to_anyname`` with -n."""
    if isinstance(addr, IPv6Address):
        return f"[{inet_ntop(addr)}]:{port}"
    return f"{addr}:{port}"


def lines(svc: Service) -> list[str]:
    """The ``-A`` line of one service and the ``-a`` line of each destination."""
    head = f"-A {svc.key} -s {svc.scheduler}"
    if svc.persistent:
        head += f" -p {svc.persistent}"
        if svc.pmask is not None and svc.pmask not in (_ALL_ONES, 128):
            head += f" -M {svc.pmask}"
    out = [head]
    key = svc.key
    for d in svc.destinations:
        line = (
            f"-a {key} -r {addrport(d.address, d.port)} {d.forwarding.ipvsadm_flag} -w {d.weight}"
        )
        if d.forwarding is Network.TUNNEL:
            line += " --tun-type ipip"
        out.append(line)
    return out


def emit(config: Config) -> str:
    return "".join(line + "\n" for svc in table(config) for line in lines(svc))
