"""The XDP dataplane's loader: compile once with bcc, write the maps from a plan,
attach, pin, adopt.

* :class:`XdpDataplane` compiles the program rendered from a
  :class:`~dataplane.plan.Plan` (one ``BPF()``, 0.5-3 s); its maps are pinned under
  ``pin_dir`` (default ``/sys/fs/bpf/lvs-router``), so a new program or a restarted
  daemon reuses them: tracked flows, persistence templates and counters survive.
* :meth:`XdpDataplane.sync` writes the desired state: real servers (address, next-hop
  MAC, failed/quiesced flags), Maglev tables (only the slots that change, in
  batches), services and VIPs, in an order where no packet sees a service whose
  table is not written yet.
* :meth:`XdpDataplane.attach` attaches in native mode, or generic mode when native is
  refused and ``mode="auto"`` (with a warning); attaching over a running program
  replaces it atomically (one netlink operation), so a config change drops nothing.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np

from . import maglev
from .bpf.render import PIN_DIR, render
from .libbpf import map_info, map_items, map_update, obj_get, obj_pin
from .maps import (
    CT_TABLES,
    CT_TABLES6,
    HASH,
    LAYOUTS6,
    LAYOUTS_NAT6,
    LRU_HASH,
    LbMaps,
    MapShape,
    Real,
    addr_word,
    shapes,
)
from .plan import REAL_F_FAILED, REAL_F_QUIESCED, Plan, ServicePlan

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
PROGRAM = "lb_ingress"
NAT_PROGRAM = "lb_nat_return"  # network = nat: the replies, on the private interface
# outer source of IPIP packets: 172.16.0.0/16 with the low 16 bits from the flow hash
TUNNEL_SOURCE = IPv4Address("172.16.0.0")


@dataclass(frozen=True, slots=True)
class RealState:
    """Run-time state of one real server (from health checks): ``failed`` takes it
    out and reschedules its flows; ``weight`` overrides the configured weight
    (0 = quiesced: no new flows, existing ones stay)."""

    failed: bool = False
    weight: int | None = None


log = logging.getLogger(__name__)
_HEALTHY = RealState()
# a table is a function of (members at their configured weights, positions taken out)
_TableKey = tuple[tuple[maglev.Member, ...], frozenset[int]]
# maglev.without results kept per service (one ring's positions each: 4 bytes a
# slot): the written table's and the one before, so that a server going down and
# back up (or flapping) costs its table once
_POSITIONS_KEPT = 2
# from this many real entries to write at once, one batched update (see _write_reals)
_BATCH_REALS = 64
# what a map holds, for the warning when a resized map is replaced
_CONTENT = {
    "conntrack": "tracked flows",
    "persist": "persistence templates",
    "service_stats": "per-service counters",
    "real_stats": "per-real-server counters",
    "global_stats": "global counters",
    "conntrack6": "IPv6 tracked flows",
    "persist6": "IPv6 persistence templates",
    "nat_rev6": "IPv6 NAT reply keys",
}


@dataclass(frozen=True, slots=True)
class ReplacedMap:
    """A pinned map whose shape did not fit the new program (a size in lvs.cf or
    :class:`~dataplane.plan.Sizes` changed): unpinned and created anew. ``copied``
    entries of a hash map were carried over (None: not copyable, contents lost)."""

    name: str
    old: MapShape
    new: MapShape
    copied: int | None


class MissingMac(ValueError):
    def __init__(self, addresses: list[IPv4Address]):
        self.addresses = addresses
        super().__init__("no MAC address for real server(s) " + ", ".join(map(str, addresses)))


def _bcc():
    from bcc import BPF  # Debian's python3-bpfcc; imported only when loading

    return BPF


def attach_xdp(fn: object, ifname: str, mode: str = "native") -> str:
    """Attach the bcc function ``fn`` to ``ifname`` in ``mode`` (native, generic, or
    auto: native, else generic with a warning), replacing any program there in one
    netlink operation; returns the mode used."""
    BPF = _bcc()
    if mode == "generic":
        BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_SKB_MODE)
        return "generic"
    try:
        BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_DRV_MODE)
        return "native"
    except Exception as err:
        if mode != "auto":
            raise
        warnings.warn(
            f"{ifname}: native XDP refused ({err}); running in generic mode, which is much slower",
            RuntimeWarning,
            stacklevel=3,
        )
        BPF.attach_xdp(ifname.encode(), fn, XDP_FLAGS_SKB_MODE)
        return "generic"


def kernel_hz() -> int:
    """The running kernel's CONFIG_HZ (jiffies per second: NAT's clock), from
    /proc/config.gz or /boot/config-RELEASE, else measured from /proc/timer_list."""
    import gzip
    import re
    import time

    for path, opener in (
        ("/proc/config.gz", gzip.open),
        (f"/boot/config-{os.uname().release}", open),
    ):
        try:
            with opener(path, "rt") as f:
                found = re.search(r"^CONFIG_HZ=(\d+)$", f.read(), re.M)
        except OSError:
            continue
        if found:
            return int(found.group(1))

    def sample() -> tuple[int, int]:
        text = Path("/proc/timer_list").read_text()
        now = re.search(r"now at (\d+) nsecs", text)
        jiffies = re.search(r"jiffies: (\d+)", text)
        if not (now and jiffies):
            raise RuntimeError("cannot tell the kernel's HZ (no config, no timer_list)")
        return int(now.group(1)), int(jiffies.group(1))

    t0, j0 = sample()
    time.sleep(0.2)
    t1, j1 = sample()
    measured = (j1 - j0) * 1e9 / (t1 - t0)
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - measured))


def detach_xdp(ifname: str, mode: str = "native") -> None:
    flags = XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE
    _bcc().remove_xdp(ifname.encode(), flags)


class XdpDataplane:
    def __init__(
        self,
        plan: Plan,
        *,
        pin_dir: str | None = PIN_DIR,
        source: str | None = None,
        features: frozenset[str] | None = None,
        replace_misfits: bool = True,
    ):
        """``replace_misfits=False`` is for readers (``lvs-router show``): pinned
        maps are adopted whatever their shape, never replaced."""
        self.plan = plan
        self.pin_dir = pin_dir
        built = plan.features if features is None else features
        self._ipv6 = "ipv6" in built
        self._nat6 = self._ipv6 and "nat" in built  # nat6.h and its map nat_rev6
        old: dict[str, tuple[int, MapShape]] = {}
        if pin_dir:
            os.makedirs(pin_dir, exist_ok=True)
            if replace_misfits:
                old = self._unpin_misfits(pin_dir)
        self.text = render(plan, pin_dir=pin_dir, source=source, features=features)
        BPF = _bcc()
        try:
            self.bpf = BPF(text=self.text.encode())
            self.fn = self.bpf.load_func(PROGRAM.encode(), BPF.XDP)
            self.maps = LbMaps(self.bpf, plan.sizes, ipv6=self._ipv6, nat6=self._nat6)
            self.replaced = self._carry_over(old)
        finally:
            for fd, _shape in old.values():
                os.close(fd)
        # What this process last wrote, so that a sync costs what changed, not the
        # size of the config (the daemon syncs after every health event):
        self._written: dict[int, np.ndarray] = {}  # service index -> real ids written
        self._written_from: dict[int, _TableKey] = {}  # ... and what they came from
        self._reals: dict[int, tuple[IPv4Address, bytes, int]] = {}  # index -> entry
        self._weights: dict[int, int] = {}  # index -> weight written (lc family only)
        self._globals: tuple[IPv4Address, int] | None = None
        self._bases: dict[tuple, np.ndarray] = {}
        self._positions: dict[int, dict[_TableKey, np.ndarray]] = {}  # maglev.without
        self._ids: dict[int, np.ndarray] = {}  # service index -> position -> real index
        self._stale_cleared = False
        self._services_synced = False  # services and VIPs depend on the plan only
        self._writes_seen: int | None = None  # maps.writes after our last sync
        self._macs: dict[IPv4Address, bytes] | None = None  # the MACs of the last sync
        # the plan's reals, by index, with their service; and by address (MAC changes)
        self._all_reals = plan.reals
        self._service_of = {r.index: s for s in plan.services for r in s.reals}
        self._real_of = {r.index: r for r in self._all_reals}
        self._at: dict[IPv4Address, list[int]] = {}
        for r in self._all_reals:
            self._at.setdefault(r.address, []).append(r.index)

    @property
    def prog_fd(self) -> int:
        return self.fn.fd

    # pinned maps of another shape
    def _unpin_misfits(self, pin_dir: str) -> dict[str, tuple[int, MapShape]]:
        """Unpin every pinned map whose shape differs from what this program needs
        (bcc would silently adopt it at the old size), keeping an fd to each so that
        :meth:`_carry_over` can copy its entries. A running program keeps using the
        unpinned maps until the new one replaces it."""
        misfits = {}
        for name, want in shapes(self.plan.sizes).items():
            if (name in LAYOUTS6 and not self._ipv6) or (name in LAYOUTS_NAT6 and not self._nat6):
                continue  # this program has no such map: leave a pinned one alone
            path = Path(pin_dir) / name
            if not path.exists():
                continue
            fd = obj_get(str(path))
            info = map_info(fd)
            have = MapShape(info.type, info.key_size, info.value_size, info.max_entries, info.flags)
            if have == want:
                os.close(fd)
                continue
            path.unlink()
            misfits[name] = (fd, have)
        return misfits

    def _carry_over(self, old: dict[str, tuple[int, MapShape]]) -> list[ReplacedMap]:
        """Copy what can be copied from the unpinned maps into the new ones (hash
        maps whose key and value did not change: tracked flows and persistence
        templates survive a resize, up to the new size) and say what was lost."""
        replaced = []
        want = shapes(self.plan.sizes)
        for name, (fd, have) in sorted(old.items()):
            new = want[name]
            copied = None
            same_layout = (have.type, have.key_size, have.value_size) == (
                new.type,
                new.key_size,
                new.value_size,
            )
            if same_layout and new.type in (HASH, LRU_HASH):
                new_fd = self.bpf[name.encode()].map_fd
                copied = 0
                for n, (key, value) in enumerate(map_items(fd, have.key_size, have.value_size)):
                    try:
                        map_update(new_fd, key, value)
                    except OSError:
                        break  # a smaller plain hash map is full
                    copied = n + 1
            elif same_layout and name in CT_TABLES + CT_TABLES6:  # sets by hash: refilled
                copied = self.maps.carry_over(name, fd, have.max_entries)
            what = _CONTENT.get(name, "contents (rewritten by sync)")
            fate = f"{copied} entries copied" if copied is not None else f"{what} dropped"
            log.warning(
                "pinned map %s/%s has %d entries of %d+%d bytes, the new program needs %d "
                "of %d+%d: replaced, %s",
                self.pin_dir,
                name,
                have.max_entries,
                have.key_size,
                have.value_size,
                new.max_entries,
                new.key_size,
                new.value_size,
                fate,
            )
            replaced.append(ReplacedMap(name, have, new, copied))
        return replaced

    # desired state -> maps
    def _table_key(self, svc: ServicePlan, state: Mapping[int, RealState]) -> _TableKey:
        """What the service's table is a function of: its members at their configured
        table weights and the positions taken out (failed, or run-time weight 0)."""
        members, out = [], []
        for i, r in enumerate(svc.reals):
            st = state.get(r.index, _HEALTHY)
            weight = r.table_weight if st.weight is None else svc.table_weight(st.weight)
            if st.failed or weight == 0:
                out.append(i)
                weight = r.table_weight  # keeps its configured place in the base table
            members.append(maglev.Member(r.key, weight))
        return tuple(members), frozenset(out)

    def _table_positions(self, service: int, key: _TableKey) -> np.ndarray:
        members, out = key
        base_key = (members, self.plan.sizes.ring_size)
        base = self._bases.get(base_key)
        if base is None:
            base = self._bases[base_key] = maglev.build(members, self.plan.sizes.ring_size)
        if not out:
            return base
        kept = self._positions.setdefault(service, {})
        positions = kept.pop(key, None)
        if positions is None:
            positions = maglev.without(base, members, out)
            while len(kept) >= _POSITIONS_KEPT:  # drop the least recently used
                del kept[next(iter(kept))]
        kept[key] = positions
        return positions

    def _real_ids(self, svc: ServicePlan) -> np.ndarray:
        ids = self._ids.get(svc.index)
        if ids is None:
            ids = np.array([r.index for r in svc.reals] + [0], dtype=np.uint32)
            self._ids[svc.index] = ids
        return ids

    def table(self, svc: ServicePlan, state: Mapping[int, RealState]) -> np.ndarray:
        """The service's Maglev table as real indexes (0 = empty). Failed and
        quiesced (run-time weight 0) servers are taken out of the table of the other
        weights, so no other server's slots move."""
        positions = self._table_positions(svc.index, self._table_key(svc, state))
        return self._real_ids(svc)[positions]  # EMPTY (-1) picks the trailing 0

    def _forget_if_bypassed(self) -> None:
        """Someone wrote the maps through ``self.maps`` but not through sync (a test,
        ``lvs-router`` removing its services): what we remember writing may be false
        now, so this sync compares with the maps and rewrites the tables whole."""
        if self._writes_seen is not None and self.maps.writes != self._writes_seen:
            self._reals.clear()
            self._weights.clear()
            self._written.clear()
            self._written_from.clear()
            self._globals = None
            self._services_synced = False
            self._macs = None

    def sync(
        self,
        macs: Mapping[IPv4Address, bytes],
        state: Mapping[int, RealState] | None = None,
        *,
        touched: Iterable[int] | None = None,
        tunnel_source: IPv4Address = TUNNEL_SOURCE,
        tunnel_vary_bits: int = 16,
    ) -> None:
        """Make the maps say what the plan and the run-time ``state`` (by real index)
        say. ``macs`` maps each real server address to its next-hop MAC.

        Costs what changed since the last sync: a real's entry is written only when
        it differs from what this process last wrote (the first sync compares with
        the maps, which may be adopted), a table is recomputed only when its members
        or taken-out set changed, and services and VIPs, which depend on the plan
        only, are compared with the maps on the first sync alone.

        ``touched``: the real indexes whose state may differ from the last sync's
        (the caller knows what changed): only those reals, the reals at addresses
        whose MAC changed, and the services holding any of them are visited, so one
        server going down costs its entry and its service's table, whatever the size
        of the plan. ``state`` must still hold every real's state (a touched
        service's table depends on all its reals). None: visit everything."""
        state = state or {}
        plan, m = self.plan, self.maps
        self._forget_if_bypassed()
        if touched is None or self._macs is None or not self._services_synced:
            reals: Iterable = self._all_reals
            services: Iterable[ServicePlan] = plan.services
        else:
            indexes = set(touched)
            if macs != self._macs:  # the reals behind an address whose MAC changed
                old = self._macs
                for addr in macs.keys() | old.keys():
                    if macs.get(addr) != old.get(addr):
                        indexes.update(self._at.get(addr, ()))
            real_of = self._real_of
            reals = [real_of[i] for i in sorted(indexes) if i in real_of]
            held = {self._service_of[r.index].index: self._service_of[r.index] for r in reals}
            services = [held[i] for i in sorted(held)]
        missing = sorted({r.address for r in reals if r.address not in macs})
        if missing:
            raise MissingMac(missing)
        if self._globals != (tunnel_source, tunnel_vary_bits):
            m.set_globals(tunnel_source, tunnel_vary_bits)
            self._globals = (tunnel_source, tunnel_vary_bits)
        known = self._reals
        writes = []
        weights = []  # real_weights, for the least-connection family (scheduling.h)
        lc = "lc" in plan.features
        for r in reals:
            st = state.get(r.index, _HEALTHY)
            weight = r.weight if st.weight is None else st.weight
            if lc and self._weights.get(r.index) != weight:
                weights.append((r.index, weight))
            flags = (REAL_F_FAILED if st.failed else 0) | (REAL_F_QUIESCED if weight == 0 else 0)
            entry = (r.address, macs[r.address].ljust(6, b"\0"), flags)
            have = known.get(r.index)
            if have is None:  # first sync: what the maps hold (maybe adopted)
                e = m.real(r.index)
                have = (e.addr, e.mac, e.flags)
                if r.address.version == 6 and m.real_word(r.index) == addr_word(r.address):
                    have = (r.address, e.mac, e.flags)  # reals holds a tag of it
            if have != entry:
                writes.append((r.index, entry))
        self._write_reals(writes)
        m.set_real_weights(weights)
        self._weights.update(weights)
        if not self._stale_cleared:  # entries a previous program left behind
            for i in range(len(self._all_reals) + 1, plan.sizes.max_reals):
                if m.real(i).addr != IPv4Address(0):
                    m.set_real(i, None, b"", REAL_F_FAILED)  # its flows reschedule
            self._stale_cleared = True
        for svc in services:
            key = self._table_key(svc, state)
            if self._written_from.get(svc.index) == key and svc.index in self._written:
                continue
            new = self._real_ids(svc)[self._table_positions(svc.index, key)]
            slots, values = maglev.diff(self._written.get(svc.index), new)
            m.write_ring(svc.index, slots, values)
            self._written[svc.index] = new
            self._written_from[svc.index] = key
        if not self._services_synced:
            self._sync_services()
            self._services_synced = True
        if self._macs is None or macs != self._macs:
            self._macs = dict(macs)
        self._writes_seen = m.writes

    def _write_reals(self, writes: list[tuple[int, tuple[IPv4Address, bytes, int]]]) -> None:
        """Write real entries (index, (address, MAC, flags)) and remember them. A few
        go one by one through :class:`LbMaps`; many (a start, the first round of
        checks: 10,000 servers coming in) in one batched update. Each single write is
        a syscall through ctypes, which lets go of the GIL, and in the daemon getting
        it back means waiting for the busy health-check loop: 10,000 of them took
        seconds."""
        m, known = self.maps, self._reals
        for index, (addr, _mac, _flags) in writes:
            if addr.version == 6:  # its full address first (ipv6.h forward_tunnel6)
                m.set_real6(index, addr)
        if len(writes) < _BATCH_REALS:
            for index, entry in writes:
                m.set_real(index, *entry)
                known[index] = entry
            return
        t = self.bpf[b"reals"]
        keys = np.array([index for index, _entry in writes], dtype=np.uint32).tobytes()
        values = b"".join(
            bytes(Real(addr_word(addr), (ct.c_uint8 * 6)(*mac), flags))
            for _index, (addr, mac, flags) in writes
        )
        t.items_update_batch(
            (t.Key * len(writes)).from_buffer_copy(keys),
            (t.Leaf * len(writes)).from_buffer_copy(values),
        )
        m.writes += 1  # as LbMaps counts its own batched writes (one per batch)
        for index, entry in writes:
            known[index] = entry

    def _sync_services(self) -> None:
        """Services and VIPs as the plan says (after the tables, so that no packet
        finds a service whose table is not written yet)."""
        m = self.maps
        self._sync_services6()
        wanted = {}
        for svc in self.plan.services:
            if svc.vip.version == 6:
                continue
            key = (svc.vip, svc.port, svc.proto)
            wanted[key] = (svc.index, svc.flags, svc.persist_s, svc.pmask)
        present = m.services()
        for key, value in wanted.items():
            if present.get(key) != value:
                m.set_service(*key, value)
        vips: dict[tuple[IPv4Address, int], int] = {}
        for vip, _port, proto in wanted:
            vips[(vip, proto)] = vips.get((vip, proto), 0) + 1
        for (vip, proto), n in vips.items():
            m.set_vip(vip, proto, n)
        for vip, proto in m.vips() - set(vips):
            m.delete_vip(vip, proto)
        for key in set(present) - set(wanted):
            m.delete_service(*key)
        m.clear_service_info({index for index, *_rest in wanted.values()})

    def _sync_services6(self) -> None:
        """The IPv6 services and VIPs (services6, service_info6, vips6), as
        :meth:`_sync_services` does for IPv4."""
        m = self.maps
        if not m.ipv6:
            return
        wanted = {
            (svc.vip, svc.port, svc.proto): (svc.index, svc.flags, svc.persist_s, svc.pmask6)
            for svc in self.plan.services
            if svc.vip.version == 6
        }
        present = m.services6()
        for key, value in wanted.items():
            if present.get(key) != value:
                m.set_service6(*key, value)
        vips: dict = {}
        for vip, _port, _proto in wanted:
            vips[vip] = vips.get(vip, 0) + 1
        for vip, n in vips.items():
            m.set_vip6(vip, n)
        for vip in m.vips6() - set(vips):
            m.delete_vip6(vip)
        for key in set(present) - set(wanted):
            m.delete_service6(*key)
        m.clear_service_info({index for index, *_rest in wanted.values()}, ipv6=True)

    # network = nat
    def configure_nat(
        self,
        *,
        private_ifindex: int,
        public_ifindex: int,
        private_mac: bytes,
        public_mac: bytes,
    ) -> None:
        """Where NAT frames go (the devmap: private side for requests, public side
        for replies), the source MACs of both sides, the plan's idle timeouts, and
        each real server's port (port mapping). Separate from :meth:`sync`: these
        change with the interfaces, not with health checks."""
        m = self.maps
        m.set_nat_ports(private_ifindex, public_ifindex)
        m.set_nat_config(private_mac, public_mac, self.plan.timeouts, kernel_hz())
        for r in self.plan.reals:
            m.set_real_port(r.index, r.port)

    @property
    def nat_fn(self) -> object:
        """The reply path's entry point (same object, same maps)."""
        fn = getattr(self, "_nat_fn", None)
        if fn is None:
            fn = self._nat_fn = self.bpf.load_func(NAT_PROGRAM.encode(), _bcc().XDP)
        return fn

    def attach_nat(self, ifname: str, mode: str = "native") -> str:
        """Attach the reply path to the private interface; returns the mode used."""
        return attach_xdp(self.nat_fn, ifname, mode)

    # attachment
    def attach(self, ifname: str, mode: str = "native") -> str:
        """Attach (replacing any program there atomically); returns the mode used."""
        return attach_xdp(self.fn, ifname, mode)

    @staticmethod
    def detach(ifname: str, mode: str = "native") -> None:
        detach_xdp(ifname, mode)

    def pin_program(self) -> str:
        """Pin the program next to its maps (for bpftool and for inspection)."""
        if not self.pin_dir:
            raise ValueError("no pin directory")
        path = Path(self.pin_dir) / PROGRAM
        if path.exists():
            path.unlink()
        obj_pin(self.prog_fd, str(path))
        return str(path)

    def close(self) -> None:
        self.bpf.cleanup()
