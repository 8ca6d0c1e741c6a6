"""The director (piranha's lvsd): which real servers the dataplane should hold, and how.

Pure code: no sockets, no clock, no logging. Inputs are the compiled model, health
events (with ``now`` passed in) and, once at start, what the dataplane already holds;
the output is a :class:`Desired` -- for every active (virtual, server) a
:class:`Placement` plus the set of virtuals whose ``sorry_server`` is in. The
backends (runtime/backends.py) turn that into IPVS :class:`~dataplane.reconcile.Overrides`
or XDP ``RealState`` and reconcile; nothing here knows which dataplane runs.

Rules, after piranha 0.8.6 (spec §4.5-§4.8) with its reload bugs fixed:

* A server nobody has checked yet is *unknown*: it keeps what the dataplane had when
  the daemon started (so a restart after SIGKILL drops no connection), and is out
  when there was nothing to adopt (nanny adds a server on its first good check). An
  adopted server that passes its first check keeps its weight while slow start
  climbs from below it: it was serving all along.
* Up: in, with the event's weight (slow start, load monitor) or the configured one.
* Down: out, or in with weight 0 when the virtual has ``quiesce_server = 1`` and the
  server has been in (existing connections stay, no new ones); as under nanny, a
  server that never passed a check is simply absent.
* ``sorry_server``: in when no server of its virtual is live (in with weight > 0),
  out as soon as one is.
* A checker task that crashed: with ``hard_shutdown = 1`` (the default) the whole
  director shuts down (lvsd removes every virtual service and exits); with 0 the
  server is frozen where it is and an operator must act ("manual action needed").
* Reload: state is kept per (virtual name, server name) as long as what is checked and
  forwarded to is the same (address, port, protocol, check settings); changed
  weights take effect at once, a changed server starts unknown (out until checked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType

from compiler.model import Config, RealServer, VirtualService
from dataplane.reconcile import SORRY_SERVER, Overrides

Key = tuple[str, str]  # (virtual name, server name)
# a change log longer than this plus four entries a server is replaced by a new one
_LOG_MAX = 4096


class Health(Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a real server stands in the dataplane: out, or in with a weight
    (0 = quiesced: existing connections only)."""

    present: bool
    weight: int = 0

    @property
    def live(self) -> bool:
        return self.present and self.weight > 0


OUT = Placement(False)


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the director knows about one real server (also what ``status`` shows)."""

    health: Health = Health.UNKNOWN
    weight: int | None = None  # from the last up event; None = configured
    reason: str = ""
    since: float | None = None  # ``now`` of the last change
    crashed: bool = False  # its checker died with hard_shutdown = 0: frozen
    was_in: bool = False  # has been in the dataplane: only such a server is quiesced
    # an adopted server's weight, kept while slow start ramps up below it
    floor: int | None = None


class ChangeLog:
    """The keys whose placement changed, in the order they changed, since the log was
    opened (a sorry server that goes in or out is ``(virtual, SORRY_SERVER)``).

    A backend that applied the decision at mark ``m`` of a log can apply a later
    decision of the same log by visiting only ``since(m)``: what it costs is then what
    changed, not the size of the config. A new log (after a reload, a shutdown, or
    when this one grew long) means "start from the whole decision again"."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def since(self, mark: int, until: int) -> set[Key]:
        return set(self.keys[mark:until])


@dataclass(frozen=True, slots=True)
class Desired:
    """The director's whole decision: one placement per active (virtual, server).

    ``log``/``mark``: where the decision stands in the director's :class:`ChangeLog`
    (None: no history, a backend must take it whole)."""

    config: Config
    placements: Mapping[Key, Placement]
    sorry: frozenset[str]
    log: ChangeLog | None = field(default=None, compare=False, repr=False)
    mark: int = field(default=0, compare=False, repr=False)

    def changed_since(self, before: Desired | None) -> set[Key] | None:
        """The keys whose placement may differ between ``before`` (a decision taken
        earlier from the same director) and this one; None when that is not known
        (another log, another config): then everything may have."""
        if (
            before is None
            or self.log is None
            or before.log is not self.log
            or before.config is not self.config
            or before.mark > self.mark
        ):
            return None
        return self.log.since(before.mark, self.mark)


class Verdict(Enum):
    """What a crashed checker means for the daemon."""

    SHUTDOWN = "shutdown"  # hard_shutdown = 1: remove our services and exit
    FROZEN = "frozen"  # hard_shutdown = 0: keep running, the server stays as it is


def servers(config: Config) -> Iterable[tuple[VirtualService, RealServer]]:
    """The (virtual, server) pairs the director manages: active ones in active virtuals."""
    for vs in config.active_virtuals:
        for rs in vs.servers:
            if rs.active:
                yield vs, rs


def _identity(config: Config, vs: VirtualService, rs: RealServer) -> tuple:
    """What must stay equal across a reload for a server to keep its health state."""
    return (
        vs.address,
        vs.protocol,
        vs.port,
        vs.fwmark,
        config.forwarding(vs),
        rs.address,
        rs.port,
        vs.send,
        vs.expect,
        vs.send_program,
        vs.use_regex,
    )


@dataclass
class Director:
    """The decision state of one running daemon. Mutated only by its methods."""

    config: Config
    adopted: Mapping[Key, Placement] = field(default_factory=dict)
    states: dict[Key, ServerState] = field(default_factory=dict)
    shut_down: bool = False

    def __post_init__(self) -> None:
        self.adopted = MappingProxyType(dict(self.adopted))
        self._index(self.config)
        for vs, rs in servers(self.config):
            self.states.setdefault((vs.name, rs.name), ServerState())
        self._recompute()

    def _recompute(self) -> None:
        """Every placement, live count and the sorry set from scratch, in a new
        :class:`ChangeLog` (start, reload)."""
        self._placements: dict[Key, Placement] = {k: self.placement(k) for k in self._servers}
        self._live = dict.fromkeys(self._virtuals, 0)
        for (virtual, _server), p in self._placements.items():
            if p.live:
                self._live[virtual] += 1
        self._log = ChangeLog()

    def _changed(self, key: Key) -> bool:
        """Re-derive ``key``'s placement after its state changed; keep the live count
        per virtual (for the sorry server) and the change log. True if it moved."""
        new, old = self.placement(key), self._placements[key]
        if new == old:
            return False
        self._placements[key] = new
        virtual = key[0]
        self._log.keys.append(key)
        if new.live != old.live:
            before = self._live[virtual]
            self._live[virtual] = after = before + (1 if new.live else -1)
            if (before == 0 or after == 0) and self._virtuals[virtual].sorry_server is not None:
                self._log.keys.append((virtual, SORRY_SERVER))
        return True

    def _index(self, config: Config) -> None:
        self._virtuals = {vs.name: vs for vs in config.active_virtuals}
        self._servers = {(vs.name, rs.name): (vs, rs) for vs, rs in servers(config)}
        self._ids = {k: _identity(config, vs, rs) for k, (vs, rs) in self._servers.items()}

    # ------------------------------------------------------------------ inputs

    def server_event(
        self, virtual: str, server: str, up: bool, weight: int | None, reason: str, now: float
    ) -> bool:
        """A health verdict for one server; True if the desired state changed.

        Events for servers the current config does not manage (a check that finished
        just after a reload removed it) are ignored.
        """
        key = (virtual, server)
        old = self.states.get(key)
        if old is None or old.crashed or self.shut_down:
            return False
        before = self._placements[key]
        health = Health.UP if up else Health.DOWN
        if old.health is not health or old.weight != weight or old.reason != reason:
            since = now if old.health is not health else old.since
            was_in = old.was_in or up or before.present
            floor = None
            if up and old.health is Health.UNKNOWN and before.live:
                floor = before.weight  # adopted and serving: no slow start from scratch
            elif up and old.floor is not None:
                floor = old.floor
            if floor is not None and (weight is None or weight >= floor):
                floor = None  # the ramp has caught up
            self.states[key] = ServerState(
                health, weight if up else None, reason, since, was_in=was_in, floor=floor
            )
            return self._changed(key)
        return False

    def checker_crashed(self, virtual: str, server: str, reason: str, now: float) -> Verdict:
        """A checker task died: piranha's ``hard_shutdown`` decides (spec §4.5)."""
        if self.config.hard_shutdown:
            self.shut_down = True
            return Verdict.SHUTDOWN
        key = (virtual, server)
        if key in self.states:
            st = self.states[key]
            # frozen where it is: an unknown server keeps what it would have had
            frozen = self.placement(key)
            self.adopted = MappingProxyType({**self.adopted, key: frozen})
            self.states[key] = replace(
                st, health=Health.UNKNOWN, crashed=True, reason=f"checker died: {reason}", since=now
            )
            self._changed(key)  # no move (frozen where it was), but keep it exact
        return Verdict.FROZEN

    def reload(self, config: Config) -> None:
        """Take a new (already compiled and checked) config; keep what still applies."""
        old_ids = self._ids
        self.config = config
        self._index(config)
        states: dict[Key, ServerState] = {}
        for key, ident in self._ids.items():
            st = self.states.get(key)
            if st is not None and old_ids.get(key) == ident:
                states[key] = st
            else:
                states[key] = ServerState()
        self.states = states
        # adoption is only about what the daemon found at start; a changed server
        # starts from scratch rather than from the old one's placement
        self.adopted = MappingProxyType(
            {k: p for k, p in self.adopted.items() if old_ids.get(k) == self._ids.get(k)}
        )
        self._recompute()

    # ------------------------------------------------------------------ outputs

    def placement(self, key: Key) -> Placement:
        vs, rs = self._servers[key]
        st = self.states[key]
        if st.health is Health.UP:
            weight = rs.weight if st.weight is None else st.weight
            return Placement(True, weight if st.floor is None else max(weight, st.floor))
        if st.health is Health.DOWN:
            return Placement(True, 0) if vs.quiesce_server and st.was_in else OUT
        return self.adopted.get(key, OUT)

    def sorry(self) -> frozenset[str]:
        """Virtuals whose sorry server should be in: no server of theirs is live."""
        return frozenset(
            vs.name
            for vs in self._virtuals.values()
            if vs.sorry_server is not None and not self._live[vs.name]
        )

    def desired(self) -> Desired:
        """The whole decision now (a copy: later events do not change it), with its
        place in the change log so that a backend can apply only what changed since
        the decision it applied last."""
        if self.shut_down:
            return Desired(replace(self.config, virtuals=()), MappingProxyType({}), frozenset())
        log = self._log
        if len(log.keys) > _LOG_MAX + 4 * len(self._placements):
            log = self._log = ChangeLog()  # backends take the next decision whole
        placements = MappingProxyType(dict(self._placements))
        return Desired(self.config, placements, self.sorry(), log, len(log.keys))

    def health(self, key: Key) -> Health | None:
        st = self.states.get(key)
        return None if st is None else st.health

    def server(self, key: Key) -> tuple[VirtualService, RealServer]:
        return self._servers[key]

    def managed(self) -> tuple[Key, ...]:
        return tuple(self._servers)


# --------------------------------------------------------------------------- to IPVS


def overrides(desired: Desired) -> Overrides:
    """The IPVS reconcile's :class:`~dataplane.reconcile.Overrides` for ``desired``."""
    down, quiesced, weights = set(), set(), {}
    servers_by_key = {(vs.name, rs.name): rs for vs, rs in servers(desired.config)}
    for key, p in desired.placements.items():
        rs = servers_by_key[key]
        if not p.present:
            down.add(key)
        elif p.weight == 0 and rs.weight != 0:
            quiesced.add(key)
        elif p.weight != rs.weight:
            weights[key] = p.weight
    return Overrides(
        down=frozenset(down),
        quiesced=frozenset(quiesced),
        weights=MappingProxyType(weights),
        sorry=desired.sorry,
    )


# --------------------------------------------------------------------------- to XDP


def with_sorry_servers(config: Config) -> Config:
    """``config`` with each virtual's ``sorry_server`` as one more real server (weight 1,
    the virtual's port), so that the XDP plan gives it a real index and a MAC; it is
    kept *failed* (out of the Maglev table) unless :meth:`Director.sorry` says in."""
    virtuals = []
    for vs in config.virtuals:
        if vs.active and vs.sorry_server is not None:
            where = vs.spans.get("sorry_server", vs.span)  # its errors point at that line
            sorry = RealServer(
                name=SORRY_SERVER,
                address=vs.sorry_server,
                active=True,
                weight=1,
                port=vs.port,
                span=where,
                spans={"address": where} if where else {},
            )
            vs = replace(vs, servers=(*vs.servers, sorry))
        virtuals.append(vs)
    return replace(config, virtuals=tuple(virtuals))


@dataclass(frozen=True, slots=True)
class XdpReal:
    """One XDP real index's run-time state: failed (out), or a weight (0 = quiesced)."""

    failed: bool
    weight: int | None


class XdpLayout:
    """Where the director's servers land in one XDP plan (a
    :class:`~dataplane.plan.Plan` of :func:`with_sorry_servers` of the config): each
    (virtual, server) -> its real index, and each real index -> the one server whose
    placement it carries. Built once per (config, plan): the daemon asks on every
    apply, and at 10,000 servers building it was half of an apply's cost."""

    def __init__(self, config: Config, plan) -> None:
        self.config, self.plan = config, plan
        self.index: Mapping[Key, int] = MappingProxyType(_build_xdp_index(config, plan))
        owner: dict[int, Key] = {}
        for key, index in self.index.items():
            owner.setdefault(index, key)  # shared real: the first server counts (as IPVS)
        self.owner: Mapping[int, Key] = MappingProxyType(owner)

    def state(self, desired: Desired, index: int) -> XdpReal | None:
        """The state of real ``index`` in ``desired`` (None: no server of the
        config's is there)."""
        key = self.owner.get(index)
        if key is None:
            return None
        virtual, server = key
        if server == SORRY_SERVER:
            return XdpReal(virtual not in desired.sorry, None)
        p = desired.placements.get(key, OUT)
        return XdpReal(not p.present, p.weight if p.present else None)

    def touched(self, keys: Iterable[Key]) -> set[int]:
        """The real indexes whose state may change when ``keys`` changed."""
        index = self.index
        return {index[k] for k in keys if k in index}


# The last layout built: a daemon runs one (config, plan) at a time.
_layout_memo: XdpLayout | None = None


def xdp_layout(config: Config, plan) -> XdpLayout:
    """The :class:`XdpLayout` of (config, plan), memoised for the last pair by
    identity (both are immutable)."""
    global _layout_memo
    memo = _layout_memo
    if memo is None or memo.config is not config or memo.plan is not plan:
        memo = _layout_memo = XdpLayout(config, plan)
    return memo


def xdp_index(config: Config, plan) -> Mapping[Key, int]:
    """(virtual, server) -> real index in ``plan`` (see :class:`XdpLayout`); sorry
    servers appear as (virtual, ``SORRY_SERVER``). Servers the plan merged into one
    real (same address and port in one service) all map to it. Read-only, memoised."""
    return xdp_layout(config, plan).index


def _build_xdp_index(config: Config, plan) -> dict[Key, int]:
    from compiler.model import Network
    from dataplane.plan import PROTO, real_port

    by_service = {(s.vip, s.port, s.proto): s for s in plan.services}
    out: dict[Key, int] = {}
    for vs in with_sorry_servers(config).active_virtuals:
        port = 0 if vs.is_fwmark else vs.port
        svc = by_service.get((vs.address, port, PROTO[vs.protocol]))
        if svc is None:
            continue
        reals = {r.key: r for r in svc.reals}
        nat = svc.method is Network.NAT
        for rs in vs.servers:
            real = reals.get(f"{rs.address}:{real_port(nat, port, vs.port, rs.port)}")
            if rs.active and real is not None:
                out[(vs.name, rs.name)] = real.index
    return out


def xdp_states(desired: Desired, plan) -> dict[int, XdpReal]:
    """Real index -> state for ``plan`` (see :class:`XdpLayout`). Where several
    servers share one real, the first one's placement counts, as IPVS keeps the first
    destination."""
    layout = xdp_layout(desired.config, plan)
    out: dict[int, XdpReal] = {}
    for index in layout.owner:
        st = layout.state(desired, index)
        if st is not None:
            out[index] = st
    return out
