"""The typed model of an lvs.cf file: frozen dataclasses, no lark, no I/O.

Everything downstream (checks, emitters, dataplanes, the runtime) consumes these
classes. Field names are the lvs.cf keywords; defaults are piranha 0.8.6's
(``lvsParseConfig`` / ``lvsInitVirtualServer``), so an unset keyword and a keyword
written with its default value give equal models. Time values are seconds.

Source positions ride along but do not take part in equality: ``span`` is the
header or first line of a node and ``spans`` maps each keyword that was written
to the span of its line, so a later error can point at the line that caused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from .source import Span


class Dialect(Enum):
    """``piranha``: exactly what piranha 0.8.6 accepts; ``piranha-0.5``: what the 0.5.x
    parser of 2001 accepts (fewer keywords and schedulers); ``extended``: a superset
    whose extensions are reported as notes."""

    PIRANHA = "piranha"
    PIRANHA_05 = "piranha-0.5"
    EXTENDED = "extended"

    @property
    def strict(self) -> bool:
        """A piranha dialect: extensions are errors, not notes."""
        return self is not Dialect.EXTENDED


class ServiceType(Enum):
    LVS = "lvs"
    FOS = "fos"


class Network(Enum):
    """The forwarding method (lvs.cf ``network``), with its ipvsadm flag."""

    NAT = "nat"
    DIRECT = "direct"
    TUNNEL = "tunnel"

    @property
    def ipvsadm_flag(self) -> str:
        return {"nat": "-m", "direct": "-g", "tunnel": "-i"}[self.value]


class Protocol(Enum):
    TCP = "tcp"
    UDP = "udp"


class Scheduler(Enum):
    """IPVS schedulers; the last five exist only in the extended dialect."""

    RR = "rr"
    WRR = "wrr"
    LC = "lc"
    WLC = "wlc"
    LBLC = "lblc"
    LBLCR = "lblcr"
    DH = "dh"
    SH = "sh"
    SED = "sed"
    NQ = "nq"
    FO = "fo"
    OVF = "ovf"
    MH = "mh"


@dataclass(frozen=True, slots=True)
class Hostname:
    """A host name where piranha would call gethostbyname(); resolved at run time."""

    name: str

    def __str__(self) -> str:
        return self.name


Host = IPv4Address | IPv6Address | Hostname


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDevice:
    """``address = IP DEVICE`` / ``nat_router = IP DEVICE``: an address and the
    interface (usually an alias such as ``eth0:1``) the router brings it up on."""

    address: Host
    device: str


def _spans() -> Mapping[str, Span]:
    return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class RealServer:
    """``server NAME { ... }`` inside a virtual (or failover) block."""

    name: str
    address: Host | None = None
    active: bool = False
    weight: int = 1
    # piranha copies the virtual's port *as it stands when the server block starts*
    port: int = 80
    span: Span | None = field(default=None, compare=False, repr=False)
    spans: Mapping[str, Span] = field(default_factory=_spans, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualService:
    """``virtual NAME { ... }``: one IPVS virtual service and its real servers."""

    name: str
    active: bool = False
    address: Host | None = None
    device: str | None = None
    vip_nmask: IPv4Address | None = None  # 0.0.0.0 means unset
    sorry_server: IPv4Address | IPv6Address | None = None
    fwmark: int = 0  # 0: a (protocol, VIP, port) service; else an fwmark service
    protocol: Protocol = Protocol.TCP
    port: int = 80
    # extended dialect: this virtual's own forwarding method; None = the global one
    network: Network | None = None
    scheduler: Scheduler = Scheduler.WLC
    persistent: int = 0  # seconds; 0 = no persistence
    pmask: IPv4Address | None = None  # 255.255.255.255 means unset, as in piranha
    # extended dialect, IPv6 virtuals: the persistence prefix length (`pmask = 64` or
    # `pmask = /64`, 1..128); None = /128, as IPVS
    pmask6: int | None = None
    client_monitor: str = "/usr/sbin/nanny"
    send_program: str | None = None
    send: str | None = None
    expect: str | None = None
    use_regex: bool = False
    timeout: int = 10  # seconds: check interval and connect/read timeout
    reentry: int = 180  # seconds of good checks before a failed server returns
    load_monitor: str | None = None
    quiesce_server: bool = False
    start_cmd: str | None = None
    stop_cmd: str | None = None
    master: Host | None = None  # legacy, parsed and unused
    dirs: tuple[str, ...] | None = None  # legacy, parsed and unused
    # keywords whose value was written in single quotes: piranha hands the quote
    # characters on to nanny (see docs/lvs.cf.md, "quoting")
    single_quoted: frozenset[str] = frozenset()
    servers: tuple[RealServer, ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)
    spans: Mapping[str, Span] = field(default_factory=_spans, compare=False, repr=False)

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark != 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverService(VirtualService):
    """``failover NAME { ... }``: piranha's FOS service (same keywords as virtual)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole lvs.cf: the global settings, the virtual and the failover services."""

    service: ServiceType = ServiceType.LVS
    serial_no: int = 0
    primary: Host | None = None
    primary_private: Host | None = None  # = primary when only primary is given
    primary_shared: str | None = None
    backup: Host | None = None
    backup_private: Host | None = None  # = backup when primary_private is not given
    backup_shared: str | None = None
    backup_active: bool = False
    reservation_conflict_action: str | None = None
    heartbeat: bool = False
    heartbeat_port: int = 539
    keepalive: float = 2  # seconds (whole seconds in piranha)
    deadtime: float = 5
    network: Network = Network.NAT
    nat_router: HostDevice | None = None
    nat_nmask: IPv4Address | None = None
    rsh_command: str = "rsh"
    debug_level: str = "NONE"
    ipvsadm: str = "/sbin/ipvsadm"
    sync: bool = False
    monitor_links: int = 0
    syncdaemon: bool = False
    syncd_iface: str = "eth0"
    syncd_id: int = 0
    tcp_timeout: int = 0
    tcpfin_timeout: int = 0
    udp_timeout: int = 0
    hard_shutdown: bool = True
    active_cmd: str | None = None
    inactive_cmd: str | None = None
    virtuals: tuple[VirtualService, ...] = ()
    failovers: tuple[FailoverService, ...] = ()
    file: str = field(default="", compare=False, repr=False)
    spans: Mapping[str, Span] = field(default_factory=_spans, compare=False, repr=False)

    @property
    def active_virtuals(self) -> tuple[VirtualService, ...]:
        return tuple(v for v in self.virtuals if v.active)

    def forwarding(self, vs: VirtualService) -> Network:
        """The forwarding method of a virtual: its own (extended) or the global one."""
        return vs.network or self.network
