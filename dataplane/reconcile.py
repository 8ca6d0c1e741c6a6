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

For a daemon, two incremental forms with the same results: :class:`SyncedTable` holds
the table last applied and gives exactly ``reconcile``'s operations while diffing only
the services whose desired object changed, and :class:`DesiredTable` keeps
``desired_state`` up to date per override change, rebuilding only the touched
services and saying which ones they are (``IPVSState.basis``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import compress
from operator import is_not
from types import MappingProxyType

from compiler.emit.ipvsadm import Destination, Service, addrport, lines, table
from compiler.model import Config, Protocol, RealServer

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
    # a hint, not part of the value: (base, positions) when ``services`` is the tuple
    # ``base`` with only those positions holding other objects (DesiredTable sets it),
    # so that SyncedTable.diff need not look at the other positions at all
    basis: tuple[tuple[Service, ...], tuple[int, ...]] | None = field(
        default=None, compare=False, repr=False
    )


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


def _touched(old: Overrides, new: Overrides) -> set[str]:
    """The virtuals whose overrides differ between ``old`` and ``new``: O(overrides)."""
    if old is new:
        return set()
    names = {v for v, _ in old.down ^ new.down}
    names.update(v for v, _ in old.quiesced ^ new.quiesced)
    if old.weights is not new.weights:
        names.update(v for (v, _), _w in old.weights.items() ^ new.weights.items())
    names.update(old.sorry ^ new.sorry)
    return names


class DesiredTable:
    """:func:`desired_state` of one config, kept up to date as the overrides change.

    ``desired_state`` rebuilds the whole table (the compiler's :func:`table`): O(table)
    for every health-check event. This keeps the last state and rebuilds only the
    services of the virtuals whose overrides changed — from a config holding just the
    virtuals that make those services, which gives the same services — and reuses
    every other ``Service`` object, so that :class:`SyncedTable` finds them unchanged by
    identity. ``state(overrides)`` always equals ``desired_state(config, overrides,
    role)`` (a property test checks it); a server down in one virtual out of 10,000
    costs one small ``table`` call.
    """

    __slots__ = ("_config", "_overrides", "_role", "_services_of", "_state", "_virtuals_of")

    def __init__(
        self, config: Config, overrides: Overrides | None = None, role: SyncState = SyncState.MASTER
    ) -> None:
        self._config = config
        self._role = role
        self._overrides = overrides or Overrides()
        self._state = desired_state(config, self._overrides, role)
        self._virtuals_of: dict[str, list[int]] = {}  # virtual name -> config positions
        for i, vs in enumerate(config.virtuals):
            self._virtuals_of.setdefault(vs.name, []).append(i)
        self._services_of: dict[str, list[int]] = {}  # virtual name -> table positions
        for i, svc in enumerate(self._state.services):
            for name in svc.virtuals:
                self._services_of.setdefault(name, []).append(i)

    @property
    def config(self) -> Config:
        return self._config

    def state(self, overrides: Overrides) -> IPVSState:
        """The desired state under ``overrides``."""
        touched = _touched(self._overrides, overrides)
        self._overrides = overrides
        positions = sorted({i for name in touched for i in self._services_of.get(name, ())})
        if not positions:
            return self._state
        services = list(self._state.services)
        makers = {name for i in positions for name in services[i].virtuals}
        picked = sorted(i for name in makers for i in self._virtuals_of[name])
        virtuals = self._config.virtuals
        sub = replace(self._config, virtuals=tuple(virtuals[i] for i in picked))
        rebuilt = {service_key(s): s for s in desired_state(sub, overrides, self._role).services}
        for i in positions:
            services[i] = rebuilt[service_key(services[i])]
        base = self._state.services
        self._state = replace(self._state, services=tuple(services), basis=(base, tuple(positions)))
        return self._state


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


class _Groups:
    """The operation groups of a diff, filled service by service, concatenated in order."""

    __slots__ = ("add_dests", "add_svcs", "del_dests", "del_svcs", "edit_dests", "edit_svcs")

    def __init__(self) -> None:
        self.del_dests: list[Op] = []
        self.del_svcs: list[Op] = []
        self.edit_svcs: list[Op] = []
        self.add_svcs: list[Op] = []
        self.edit_dests: list[Op] = []
        self.add_dests: list[Op] = []

    def service(self, new: Service, old: Service | None) -> None:
        """The operations that make the kernel's ``old`` (``None``: absent) into ``new``."""
        bare = _bare(new)
        if old is None:
            self.add_svcs.append(AddService(bare))
            self.add_dests.extend(AddDest(bare, d) for d in new.destinations)
            return
        if not _same_service(old, new):
            self.edit_svcs.append(EditService(bare))
        old_dests = {dest_key(d): d for d in old.destinations}
        new_keys = set()
        for d in new.destinations:
            k = dest_key(d)
            new_keys.add(k)
            was = old_dests.get(k)
            if was is None:
                self.add_dests.append(AddDest(bare, d))
            elif not _same_dest(was, d):
                self.edit_dests.append(EditDest(bare, d))
        if len(new_keys) != len(old_dests) or not new_keys.issuperset(old_dests):
            gone = [d for k, d in old_dests.items() if k not in new_keys]
            gone.sort(key=dest_key)
            self.del_dests.extend(DeleteDest(bare, d) for d in gone)

    def delete(self, olds: Iterable[Service]) -> None:
        """Services only the kernel has, deleted in a deterministic order."""
        self.del_svcs.extend(DeleteService(_bare(old)) for old in sorted(olds, key=_sort_key))

    def ops(self) -> list[Op]:
        return (
            self.del_dests
            + self.del_svcs
            + self.edit_svcs
            + self.add_svcs
            + self.edit_dests
            + self.add_dests
        )


def reconcile(desired: IPVSState, observed: IPVSState) -> tuple[Op, ...]:
    """The minimal ordered operations that turn ``observed`` into ``desired``."""
    have = {service_key(s): s for s in observed.services}
    want = {service_key(s): s for s in desired.services}
    groups = _Groups()
    groups.delete(old for key, old in have.items() if key not in want)
    for key, new in want.items():
        groups.service(new, have.get(key))
    ops = groups.ops()
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


# --------------------------------------------------------------------------- incremental


def kernel_form(svc: Service) -> Service:
    """A desired service as reading the kernel back gives it: no lvs.cf virtual names,
    and an fwmark service with no address or port."""
    if svc.fwmark and (svc.address is not None or svc.port or svc.protocol is not Protocol.TCP):
        svc = replace(svc, address=None, port=0, protocol=Protocol.TCP)
    return replace(svc, virtuals=()) if svc.virtuals else svc


@dataclass(frozen=True, slots=True)
class Plan:
    """A diff from :meth:`SyncedTable.diff`: the operations, and what committing them changes."""

    ops: tuple[Op, ...]
    desired: IPVSState
    changed: tuple[tuple[tuple, Service], ...]  # (key, desired service) diffed
    deleted: tuple[tuple, ...]  # keys of services the kernel loses
    keys: tuple[tuple, ...] | None  # the desired services' keys when recomputed


class SyncedTable:
    """The kernel table as this process last left it, keyed by service; diffs a new
    desired state against it by visiting only the services that changed.

    :func:`reconcile` is O(table): it keys every service and destination of both sides.
    A daemon that holds the table it last applied can do better. :meth:`diff` returns
    exactly ``reconcile(desired, observed)`` — same operations, same order — where
    ``observed`` is what a kernel read would give now, but it finds the services to
    diff by comparing the new desired services with the last committed ones:

    * same number of services and, where the objects differ, the same keys at the same
      positions (a weight change, a server down, a scheduler edit): the unchanged
      positions are found by object identity at C speed (``map(is_not, …)``), so a
      desired state that reuses the unchanged ``Service`` objects costs O(changed);
      equal-but-new objects cost one ``==`` each;
    * otherwise (services added, removed or reordered): every service is keyed, and
      only those not identical to the last committed one at their key are diffed.

    The invariant behind both: after :meth:`commit`, every service the last desired
    state holds matches the kernel's (the ops made it so), so an unchanged desired
    service needs no operation. A failed apply breaks it; then the owner re-reads the
    kernel into a new ``SyncedTable``.
    """

    __slots__ = ("_daemons", "_have", "_last", "_last_by_key", "_last_keys", "_timeouts")

    def __init__(self, observed: IPVSState) -> None:
        self._have: dict[tuple, Service] = {
            service_key(s): kernel_form(s) for s in observed.services
        }
        self._timeouts = observed.timeouts
        self._daemons = observed.daemons
        self._last: tuple[Service, ...] | None = None  # the desired services last committed
        self._last_keys: tuple[tuple, ...] = ()
        self._last_by_key: dict[tuple, Service] = {}

    @property
    def state(self) -> IPVSState:
        """What the kernel holds, as far as this table knows (O(table): for tests, verify)."""
        return IPVSState(tuple(self._have.values()), self._timeouts, self._daemons)

    def diff(self, desired: IPVSState) -> Plan:
        """The operations :func:`reconcile` would give against the current kernel table."""
        found = self._aligned(desired.services, desired.basis)
        groups = _Groups()
        if found is not None:
            changed, deleted, keys = found, (), None
        else:
            keys = tuple(map(service_key, desired.services))
            want = dict(zip(keys, desired.services, strict=True))
            last = self._last_by_key
            changed = [(k, s) for k, s in want.items() if last.get(k) is not s]
            deleted = tuple(self._have.keys() - want.keys())
            groups.delete(self._have[k] for k in deleted)
        for key, new in changed:
            groups.service(new, self._have.get(key))
        ops = groups.ops()
        ops.extend(_timeouts(desired.timeouts, self._timeouts))
        ops.extend(_daemons(desired.daemons, self._daemons))
        return Plan(tuple(ops), desired, tuple(changed), deleted, keys)

    def _aligned(
        self,
        services: tuple[Service, ...],
        basis: tuple[tuple[Service, ...], tuple[int, ...]] | None,
    ) -> list[tuple[tuple, Service]] | None:
        """The changed (key, service) pairs when ``services`` has the last keys in the
        last order; ``None`` when it does not (or nothing was committed yet).

        With a ``basis`` hint whose base is the last committed tuple, only the hinted
        positions are looked at: O(changed), not even a pass over the table."""
        last = self._last
        if last is None or len(services) != len(last):
            return None
        if basis is not None and basis[0] is last:
            candidates: Iterable[int] = basis[1]
        else:
            candidates = compress(range(len(services)), map(is_not, services, last))
        changed = []
        last_keys = self._last_keys
        for i in candidates:
            new = services[i]
            key = service_key(new)
            if key != last_keys[i]:
                return None
            if new != last[i]:
                changed.append((key, new))
        return changed

    def commit(self, plan: Plan) -> None:
        """Record that the kernel applied every operation of ``plan``."""
        have = self._have
        for key in plan.deleted:
            del have[key]
        for key, new in plan.changed:
            have[key] = kernel_form(new)
        desired = plan.desired
        services = desired.services
        if plan.keys is None:
            for key, new in plan.changed:
                self._last_by_key[key] = new
            self._last = services
        else:
            self._last_by_key = dict(zip(plan.keys, services, strict=True))
            # a desired state with two services of one key is diffed like reconcile
            # (the last one wins), but positions no longer name services: no fast path
            unique = len(self._last_by_key) == len(services)
            self._last = services if unique else None
            self._last_keys = plan.keys
        if desired.timeouts is not None:
            self._timeouts = simulate(
                IPVSState(timeouts=self._timeouts), [SetTimeouts(desired.timeouts)]
            ).timeouts
        if desired.daemons is not None:
            self._daemons = desired.daemons


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
    "DesiredTable",
    "EditDest",
    "EditService",
    "IPVSState",
    "Op",
    "Overrides",
    "Plan",
    "SetTimeouts",
    "StartDaemon",
    "StopDaemon",
    "SyncDaemon",
    "SyncState",
    "SyncedTable",
    "Timeouts",
    "desired_state",
    "kernel_form",
    "reconcile",
    "service_key",
    "simulate",
]
