"""Thin adapters from the director's decisions to a dataplane: IPVS or XDP.

Both have the same small surface, which is all the daemon uses:

* ``load(config)``: take a config (at start and on reload); raises
  :class:`BackendError` with the lvs.cf position when the dataplane cannot serve it,
  *before* anything is changed, so a bad reload leaves the old config in force;
* ``adopt(config)``: what the dataplane already holds, as director placements (a
  restarted daemon keeps serving without dropping a connection);
* ``apply(desired)``: make the dataplane hold the director's decision (a diff, never a
  flush); returns a short description of each change;
* ``tick()``: periodic upkeep (XDP: follow the neighbour table; IPVS: nothing);
* ``counters(config)``: packets/bytes/connections per virtual and per real server;
* ``remove()``: delete our services (``--on-stop remove``); ``close()``: release
  resources and leave the dataplane as it is.

IPVS has one more: the connection-sync daemon's role (``syncdaemon = 1``), which pulse
decides — master on the active router, backup on the standby (spec §3.5 step 3):
``sync_role`` is the role every sync asks for, ``switch_sync_role(role)`` changes it
now. The XDP dataplane has no sync daemon (both routers build the same Maglev tables).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from compiler.model import Config
from compiler.source import Span

from .director import (
    OUT,
    Desired,
    Key,
    Placement,
    XdpLayout,
    overrides,
    servers,
    with_sorry_servers,
    xdp_index,
    xdp_layout,
)
from .neighbours import Address, address_order

log = logging.getLogger("lvs-router")


class BackendError(Exception):
    """The dataplane cannot serve a config (or refused a change)."""

    def __init__(self, message: str, span: Span | None = None, help: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.help = help

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        out = f"{where}error: {self.message}"
        if self.help:
            out += f"\n  = help: {self.help}"
        return out


@dataclass(frozen=True, slots=True)
class Counters:
    """Traffic of one virtual or real server as the dataplane counts it."""

    packets: int = 0
    bytes: int = 0
    connections: int = 0  # IPVS: connections scheduled; XDP: new flows
    active: int | None = None  # IPVS only: active connections now


class Backend(Protocol):
    name: str

    def load(self, config: Config) -> None: ...
    def adopt(self, config: Config) -> dict[Key, Placement]: ...
    def apply(self, desired: Desired) -> list[str]: ...
    def tick(self) -> list[str]: ...
    def counters(self, config: Config) -> dict[tuple[str, str | None], Counters]: ...
    def remove(self) -> list[str]: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- IPVS


class IpvsBackend:
    """The kernel's IPVS table through :class:`dataplane.ipvs.Reconciler`."""

    name = "ipvs"

    def __init__(self) -> None:
        from dataplane.ipvs import IPVSError, IPVSKernel, Reconciler

        try:
            self._kernel = IPVSKernel()
        except IPVSError as err:
            raise BackendError(
                str(err), help="load the ip_vs module, or use --dataplane xdp"
            ) from err
        self._rec = Reconciler(self._kernel)
        self._table = None  # DesiredTable of the config in force
        self._dests: tuple[Config | None, dict] = (None, {})
        self._config: Config | None = None  # the config of the last load
        self._synced = None  # the IPVSState last synced (services kept as they are)
        # the sync daemon's role: master without pulse (lvsd alone), pulse's otherwise
        self.sync_role = sync_state("master")

    def load(self, config: Config) -> None:
        from compiler.emit import EmitError
        from dataplane.reconcile import DesiredTable

        try:  # the whole table once (this also refuses what IPVS cannot hold)
            self._table = DesiredTable(config)
        except EmitError as err:
            raise BackendError(err.message, err.span, err.help) from err
        self._config = config

    def _dest_keys(self, config: Config) -> dict:
        """(virtual, server) -> (service key, destination key), once per config."""
        held, keys = self._dests
        if held is not config:
            keys = {(vs.name, rs.name): ipvs_dest_of(config, vs, rs) for vs, rs in servers(config)}
            self._dests = (config, keys)
        return keys

    def adopt(self, config: Config) -> dict[Key, Placement]:
        return ipvs_placements(config, self._rec.adopt(), self._dest_keys(config))

    def apply(self, desired: Desired) -> list[str]:
        from dataplane.ipvs import IPVSError
        from dataplane.reconcile import DesiredTable

        if self._table is None or self._table.config is not desired.config:
            self._table = DesiredTable(desired.config)
        # only the services of virtuals whose overrides changed are rebuilt and diffed
        state = with_sync_role(self._table.state(overrides(desired)), self.sync_role)
        try:
            ops = self._rec.sync(state)
        except IPVSError as err:
            raise BackendError(f"IPVS refused a change: {err}") from err
        self._synced = state
        return [f"ipvsadm {op}" for op in ops]

    def switch_sync_role(self, role) -> list[str]:
        """Make the sync daemon run in ``role`` (a ``SyncState``) now, and in every
        later sync; the table is left exactly as it is (a cold standby keeps what it
        holds). Nothing to do without ``syncdaemon = 1`` in the config loaded."""
        from dataplane.ipvs import IPVSError

        self.sync_role = role
        config = self._config
        if config is None or not config.syncdaemon:
            return []
        base = self._synced
        try:
            if base is None:  # nothing synced yet (cold standby): the kernel's table
                base = replace(self._rec.adopt(), timeouts=None)
            state = replace(base, daemons=sync_daemons(config, role))
            ops = self._rec.sync(state)
        except IPVSError as err:
            raise BackendError(f"IPVS refused the sync daemon's role: {err}") from err
        if self._synced is not None:
            self._synced = state
        return [f"ipvsadm {op}" for op in ops]

    def tick(self) -> list[str]:
        return []

    def verify(self) -> list[str]:
        return [f"ipvsadm {op} (repair)" for op in self._rec.verify()]

    def counters(self, config: Config) -> dict[tuple[str, str | None], Counters]:
        from dataplane.ipvs import Stats

        seen = self._kernel.read()
        out: dict[tuple[str, str | None], Counters] = {}
        keys = self._dest_keys(config)
        for vs, rs in servers(config):
            skey, dkey = keys[(vs.name, rs.name)]
            st = seen.stats.get((skey, dkey))
            if st is not None:
                out[(vs.name, rs.name)] = _ipvs_counters(st)
            vst = seen.stats.get(skey, Stats())
            out.setdefault((vs.name, None), _ipvs_counters(vst))
        return out

    def remove(self) -> list[str]:
        from dataplane.reconcile import IPVSState

        self._synced = None  # a later role switch must not bring the services back
        return [f"ipvsadm {op}" for op in self._rec.sync(IPVSState())]

    def close(self) -> None:
        self._kernel.close()


def sync_state(role: str):
    """pulse's role word (``SyncRole.role``: "master" | "backup") as the kernel's
    ``SyncState``; anything else is a bug, not a role."""
    from dataplane.reconcile import SyncState

    return {"master": SyncState.MASTER, "backup": SyncState.BACKUP}[role]


def sync_daemons(config: Config, role) -> tuple | None:
    """The sync daemons a router in ``role`` runs: one, with ``syncd_iface`` and
    ``syncd_id`` (low byte, as piranha's ``--syncid``), when ``syncdaemon = 1``;
    ``None`` (not managed) otherwise."""
    from dataplane.reconcile import SyncDaemon

    if not config.syncdaemon:
        return None
    return (SyncDaemon(role, config.syncd_iface, config.syncd_id & 0xFF),)


def with_sync_role(state, role):
    """``state`` (an ``IPVSState``) with its sync daemons in ``role``; the services
    are the same objects (the incremental diff still sees them unchanged)."""
    if not state.daemons:
        return state
    daemons = tuple(replace(d, state=role) for d in state.daemons)
    return state if daemons == state.daemons else replace(state, daemons=daemons)


def ipvs_dest_of(config: Config, vs, rs) -> tuple[tuple, tuple]:
    """(service key, destination key) that a server becomes in the IPVS table (in
    direct routing the kernel keeps the service's port, whatever the server's)."""
    from compiler.emit.ipvsadm import table
    from dataplane.reconcile import dest_key, service_key

    one = replace(config, virtuals=(replace(vs, servers=(replace(rs, active=True),)),))
    (svc,) = table(one)
    return service_key(svc), dest_key(svc.destinations[0])


def ipvs_placements(config: Config, state, keys: dict | None = None) -> dict[Key, Placement]:
    """What an IPVS table (:class:`~dataplane.reconcile.IPVSState`) already holds for the
    config's servers, as director placements: the start of adoption. ``keys``: the
    servers' (service key, destination key), if already known."""
    from dataplane.reconcile import dest_key, service_key

    held = {(service_key(s), dest_key(d)): d.weight for s in state.services for d in s.destinations}
    out: dict[Key, Placement] = {}
    for vs, rs in servers(config):
        where = keys[(vs.name, rs.name)] if keys else ipvs_dest_of(config, vs, rs)
        weight = held.get(where)
        if weight is not None:
            out[(vs.name, rs.name)] = Placement(True, weight)
    return out


def _ipvs_counters(st) -> Counters:
    return Counters(
        packets=st.inpkts + st.outpkts,
        bytes=st.inbytes + st.outbytes,
        connections=st.conns,
        active=getattr(st, "active_conns", None),
    )


# --------------------------------------------------------------------------- XDP


def interface_mac(ifname: str) -> bytes:
    """An interface's own MAC, asked of the kernel in our network namespace (sysfs
    may be mounted for another one, as under ``nsenter --net``)."""
    import fcntl
    import struct

    siocgifhwaddr = 0x8927
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = fcntl.ioctl(s.fileno(), siocgifhwaddr, struct.pack("256s", ifname.encode()[:15]))
    return info[18:24]


def uses_nat(plan) -> bool:
    """Whether a plan has NAT services (IPv4 or IPv6: asked of the services, not of
    the program's feature names)."""
    from compiler.model import Network

    return any(s.method is Network.NAT for s in plan.services)


class XdpBackend:
    """Our XDP program (dataplane/xdp.py) on one interface, with pinned maps.

    A new config compiles a new program that reuses the pinned maps (tracked flows,
    persistence templates, counters) and replaces the attached one atomically.
    """

    name = "xdp"

    def __init__(
        self,
        interface: str,
        *,
        pin_dir: str | None = None,
        mode: str = "native",
        static_macs: Mapping[Address, bytes] | None = None,
        nat_interface: str | None = None,
    ) -> None:
        from dataplane.bpf.render import PIN_DIR

        from .neighbours import Neighbours

        self.interface = interface
        self.nat_interface = nat_interface  # network = nat: towards the real servers
        self.pin_dir = pin_dir or PIN_DIR
        self.mode = mode
        self.neighbours = Neighbours(static_macs)
        self._dp = None  # the attached XdpDataplane
        self._pending = None  # a loaded, not yet attached one
        self._desired: Desired | None = None
        self._macs: dict[Address, bytes] = {}
        self.attached_mode: str | None = None
        self.nat_mode: str | None = None  # the reply path's, once attached
        self._removed = False  # after remove(): the maps are left alone
        # what the last successful apply gave the dataplane: the decision, to which
        # program, and every real's state (an incremental apply changes a few)
        self._applied: tuple[Desired, object] | None = None
        self._states: dict = {}  # real index -> dataplane.xdp.RealState
        self._wire_macs: dict[Address, bytes] = {}  # what sync got: zeros where none
        self._layout: tuple[object, list[Address], dict[int, Address], bool] = (
            None,
            [],
            {},
            False,
        )

    def plan(self, config: Config):
        """The XDP plan of ``config`` (pure: nothing is loaded), or :class:`BackendError`
        at the lvs.cf line the dataplane cannot serve. IPv6 virtuals are taken (the
        program gets feature ``ipv6`` only when there is one); what the IPv6 path does
        not serve yet, plan() refuses at its line."""
        from dataplane.plan import PlanError, plan

        try:
            p = plan(with_sorry_servers(config), ipv6=True)
        except PlanError as err:
            raise BackendError(err.message, err.span, err.help) from err
        if uses_nat(p) and not self.nat_interface:
            # NAT needs the reply path on the interface towards the real servers: say
            # so instead of loading a program that drops every NAT packet
            from compiler.model import Network

            nat = [v for v in config.active_virtuals if config.forwarding(v) is Network.NAT]
            vs = nat[0] if nat else config.active_virtuals[0]
            span = vs.spans.get("network") or config.spans.get("network")
            raise BackendError(
                f"virtual {vs.name}: NAT forwarding on the XDP dataplane needs the "
                "interface towards the real servers",
                span,
                "pass `--nat-interface IF` (the private side, where nat_router is), or use "
                "`--dataplane ipvs`",
            )
        return p

    def _attach_nat(self, dp) -> str | None:
        """network = nat: where NAT frames go (both interfaces' indexes and MACs, read
        in our own network namespace), each real's port, then the reply path on the
        private interface -- before the requests' program, so that no request is
        redirected to a real server whose reply nothing would translate back."""
        if not uses_nat(dp.plan) or not self.nat_interface:
            return None
        dp.configure_nat(
            private_ifindex=socket.if_nametoindex(self.nat_interface),
            public_ifindex=socket.if_nametoindex(self.interface),
            private_mac=interface_mac(self.nat_interface),
            public_mac=interface_mac(self.interface),
        )
        return dp.attach_nat(self.nat_interface, self.mode)

    def load(self, config: Config) -> None:
        from dataplane.xdp import XdpDataplane

        p = self.plan(config)
        if self._dp is not None and self._pending is None and p == self._dp.plan:
            return  # nothing the program or its maps' layout depend on changed
        try:
            self._pending = XdpDataplane(p, pin_dir=self.pin_dir)
        except Exception as err:  # bcc compile/load failure
            raise BackendError(f"cannot load the XDP program: {err}") from err
        for replaced in getattr(self._pending, "replaced", ()):
            log.warning("pinned map replaced (its size changed): %s", replaced)

    def _current(self):
        return self._pending or self._dp

    def adopt(self, config: Config) -> dict[Key, Placement]:
        from dataplane.maps import addr_word
        from dataplane.plan import REAL_F_FAILED, REAL_F_QUIESCED

        dp = self._current()
        out: dict[Key, Placement] = {}
        reals = {r.index: r for r in dp.plan.reals}
        for key, index in xdp_index(config, dp.plan).items():
            entry = dp.maps.real(index)
            # reals[i].addr: the IPv4 address, or a tag of the IPv6 one (maps.addr_word)
            if (
                dp.maps.real_word(index) != addr_word(reals[index].address)
                or entry.flags & REAL_F_FAILED
            ):
                continue  # nothing there for this server, or it was out
            weight = 0 if entry.flags & REAL_F_QUIESCED else reals[index].weight
            out[key] = Placement(True, weight)
        return out

    def _plan_layout(self, plan) -> tuple[object, list[Address], dict[int, Address], bool]:
        """Once per plan: its sorted real-server addresses, each real's address, and
        whether every address has a static MAC (then there is no neighbour table to
        follow)."""
        if self._layout[0] is not plan:
            reals = plan.reals
            addresses = sorted({r.address for r in reals}, key=address_order)
            static = all(a in self.neighbours.static for a in addresses)
            self._layout = (plan, addresses, {r.index: r.address for r in reals}, static)
        return self._layout

    def _state(self, layout: XdpLayout, desired: Desired, index: int, address: Address):
        from dataplane.xdp import RealState

        if address not in self._macs:  # no MAC yet: cannot forward there, keep it out
            return RealState(failed=True)
        st = layout.state(desired, index)
        return RealState() if st is None else RealState(failed=st.failed, weight=st.weight)

    def apply(self, desired: Desired) -> list[str]:
        """Make the maps hold ``desired``. When the last apply went to the same
        program and ``desired`` comes from the same director history, only the reals
        of the servers whose placement changed since (and their services' tables) are
        visited; otherwise (start, reload, a new program, a failed apply) the whole
        decision, with the neighbour table re-read."""
        self._desired = desired
        if self._removed:
            return []
        dp = self._current()
        layout = xdp_layout(desired.config, dp.plan)
        applied, self._applied = self._applied, None
        changed = None
        if applied is not None and applied[1] is dp:
            changed = desired.changed_since(applied[0])
        changes = []
        _plan, addresses, address_of, _static = self._plan_layout(dp.plan)
        if changed is None:
            self._macs = self.neighbours.refresh(addresses)
            states = {}
            missing: dict[Address, list[str]] = {}
            for r in dp.plan.reals:
                states[r.index] = self._state(layout, desired, r.index, r.address)
                if r.address not in self._macs:
                    missing.setdefault(r.address, []).append(r.name)
            for addr, names in missing.items():
                changes.append(f"no MAC for {addr} yet, kept out: {', '.join(sorted(set(names)))}")
            self._wire_macs = {a: self._macs.get(a, b"\0" * 6) for a in addresses}
            self._states = states
            touched = None
        else:
            touched = layout.touched(changed)
            for index in touched:
                self._states[index] = self._state(layout, desired, index, address_of[index])
        try:
            dp.sync(self._wire_macs, self._states, touched=touched)
        except OSError as err:  # the next apply syncs the whole decision again
            raise BackendError(f"the XDP maps refused a write: {err}") from err
        if self._pending is not None:
            old, self._dp, self._pending = self._dp, self._pending, None
            try:
                nat_mode = self._attach_nat(self._dp)
                self.attached_mode = self._dp.attach(self.interface, self.mode)
                self._dp.pin_program()
            except Exception as err:
                raise BackendError(f"cannot attach XDP to {self.interface}: {err}") from err
            if nat_mode is not None:
                self.nat_mode = nat_mode
                changes.append(f"XDP NAT reply path attached to {self.nat_interface} ({nat_mode})")
            changes.append(f"XDP program attached to {self.interface} ({self.attached_mode})")
            if old is not None:
                old.close()
        self._applied = (desired, dp)
        return changes

    def kept_out(self) -> set[Address]:
        """Real-server addresses the maps hold out of service for want of a MAC (their
        servers are not in the dataplane, whatever the decision says)."""
        if self._dp is None:
            return set()
        _plan, addresses, _address_of, _static = self._plan_layout(self._dp.plan)
        return {a for a in addresses if a not in self._macs}

    def tick(self) -> list[str]:
        """Follow the neighbour table: a changed or newly learned MAC re-syncs the maps
        (whole: rare). Nothing to read when every real has a static MAC."""
        if self._desired is None or self._dp is None or self._removed:
            return []
        _plan, addresses, _address_of, static = self._plan_layout(self._dp.plan)
        if static or self.neighbours.refresh(addresses) == self._macs:
            return []
        from .neighbours import format_mac

        old = self._macs
        self._applied = None  # the MACs changed under every real of those addresses
        changes = self.apply(self._desired)
        for a in addresses:
            if a in self._macs and old.get(a) != self._macs[a]:
                changes.append(f"MAC of {a} is now {format_mac(self._macs[a])}")
        return changes

    def counters(self, config: Config) -> dict[tuple[str, str | None], Counters]:
        dp = self._dp
        if dp is None:
            return {}
        out: dict[tuple[str, str | None], Counters] = {}
        for svc in dp.plan.services:
            c = dp.maps.service_counters(svc.index)
            out[(svc.name, None)] = Counters(c.packets, c.bytes, c.new_flows)
        for key, index in xdp_index(config, dp.plan).items():
            c = dp.maps.real_counters(index)
            out[key] = Counters(c.packets, c.bytes, c.new_flows)
        return out

    def remove(self) -> list[str]:
        """Detach the program and clear our services from the maps."""
        from dataplane.xdp import XdpDataplane

        if self._dp is None or self._removed:
            return []
        self._removed = True
        XdpDataplane.detach(self.interface, self.attached_mode or "native")
        if self.nat_mode is not None and self.nat_interface:
            XdpDataplane.detach(self.nat_interface, self.nat_mode)
        m = self._dp.maps
        for key in m.services():
            m.delete_service(*key)
        for vip, proto in m.vips():
            m.delete_vip(vip, proto)
        for key in m.services6():  # none unless the program has the IPv6 path
            m.delete_service6(*key)
        for vip in m.vips6():
            m.delete_vip6(vip)
        if self.nat_mode is not None:
            return [
                f"XDP programs detached from {self.interface} and {self.nat_interface}, "
                "services removed"
            ]
        return [f"XDP program detached from {self.interface}, services removed"]

    def close(self) -> None:
        for dp in (self._dp, self._pending):
            if dp is not None:
                dp.close()
        self.neighbours.close()


__all__ = ["OUT", "Backend", "BackendError", "Counters", "IpvsBackend", "XdpBackend"]
