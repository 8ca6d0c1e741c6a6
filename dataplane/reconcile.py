"""The IPVS reconcile diff: desired state vs the kernel's, as a minimal list of operations.

Pure code, no I/O. The desired state comes from the model
(:func:`desired_state` = the compiler's steady-state table, :func:`compiler.emit.ipvsadm.table`,
bent by the runtime's :class:`Overrides`), the observed state from
:mod:`dataplane.ipvs` reading the kernel; both are :class:`IPVSState` made of the same
typed ``Service``/``Destination`` values. :func:`reconcile` returns the operations that
turn the one into the other:

* never a flush, and nothing for a service or destination that already matches;
* a service is deleted only when no desired service has its key (protocol, VIP, port
  or fwmark, and address family); deleting it removes its destinations with it;
* a changed scheduler or persistence is an edit (``-E``), a changed weight or
  forwarding method a destination edit (``-e``): connections and counters survive;
* order: destination deletes, service deletes, service edits, service adds,
  destination edits, destination adds — then timeouts and the sync daemon. Within a
  group, ipvsadm-save order.

Every operation prints as the ipvsadm command line that would do the same thing
(``str(op)``), which is what ``lvs-router apply --dry-run`` shows.
:func:`simulate` applies operations to a state in memory, so that "reconcile what
you just applied gives nothing" is testable without a kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType

from compiler.emit.ipvsadm import Destination, Service, addrport, lines, table
from compiler.model import Config, RealServer

# --------------------------------------------------------------------------- state


class SyncState(Enum):
    """A connection-sync daemon's role; the values are ``IPVS_DAEMON_ATTR_STATE``'s."""

    MASTER = 1
    BACKUP = 2

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``ipvsadm --set TCP TCPFIN UDP`` in seconds; 0 in a desired value keeps the current one."""

    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0

    def __str__(self) -> str:
        return f"--set {self.tcp} {self.tcpfin} {self.udp}"


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """One running connection-sync daemon (the kernel runs at most one per state)."""

    state: SyncState
    iface: str
    syncid: int  # 0-255; 0 = no filtering


@dataclass(frozen=True, slots=True)
class IPVSState:
    """A whole IPVS configuration: the table, the timeouts and the sync daemons.

    ``timeouts`` and ``daemons`` may be ``None`` on the desired side: not managed.
    """

    services: tuple[Service, ...] = ()
    timeouts: Timeouts | None = None
    daemons: tuple[SyncDaemon, ...] | None = None


# --------------------------------------------------------------------------- overrides


def _frozen_map() -> Mapping[tuple[str, str], int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Overrides:
    """What the runtime knows that lvs.cf does not, by (virtual name, server name).

    ``down``: the server failed its checks and is out of the table. ``quiesced``: it
    failed but its virtual has ``quiesce_server = 1``, so it stays with weight 0.
    ``weights``: a weight other than the configured one (load monitor, slow start).
    ``sorry``: virtuals whose ``sorry_server`` is in (piranha adds it, weight 1, with the
    virtual's forwarding method, when no real server is left). ``down`` wins over
    ``quiesced``, which wins over ``weights``.
    """

    down: frozenset[tuple[str, str]] = frozenset()
    quiesced: frozenset[tuple[str, str]] = frozenset()
    weights: Mapping[tuple[str, str], int] = field(default_factory=_frozen_map)
    sorry: frozenset[str] = frozenset()


SORRY_SERVER = "sorry_server"  # the name the sorry server's destination goes by


def _override_server(vs_name: str, rs: RealServer, ov: Overrides) -> RealServer:
    key = (vs_name, rs.name)
    if key in ov.down:
        return replace(rs, active=False)
    if key in ov.quiesced:
        return replace(rs, weight=0)
    if key in ov.weights:
        return replace(rs, weight=ov.weights[key])
    return rs


def desired_state(
    config: Config, overrides: Overrides | None = None, role: SyncState = SyncState.MASTER
) -> IPVSState:
    """The state a router in ``role`` should have: table, ``--set`` timeouts, sync daemon.

    The table is :func:`compiler.emit.ipvsadm.table` of the config with the overrides
    applied to its real servers (it raises ``EmitError`` for what IPVS cannot hold).
    Timeouts are always managed (0 = keep, as piranha's ``ipvsadm --set``); the sync
    daemon only when ``syncdaemon = 1``: then exactly one, in ``role``, as pulse starts it.
    """
    ov = overrides or Overrides()
    virtuals = []
    for vs in config.virtuals:
        servers = tuple(_override_server(vs.name, rs, ov) for rs in vs.servers)
        if vs.name in ov.sorry and vs.sorry_server is not None:
            port = vs.port
            servers += (
                RealServer(
                    name=SORRY_SERVER, address=vs.sorry_server, active=True, weight=1, port=port
                ),
            )
        virtuals.append(replace(vs, servers=servers))
    services = table(replace(config, virtuals=tuple(virtuals)))
    timeouts = Timeouts(config.tcp_timeout, config.tcpfin_timeout, config.udp_timeout)
    daemons = None
    if config.syncdaemon:
        daemons = (SyncDaemon(role, config.syncd_iface, config.syncd_id & 0xFF),)
    return IPVSState(services, timeouts, daemons)


# --------------------------------------------------------------------------- operations


def _bare(svc: Service) -> Service:
    return replace(svc, destinations=())


def _head(svc: Service) -> str:
    """``-s SCHED [-p N [-M MASK]]`` of the service's ``-A`` line."""
    return lines(_bare(svc))[0].removeprefix(f"-A {svc.key} ")


def _dest_tail(svc: Service, dest: Destination) -> str:
    """``-r RIP:PORT FWD -w W [--tun-type ipip]`` of the destination's ``-a`` line."""
    return lines(replace(svc, destinations=(dest,)))[1].removeprefix(f"-a {svc.key} ")


@dataclass(frozen=True, slots=True)
class AddService:
    service: Service

    def __str__(self) -> str:
        return f"-A {self.service.key} {_head(self.service)}"


@dataclass(frozen=True, slots=True)
class EditService:
    service: Service  # the new scheduler and persistence

    def __str__(self) -> str:
        return f"-E {self.service.key} {_head(self.service)}"


@dataclass(frozen=True, slots=True)
class DeleteService:
    service: Service

    def __str__(self) -> str:
        return f"-D {self.service.key}"


@dataclass(frozen=True, slots=True)
class AddDest:
    service: Service
    dest: Destination

    def __str__(self) -> str:
        return f"-a {self.service.key} {_dest_tail(self.service, self.dest)}"


@dataclass(frozen=True, slots=True)
class EditDest:
    service: Service
    dest: Destination  # the new forwarding method and weight

    def __str__(self) -> str:
        return f"-e {self.service.key} {_dest_tail(self.service, self.dest)}"


@dataclass(frozen=True, slots=True)
class DeleteDest:
    service: Service
    dest: Destination

    def __str__(self) -> str:
        return f"-d {self.service.key} -r {addrport(self.dest.address, self.dest.port)}"


@dataclass(frozen=True, slots=True)
class SetTimeouts:
    timeouts: Timeouts

    def __str__(self) -> str:
        return str(self.timeouts)


@dataclass(frozen=True, slots=True)
class StartDaemon:
    daemon: SyncDaemon

    def __str__(self) -> str:
        d = self.daemon
        return f"--start-daemon {d.state.word} --mcast-interface {d.iface} --syncid {d.syncid}"


@dataclass(frozen=True, slots=True)
class StopDaemon:
    state: SyncState

    def __str__(self) -> str:
        return f"--stop-daemon {self.state.word}"


Op = (
    AddService
    | EditService
    | DeleteService
    | AddDest
    | EditDest
    | DeleteDest
    | SetTimeouts
    | StartDaemon
    | StopDaemon
)

# --------------------------------------------------------------------------- the diff


def service_key(svc: Service) -> tuple:
    """What names an IPVS service in the kernel: fwmark and family, or protocol+VIP+port."""
    if svc.fwmark:
        return ("fwmark", svc.family, svc.fwmark)
    return ("addr", svc.family, svc.protocol.value, svc.address, svc.port)


def dest_key(dest: Destination) -> tuple:
    return (dest.address.version, dest.address.packed, dest.port)


def _sort_key(svc: Service) -> tuple:
    # a deterministic order for services only the kernel has (no desired order to follow)
    addr = svc.address.packed if svc.address is not None else b""
    return (svc.fwmark, svc.family, svc.protocol.value, addr, svc.port)


def _same_service(a: Service, b: Service) -> bool:
    return (a.scheduler, a.persistent, a.pmask) == (b.scheduler, b.persistent, b.pmask)


def _same_dest(a: Destination, b: Destination) -> bool:
    return (a.forwarding, a.weight) == (b.forwarding, b.weight)


def reconcile(desired: IPVSState, observed: IPVSState) -> tuple[Op, ...]:
    """The minimal ordered operations that turn ``observed`` into ``desired``."""
    have = {service_key(s): s for s in observed.services}
    want = {service_key(s): s for s in desired.services}
    del_dests: list[Op] = []
    del_svcs: list[Op] = []
    edit_svcs: list[Op] = []
    add_svcs: list[Op] = []
    edit_dests: list[Op] = []
    add_dests: list[Op] = []

    for key, old in sorted(have.items(), key=lambda kv: _sort_key(kv[1])):
        if key not in want:
            del_svcs.append(DeleteService(_bare(old)))
    for key, new in want.items():
        bare = _bare(new)
        old = have.get(key)
        if old is None:
            add_svcs.append(AddService(bare))
            add_dests.extend(AddDest(bare, d) for d in new.destinations)
            continue
        if not _same_service(old, new):
            edit_svcs.append(EditService(bare))
        old_dests = {dest_key(d): d for d in old.destinations}
        new_keys = set()
        for d in new.destinations:
            k = dest_key(d)
            new_keys.add(k)
            was = old_dests.get(k)
            if was is None:
                add_dests.append(AddDest(bare, d))
            elif not _same_dest(was, d):
                edit_dests.append(EditDest(bare, d))
        gone = [d for k, d in old_dests.items() if k not in new_keys]
        gone.sort(key=dest_key)
        del_dests.extend(DeleteDest(bare, d) for d in gone)

    ops = del_dests + del_svcs + edit_svcs + add_svcs + edit_dests + add_dests
    ops.extend(_timeouts(desired.timeouts, observed.timeouts))
    ops.extend(_daemons(desired.daemons, observed.daemons))
    return tuple(ops)


def _timeouts(want: Timeouts | None, have: Timeouts | None) -> list[Op]:
    if want is None:
        return []
    cur = have or Timeouts()
    # 0 keeps the current value, so only a non-zero value that differs is a change
    if all(w == 0 or w == c for w, c in zip(_tuple(want), _tuple(cur), strict=True)):
        return []
    return [SetTimeouts(want)]


def _tuple(t: Timeouts) -> tuple[int, int, int]:
    return (t.tcp, t.tcpfin, t.udp)


def _daemons(want: tuple[SyncDaemon, ...] | None, have: tuple[SyncDaemon, ...] | None) -> list[Op]:
    if want is None:
        return []
    current = {d.state: d for d in have or ()}
    wanted = {d.state: d for d in want}
    ops: list[Op] = []
    for state in SyncState:
        cur, new = current.get(state), wanted.get(state)
        if cur is not None and cur != new:
            ops.append(StopDaemon(state))
    for state in SyncState:
        cur, new = current.get(state), wanted.get(state)
        if new is not None and cur != new:
            ops.append(StartDaemon(new))
    return ops


# --------------------------------------------------------------------------- simulation


def simulate(state: IPVSState, ops: Iterable[Op]) -> IPVSState:
    """The state after ``ops``, computed in memory (what the kernel would hold).

    Raises ``KeyError``/``ValueError`` where the kernel would fail (a missing or
    existing service or destination), so tests catch an impossible operation order.
    """
    svcs = {service_key(s): s for s in state.services}
    timeouts, daemons = state.timeouts, {d.state: d for d in state.daemons or ()}
    for op in ops:
        match op:
            case AddService(service=s):
                if service_key(s) in svcs:
                    raise ValueError(f"{op}: service exists")
                svcs[service_key(s)] = _bare(s)
            case EditService(service=s):
                old = svcs[service_key(s)]
                svcs[service_key(s)] = replace(s, destinations=old.destinations)
            case DeleteService(service=s):
                del svcs[service_key(s)]
            case (
                AddDest(service=s, dest=d)
                | EditDest(service=s, dest=d)
                | DeleteDest(service=s, dest=d)
            ):
                old = svcs[service_key(s)]
                dests = {dest_key(x): x for x in old.destinations}
                exists = dest_key(d) in dests
                if isinstance(op, AddDest):
                    if exists:
                        raise ValueError(f"{op}: destination exists")
                    dests[dest_key(d)] = d
                elif not exists:
                    raise KeyError(f"{op}: no such destination")
                elif isinstance(op, EditDest):
                    dests[dest_key(d)] = d
                else:
                    del dests[dest_key(d)]
                svcs[service_key(s)] = replace(old, destinations=tuple(dests.values()))
            case SetTimeouts(timeouts=t):
                cur = timeouts or Timeouts()
                timeouts = Timeouts(*(w or c for w, c in zip(_tuple(t), _tuple(cur), strict=True)))
            case StartDaemon(daemon=d):
                if d.state in daemons:
                    raise ValueError(f"{op}: daemon running")
                daemons[d.state] = d
            case StopDaemon(state=st):
                del daemons[st]
    return IPVSState(
        tuple(svcs.values()),
        timeouts,
        tuple(daemons[s] for s in SyncState if s in daemons),
    )


__all__ = [
    "SORRY_SERVER",
    "AddDest",
    "AddService",
    "DeleteDest",
    "DeleteService",
    "EditDest",
    "EditService",
    "IPVSState",
    "Op",
    "Overrides",
    "SetTimeouts",
    "StartDaemon",
    "StopDaemon",
    "SyncDaemon",
    "SyncState",
    "Timeouts",
    "desired_state",
    "reconcile",
    "service_key",
    "simulate",
]
