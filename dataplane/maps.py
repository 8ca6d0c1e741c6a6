"""Typed access to the XDP program's maps: the only module that touches bcc tables.

The ctypes layouts below mirror ``bpf/lb_structs.h``; :class:`LbMaps` checks at load
time that each one has the size bcc reports for that map's key and value, so a
struct changed on one side only fails loudly instead of corrupting the maps.
Byte order: ``__be32``/``__be16`` fields hold network-order bytes; the helpers
:func:`be32`/:func:`be16` convert.
"""

from __future__ import annotations

import ctypes as ct
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NamedTuple

import numpy as np

from .bpf.render import CT_WAYS, ct_sets, svc_hints
from .libbpf import array_values
from .plan import Sizes, _final

# global_stats slot names, in lb_consts.h order
GLOBAL_COUNTERS = (
    "pass_not_ipv4",
    "pass_bad_ipv4",
    "pass_not_vip",
    "drop_fragment",
    "drop_ip_options",
    "drop_bad_l4",
    "drop_no_real",
    "drop_too_big",
    "drop_encap",
    "tx",
    "ct_hit",
    "ct_miss_non_syn",
    "rescheduled",
    "persist_hit",
    "drop_unsupported",
    "nat_in",
    "nat_out",
    "nat_expired",
    "pass_nat_no_flow",
    "drop_nat_unset",
    "nat_icmp",
    "ct_busy",
    "ct_evicted",
    "lc_second",
    "pass_bad_ipv6",
    "drop_ipv6_ext",
    "pass_hop_limit",
)


def be32(addr: IPv4Address | int) -> int:
    return socket.htonl(int(addr))


def be16(port: int) -> int:
    return socket.htons(port)


def addr_word(addr: IPv4Address | IPv6Address | None) -> int:
    """What ``reals[i].addr`` holds for a real server: an IPv4 address (network
    order), or for IPv6 a 32-bit tag of the address (the XOR of its four words, 1 if
    that is 0). The program only compares it with what a tracked flow or a template
    remembered, to notice that an index now holds another server; the IPv6 path never
    needs the address itself (direct routing rewrites MACs only)."""
    if addr is None:
        return 0
    if isinstance(addr, IPv4Address):
        return be32(addr)
    w = np.frombuffer(addr.packed, dtype="<u4")
    tag = int(w[0] ^ w[1] ^ w[2] ^ w[3])
    return tag or 1


def be128(addr: IPv6Address) -> Any:
    """An IPv6 address as the program's ``__be32[4]``."""
    return (ct.c_uint32 * 4).from_buffer_copy(addr.packed)


class ServiceKey(ct.Structure):
    _fields_ = [
        ("vip", ct.c_uint32),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class Service(ct.Structure):
    _fields_ = [
        ("index", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("persist_s", ct.c_uint32),
        ("pmask", ct.c_uint32),
    ]


class ServiceInfo(ct.Structure):
    _fields_ = [("key", ServiceKey), ("svc", Service)]


class VipKey(ct.Structure):
    _fields_ = [("vip", ct.c_uint32), ("proto", ct.c_uint8), ("pad", ct.c_uint8 * 3)]


class Real(ct.Structure):
    _fields_ = [("addr", ct.c_uint32), ("mac", ct.c_uint8 * 6), ("flags", ct.c_uint16)]


class FlowKey(ct.Structure):
    _fields_ = [
        ("saddr", ct.c_uint32),
        ("daddr", ct.c_uint32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    ]


class FlowState(ct.Structure):
    _fields_ = [
        ("real", ct.c_uint32),
        ("addr", ct.c_uint32),
        ("service", ct.c_uint32),
        ("hash", ct.c_uint32),
        ("last_ns", ct.c_uint64),
        ("mac", ct.c_uint8 * 6),  # nat_rev: the VIP (4 bytes) and port (2), see rev_vip
        ("closing", ct.c_uint8),
        ("used", ct.c_uint8),
    ]

    def rev_vip(self) -> tuple[IPv4Address, int]:
        """nat_rev: the flow's (VIP, port), kept where conntrack has the MAC."""
        raw = bytes(self.mac)
        return IPv4Address(raw[:4]), int.from_bytes(raw[4:6], "big")


class CtSet(ct.Structure):
    """One set of the connection table (conntrack.h): stamps, keys, values."""

    _fields_ = [
        ("seq", ct.c_uint64),
        ("tick", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("stamp", ct.c_uint32 * CT_WAYS),
        ("key", FlowKey * CT_WAYS),
        ("val", FlowState * CT_WAYS),
    ]


class ServiceKey6(ct.Structure):
    _fields_ = [
        ("vip", ct.c_uint32 * 4),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class ServiceInfo6(ct.Structure):
    _fields_ = [("key", ServiceKey6), ("svc", Service)]


class VipKey6(ct.Structure):
    _fields_ = [("vip", ct.c_uint32 * 4)]


class FlowKey6(ct.Structure):
    _fields_ = [
        ("saddr", ct.c_uint32 * 4),
        ("daddr", ct.c_uint32 * 4),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    ]


class CtSet6(ct.Structure):
    """One set of the IPv6 connection table (ipv6_maps.h struct ct6_set)."""

    _fields_ = [
        ("seq", ct.c_uint64),
        ("tick", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("stamp", ct.c_uint32 * CT_WAYS),
        ("key", FlowKey6 * CT_WAYS),
        ("val", FlowState * CT_WAYS),
    ]


class NatConfig(ct.Structure):
    _fields_ = [
        ("priv_mac", ct.c_uint8 * 6),
        ("pub_mac", ct.c_uint8 * 6),
        ("ns_per_jiffy", ct.c_uint32),
        ("tcp_ns", ct.c_uint64),
        ("tcpfin_ns", ct.c_uint64),
        ("udp_ns", ct.c_uint64),
        ("clock_offset_ns", ct.c_uint64),
    ]


class PersistKey(ct.Structure):
    _fields_ = [("service", ct.c_uint32), ("client", ct.c_uint32)]


class PersistKey6(ct.Structure):
    _fields_ = [("service", ct.c_uint32), ("client", ct.c_uint32 * 4)]


class PersistState(ct.Structure):
    _fields_ = [("real", ct.c_uint32), ("addr", ct.c_uint32), ("last_ns", ct.c_uint64)]


class Counters(ct.Structure):
    _fields_ = [("packets", ct.c_uint64), ("bytes", ct.c_uint64), ("new_flows", ct.c_uint64)]


class Globals(ct.Structure):
    _fields_ = [("tunnel_src", ct.c_uint32), ("tunnel_src_vary", ct.c_uint32)]


U32, U64 = ct.c_uint32, ct.c_uint64

LAYOUTS: dict[str, tuple[Any, Any]] = {
    "services": (ServiceKey, Service),
    "service_info": (U32, ServiceInfo),
    "service_hints": (U32, U32),
    "vips": (VipKey, U32),
    "reals": (U32, Real),
    "real_conns": (U32, U32),
    "real_weights": (U32, U32),
    "rings": (U32, U32),
    "conntrack": (U32, CtSet),
    "persist": (PersistKey, PersistState),
    "globals": (U32, Globals),
    "service_stats": (U32, Counters),
    "real_stats": (U32, Counters),
    "global_stats": (U32, U64),
    "nat_rev": (U32, CtSet),
    "real_ports": (U32, ct.c_uint16),
    "tx_ports": (U32, U32),
    "nat_config": (U32, NatConfig),
}

# the IPv6 path's maps (ipv6_maps.h), in programs built with feature ipv6 only
LAYOUTS6: dict[str, tuple[Any, Any]] = {
    "services6": (ServiceKey6, Service),
    "service_info6": (U32, ServiceInfo6),
    "service_hints6": (U32, U32),
    "vips6": (VipKey6, U32),
    "conntrack6": (U32, CtSet6),
    "reals6": (U32, ct.c_uint32 * 4),
    "persist6": (PersistKey6, PersistState),
}
# IPv6 NAT's reply keys (nat6.h), in programs built with features nat and ipv6 only
LAYOUTS_NAT6: dict[str, tuple[Any, Any]] = {"nat_rev6": (U32, CtSet6)}

# what the kernel reports for each map of the program (bpf_map_info), to tell whether
# a pinned map from an earlier program can be adopted as it is
HASH, ARRAY, PERCPU_ARRAY, LRU_HASH, DEVMAP = 1, 2, 6, 9, 14
# connection tables (arrays of CtSet): a resized one is refilled by carry_over()
CT_TABLES = ("conntrack", "nat_rev")
CT_TABLES6 = ("conntrack6", "nat_rev6")  # the IPv6 ones (sets of CtSet6, by ct6_hash)
KINDS = {
    "services": (HASH, 0),
    "service_info": (ARRAY, 0),
    "service_hints": (ARRAY, 0),
    "vips": (HASH, 0),
    "reals": (ARRAY, 0),
    "real_conns": (ARRAY, 0),
    "real_weights": (ARRAY, 0),
    "rings": (ARRAY, 0),
    "conntrack": (ARRAY, 0),
    "persist": (LRU_HASH, 0),
    "globals": (ARRAY, 0),
    "service_stats": (PERCPU_ARRAY, 0),
    "real_stats": (PERCPU_ARRAY, 0),
    "global_stats": (PERCPU_ARRAY, 0),
    "nat_rev": (ARRAY, 0),
    "real_ports": (ARRAY, 0),
    "tx_ports": (DEVMAP, 0),
    "nat_config": (ARRAY, 0),
    "services6": (HASH, 0),
    "service_info6": (ARRAY, 0),
    "service_hints6": (ARRAY, 0),
    "vips6": (HASH, 0),
    "conntrack6": (ARRAY, 0),
    "reals6": (ARRAY, 0),
    "persist6": (LRU_HASH, 0),
    "nat_rev6": (ARRAY, 0),
}
GLOBAL_SLOTS = 27  # GLOBAL_COUNTERS in lb_consts.h


@dataclass(frozen=True, slots=True)
class MapShape:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def shapes(sizes: Sizes) -> dict[str, MapShape]:
    """The shape of every map of a program built with ``sizes``, as the kernel
    reports it (``bpf_obj_get_info_by_fd``)."""
    entries = {
        "services": sizes.max_services,
        "service_info": sizes.max_services,
        "service_hints": svc_hints(sizes),
        "vips": sizes.max_services,
        "reals": sizes.max_reals,
        "real_conns": sizes.max_reals,
        "real_weights": sizes.max_reals,
        "rings": sizes.max_services * sizes.ring_size,
        "conntrack": ct_sets(sizes),
        "persist": sizes.persist_size,
        "globals": 1,
        "service_stats": sizes.max_services,
        "real_stats": sizes.max_reals,
        "global_stats": GLOBAL_SLOTS,
        "nat_rev": ct_sets(sizes),
        "real_ports": sizes.max_reals,
        "tx_ports": 2,
        "nat_config": 1,
        "services6": sizes.max_services,
        "service_info6": sizes.max_services,
        "service_hints6": svc_hints(sizes),
        "vips6": sizes.max_services,
        "conntrack6": ct_sets(sizes),
        "reals6": sizes.max_reals,
        "persist6": sizes.persist_size,
        "nat_rev6": ct_sets(sizes),
    }
    out = {}
    for name, (key, value) in (LAYOUTS | LAYOUTS6 | LAYOUTS_NAT6).items():
        kind, flags = KINDS[name]
        out[name] = MapShape(kind, ct.sizeof(key), ct.sizeof(value), entries[name], flags)
    return out


class LayoutError(RuntimeError):
    pass


class CounterValues(NamedTuple):
    packets: int
    bytes: int
    new_flows: int


@dataclass(frozen=True, slots=True)
class RealEntry:
    addr: IPv4Address
    mac: bytes
    flags: int


def _cast(obj: ct.Structure | ct._SimpleCData, to: type) -> Any:
    return to.from_buffer_copy(bytes(obj))


def _flow_tuple(raw: object) -> tuple[IPv4Address, int, IPv4Address, int, int]:
    """A FlowKey map key as (saddr, sport, daddr, dport, proto), host order."""
    key = FlowKey.from_buffer_copy(bytes(raw))
    return (
        IPv4Address(socket.ntohl(key.saddr)),
        socket.ntohs(key.sport),
        IPv4Address(socket.ntohl(key.daddr)),
        socket.ntohs(key.dport),
        key.proto,
    )


_M64 = (1 << 64) - 1


def ct_hash(saddr: IPv4Address, daddr: IPv4Address, sport: int, dport: int, proto: int) -> int:
    """conntrack.h's ct_hash(): the hash whose low bits pick a key's set. Fields as
    the program loads them: network-order bytes read as little-endian words."""
    s = int.from_bytes(saddr.packed, "little")
    d = int.from_bytes(daddr.packed, "little")
    sp = int.from_bytes(sport.to_bytes(2, "big"), "little")
    dp = int.from_bytes(dport.to_bytes(2, "big"), "little")
    a = (s << 32) | d
    b = (((sp << 16) | dp) << 32) | proto
    h = ((a * 0x9E3779B97F4A7C15) ^ (b * 0xC2B2AE3D27D4EB4F)) & _M64
    h ^= h >> 32
    return ((h * 0x165667B19E3779F9) & _M64) >> 32


def flow_key6(
    saddr: IPv6Address, daddr: IPv6Address, sport: int, dport: int, proto: int
) -> FlowKey6:
    """The conntrack6 key of an IPv6 flow (host-order ports)."""
    return FlowKey6(be128(saddr), be128(daddr), be16(sport), be16(dport), proto)


def ct6_hash(key: FlowKey6) -> int:
    """ipv6.h's ct6_hash(): a multiply per 64-bit word of the key and a fold."""
    w = [int.from_bytes(bytes(key)[i : i + 8], "little") for i in range(0, 40, 8)]
    mult = (
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
    )
    h = 0
    for word, m in zip(w, mult, strict=True):
        h ^= (word * m) & _M64
    h ^= h >> 32
    return ((h * 0x165667B19E3779F9) & _M64) >> 32


def svc_hint_slot(key: ServiceKey, slots: int) -> int:
    """scheduling.h's svc_hint_slot(): the service_hints slot of a service key."""
    h = (
        (key.vip * 0x9E3779B97F4A7C15) ^ (((key.port << 8) | key.proto) * 0xC2B2AE3D27D4EB4F)
    ) & _M64
    return (h >> 32) & (slots - 1)


def svc_hint_slot6(key: ServiceKey6, slots: int) -> int:
    """ipv6.h's svc_hint_slot6(): the VIP's four words folded, then svc_hint_slot."""
    fold = key.vip[0] ^ key.vip[1] ^ key.vip[2] ^ key.vip[3]
    h = ((fold * 0x9E3779B97F4A7C15) ^ (((key.port << 8) | key.proto) * 0xC2B2AE3D27D4EB4F)) & _M64
    return (h >> 32) & (slots - 1)


def lc_second_hash(h: int) -> int:
    """scheduling.h's lc_second_hash(): the least-connection family's second
    candidate is the real at this hash's Maglev slot (h: the first one's hash)."""
    return _final(h ^ 0x5BD1E995)


def _set_hash(key: object) -> int:
    """The hash whose low bits pick the set of a key of either connection table."""
    if isinstance(key, FlowKey6):
        return ct6_hash(key)
    k = _flow_tuple(key)
    return ct_hash(k[0], k[2], k[1], k[3], k[4])


def ct_entries(raw: bytes, set_type: type = CtSet) -> list[tuple[int, Any, FlowState]]:
    """The entries of a connection table read whole (``raw``: its sets, as
    :func:`~dataplane.libbpf.array_values` returns them; ``set_type`` CtSet, or
    CtSet6 for conntrack6 and nat_rev6), as (age in its set, key, value): age 0 is
    the most recently used of its set. Sets a program was writing during the read
    (odd seq) are left out."""
    sets = (set_type * (len(raw) // ct.sizeof(set_type))).from_buffer_copy(raw)
    out = []
    for cs in sets:
        if cs.seq & 1:
            continue
        for stamp, key, val in zip(cs.stamp, cs.key, cs.val, strict=True):
            if stamp and val.used:
                out.append(((cs.tick - stamp) & 0xFFFFFFFF, key, val))
    return out


def fill_ct_sets(
    n_sets: int, entries: list[tuple[int, Any, FlowState]], set_type: type = CtSet
) -> tuple[bytes, int]:
    """A connection table of ``n_sets`` sets (of ``set_type``) holding ``entries``
    (age, key, value), each in the set of its key's hash (ct_hash, or ct6_hash for
    IPv6 keys); a set offered more than CT_WAYS keeps its youngest. Returns the sets'
    bytes and how many entries they hold."""
    by_set: dict[int, list[tuple[int, Any, FlowState]]] = {}
    for age, key, val in entries:
        by_set.setdefault(_set_hash(key) & (n_sets - 1), []).append((age, key, val))
    sets = (set_type * n_sets)()
    key_type = FlowKey6 if set_type is CtSet6 else FlowKey
    kept = 0
    for index, offered in by_set.items():
        youngest = sorted(offered, key=lambda e: e[0])[:CT_WAYS]
        cs = sets[index]
        cs.tick = len(youngest)
        for way, (_age, key, val) in enumerate(reversed(youngest)):  # oldest first
            cs.key[way] = key_type.from_buffer_copy(bytes(key))
            cs.val[way] = FlowState.from_buffer_copy(bytes(val))
            cs.stamp[way] = way + 1
            kept += 1
    return bytes(sets), kept


class LbMaps:
    """The maps of one loaded program (a ``bcc.BPF``), with typed accessors."""

    def __init__(self, bpf: Any, sizes: Sizes, *, ipv6: bool = False, nat6: bool = False):
        """``ipv6``: the program was built with feature ipv6 (has the IPv6 maps);
        ``nat6``: with features ipv6 and nat (has nat_rev6)."""
        self._bpf = bpf
        self.sizes = sizes
        self.ipv6 = ipv6
        self.nat6 = nat6
        layouts = LAYOUTS | LAYOUTS6 if ipv6 else LAYOUTS
        if nat6:
            layouts = layouts | LAYOUTS_NAT6
        for name, (key, value) in layouts.items():
            table = bpf[name.encode()]
            leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU maps: one CPU's value
            if ct.sizeof(table.Key) != ct.sizeof(key) or ct.sizeof(leaf) != ct.sizeof(value):
                raise LayoutError(
                    f"map {name}: bcc has key/value {ct.sizeof(table.Key)}/{ct.sizeof(leaf)} "
                    f"bytes, maps.py {ct.sizeof(key)}/{ct.sizeof(value)}"
                )
        self._t = {name: bpf[name.encode()] for name in layouts}
        # writes to the maps sync owns (services, VIPs, reals, rings, globals): lets
        # XdpDataplane notice a write that bypassed it, and tests count sync's writes
        self.writes = 0

    # services and VIPs
    def set_service(
        self, vip: IPv4Address, port: int, proto: int, value: tuple[int, int, int, IPv4Address]
    ) -> None:
        """Write the service under its key and under its index (``service_info``,
        which tracked flows are checked against); the index first, so that no packet
        finds the key before the index says the same."""
        self.writes += 1
        index, flags, persist_s, pmask = value
        key = ServiceKey(be32(vip), be16(port), proto, 0)
        svc = Service(index, flags, persist_s, be32(pmask))
        info = self._t["service_info"]
        info[info.Key(index)] = _cast(ServiceInfo(key, svc), info.Leaf)
        t = self._t["services"]
        t[_cast(key, t.Key)] = _cast(svc, t.Leaf)
        hints = self._t["service_hints"]  # the program checks a hint against service_info
        hints[hints.Key(svc_hint_slot(key, svc_hints(self.sizes)))] = hints.Leaf(index + 1)

    def delete_service(self, vip: IPv4Address, port: int, proto: int) -> None:
        """Remove the key, and clear its index unless another service holds it now
        (then the flows tracked for the old one no longer match and are dropped or
        rescheduled)."""
        self.writes += 1
        t = self._t["services"]
        key = ServiceKey(be32(vip), be16(port), proto, 0)
        k = _cast(key, t.Key)
        index = Service.from_buffer_copy(bytes(t[k])).index
        del t[k]
        info = self._t["service_info"]
        held = ServiceInfo.from_buffer_copy(bytes(info[info.Key(index)]))
        if bytes(held.key) == bytes(key):
            info[info.Key(index)] = info.Leaf()

    def clear_service_info(self, keep: set[int], *, ipv6: bool = False) -> list[int]:
        """Clear every ``service_info`` (``ipv6``: ``service_info6``) index outside
        ``keep`` that still holds a key: an index whose service moved to another index
        or family in a new plan. A tracked flow names its service by index, so a stale
        entry there would still match the flow's packets and schedule them by the
        table that index has now (another service's). Returns the indexes cleared."""
        name, info_type = ("service_info6", ServiceInfo6) if ipv6 else ("service_info", ServiceInfo)
        t = self._t[name]
        size = ct.sizeof(info_type)
        raw = array_values(t.map_fd, size, self.sizes.max_services)
        cleared = []
        for index in range(self.sizes.max_services):
            if index in keep:
                continue
            held = info_type.from_buffer_copy(raw, index * size)
            if any(bytes(held.key)):
                t[t.Key(index)] = t.Leaf()
                cleared.append(index)
        if cleared:
            self.writes += 1
        return cleared

    def services(self) -> dict[tuple[IPv4Address, int, int], tuple[int, int, int, IPv4Address]]:
        """Every service key with its value; the index reads as -1 when
        ``service_info`` does not hold the same service at that index (a map
        recreated after a size change), so that a sync writes it again."""
        out = {}
        info = self._t["service_info"]
        for k, v in self._t["services"].items():
            key = ServiceKey.from_buffer_copy(bytes(k))
            val = Service.from_buffer_copy(bytes(v))
            held = None
            if val.index < self.sizes.max_services:
                held = ServiceInfo.from_buffer_copy(bytes(info[info.Key(val.index)]))
            same = (
                held is not None and bytes(held.key) == bytes(key) and bytes(held.svc) == bytes(val)
            )
            out[(IPv4Address(socket.ntohl(key.vip)), socket.ntohs(key.port), key.proto)] = (
                val.index if same else -1,
                val.flags,
                val.persist_s,
                IPv4Address(socket.ntohl(val.pmask)),
            )
        return out

    # IPv6 services and VIPs (ipv6_maps.h)
    def set_service6(
        self, vip: IPv6Address, port: int, proto: int, value: tuple[int, int, int, int]
    ) -> None:
        """As :meth:`set_service`, into services6, service_info6 and service_hints6;
        ``value`` is (index, flags, persist_s, prefix
        length of persistence: struct service.pmask holds it for IPv6)."""
        self.writes += 1
        index, flags, persist_s, plen = value
        key = ServiceKey6(be128(vip), be16(port), proto, 0)
        svc = Service(index, flags, persist_s, plen)  # pmask: the prefix length
        info = self._t["service_info6"]
        info[info.Key(index)] = _cast(ServiceInfo6(key, svc), info.Leaf)
        t = self._t["services6"]
        t[_cast(key, t.Key)] = _cast(svc, t.Leaf)
        hints = self._t["service_hints6"]  # the program checks it against service_info6
        hints[hints.Key(svc_hint_slot6(key, svc_hints(self.sizes)))] = hints.Leaf(index + 1)

    def delete_service6(self, vip: IPv6Address, port: int, proto: int) -> None:
        self.writes += 1
        t = self._t["services6"]
        key = ServiceKey6(be128(vip), be16(port), proto, 0)
        k = _cast(key, t.Key)
        index = Service.from_buffer_copy(bytes(t[k])).index
        del t[k]
        info = self._t["service_info6"]
        held = ServiceInfo6.from_buffer_copy(bytes(info[info.Key(index)]))
        if bytes(held.key) == bytes(key):
            info[info.Key(index)] = info.Leaf()

    def services6(self) -> dict[tuple[IPv6Address, int, int], tuple[int, int, int, int]]:
        """Every IPv6 service key with (index, flags, persist_s, persistence prefix
        length); the index reads -1 when service_info6 does not hold the same service
        at that index."""
        if not self.ipv6:
            return {}
        out = {}
        info = self._t["service_info6"]
        for k, v in self._t["services6"].items():
            key = ServiceKey6.from_buffer_copy(bytes(k))
            val = Service.from_buffer_copy(bytes(v))
            held = None
            if val.index < self.sizes.max_services:
                held = ServiceInfo6.from_buffer_copy(bytes(info[info.Key(val.index)]))
            same = (
                held is not None and bytes(held.key) == bytes(key) and bytes(held.svc) == bytes(val)
            )
            vip = IPv6Address(bytes(key.vip))
            out[(vip, socket.ntohs(key.port), key.proto)] = (
                val.index if same else -1,
                val.flags,
                val.persist_s,
                val.pmask,
            )
        return out

    def set_real6(self, index: int, addr: IPv6Address) -> None:
        """reals6[index]: an IPv6 real's address (the IP6IP6 outer destination)."""
        t = self._t["reals6"]
        t[t.Key(index)] = _cast(be128(addr), t.Leaf)

    def real6(self, index: int) -> IPv6Address:
        t = self._t["reals6"]
        return IPv6Address(bytes(t[t.Key(index)]))

    def set_vip6(self, vip: IPv6Address, services: int) -> None:
        self.writes += 1
        t = self._t["vips6"]
        t[_cast(VipKey6(be128(vip)), t.Key)] = t.Leaf(services)

    def delete_vip6(self, vip: IPv6Address) -> None:
        self.writes += 1
        t = self._t["vips6"]
        del t[_cast(VipKey6(be128(vip)), t.Key)]

    def vips6(self) -> set[IPv6Address]:
        if not self.ipv6:
            return set()
        return {
            IPv6Address(bytes(VipKey6.from_buffer_copy(bytes(k)).vip))
            for k in self._t["vips6"].keys()  # noqa: SIM118 - bcc tables are not dicts
        }

    def _ct6_entries(self, name: str) -> list[tuple[tuple, FlowState]]:
        """The used ways of an IPv6 connection table (conntrack6, nat_rev6) as
        ((saddr, sport, daddr, dport, proto), value)."""
        raw = array_values(self._t[name].map_fd, ct.sizeof(CtSet6), ct_sets(self.sizes))
        out = []
        for i in range(len(raw) // ct.sizeof(CtSet6)):
            s = CtSet6.from_buffer_copy(raw, i * ct.sizeof(CtSet6))
            for w in range(CT_WAYS):
                if not s.stamp[w] or not s.val[w].used:
                    continue
                k = s.key[w]
                key = (
                    IPv6Address(bytes(k.saddr)),
                    socket.ntohs(k.sport),
                    IPv6Address(bytes(k.daddr)),
                    socket.ntohs(k.dport),
                    k.proto,
                )
                out.append((key, s.val[w]))
        return out

    def flows6(self) -> dict[tuple, tuple[int, IPv6Address | int]]:
        """The IPv6 connection table: (saddr, sport, daddr, dport, proto) -> (real
        index, service index) for every used way."""
        if not self.ipv6:
            return {}
        return {key: (v.real, v.service) for key, v in self._ct6_entries("conntrack6")}

    def nat_flows6(self) -> dict[tuple, tuple[IPv6Address | None, int]]:
        """IPv6 reply 5-tuples (RIP, rport, client, cport, proto) -> (VIP, vport): the
        VIP is what service_info6 holds at the entry's service index (None if nothing)."""
        if not self.nat6:
            return {}
        info = self._t["service_info6"]
        out = {}
        for key, v in self._ct6_entries("nat_rev6"):
            held = ServiceInfo6.from_buffer_copy(bytes(info[info.Key(v.service)]))
            vip = IPv6Address(bytes(held.key.vip)) if held.key.proto else None
            out[key] = (vip, int.from_bytes(bytes(v.mac)[4:6], "big"))
        return out

    def set_vip(self, vip: IPv4Address, proto: int, services: int) -> None:
        self.writes += 1
        t = self._t["vips"]
        t[_cast(VipKey(be32(vip), proto), t.Key)] = t.Leaf(services)

    def delete_vip(self, vip: IPv4Address, proto: int) -> None:
        self.writes += 1
        t = self._t["vips"]
        del t[_cast(VipKey(be32(vip), proto), t.Key)]

    def vips(self) -> set[tuple[IPv4Address, int]]:
        out = set()
        for k in self._t["vips"].keys():  # noqa: SIM118 - bcc tables are not dicts
            key = VipKey.from_buffer_copy(bytes(k))
            out.add((IPv4Address(socket.ntohl(key.vip)), key.proto))
        return out

    # real servers
    def set_real(
        self, index: int, addr: IPv4Address | IPv6Address | None, mac: bytes, flags: int
    ) -> None:
        self.writes += 1
        if not 0 < index < self.sizes.max_reals:
            raise IndexError(f"real index {index} outside 1..{self.sizes.max_reals - 1}")
        t = self._t["reals"]
        value = Real(addr_word(addr), (ct.c_uint8 * 6)(*mac.ljust(6, b"\0")), flags)
        t[t.Key(index)] = _cast(value, t.Leaf)

    def real_word(self, index: int) -> int:
        """``reals[index].addr`` as stored (:func:`addr_word`)."""
        t = self._t["reals"]
        return Real.from_buffer_copy(bytes(t[t.Key(index)])).addr

    def real(self, index: int) -> RealEntry:
        t = self._t["reals"]
        v = Real.from_buffer_copy(bytes(t[t.Key(index)]))
        return RealEntry(IPv4Address(socket.ntohl(v.addr)), bytes(v.mac), v.flags)

    # the least-connection family (scheduling.h lc_pick)
    def set_real_weights(self, weights: list[tuple[int, int]]) -> None:
        """Write (real index, weight) pairs to real_weights, in one batched update:
        what wlc, sed, nq and lblc divide a real's connection count by."""
        if not weights:
            return
        self.writes += 1
        t = self._t["real_weights"]
        keys = np.array([i for i, _w in weights], dtype=np.uint32).tobytes()
        values = np.array([w for _i, w in weights], dtype=np.uint32).tobytes()
        t.items_update_batch(
            (t.Key * len(weights)).from_buffer_copy(keys),
            (t.Leaf * len(weights)).from_buffer_copy(values),
        )

    def real_weight(self, index: int) -> int:
        t = self._t["real_weights"]
        return int(t[t.Key(index)].value)

    def set_real_conns(self, index: int, conns: int) -> None:
        """Overwrite a real's connection count (tests construct loads with it; the
        program's atomic adds own it otherwise)."""
        t = self._t["real_conns"]
        t[t.Key(index)] = t.Leaf(conns & 0xFFFFFFFF)

    def real_conns(self) -> dict[int, int]:
        """Open flows per real index (nonzero ones), as the program counts them for
        the least-connection family; a count read as negative (drift) is 0."""
        values = np.frombuffer(
            array_values(self._t["real_conns"].map_fd, ct.sizeof(U32), self.sizes.max_reals),
            dtype=np.int32,
        )
        return {int(i): int(values[i]) for i in np.flatnonzero(values > 0)}

    # Maglev tables
    def write_ring(self, service: int, slots: np.ndarray, real_ids: np.ndarray) -> None:
        """Write ``real_ids`` (0 = empty) at ``slots`` of the service's table, batched."""
        if not len(slots):
            return
        self.writes += 1
        t = self._t["rings"]
        keys = (slots.astype(np.uint32) + np.uint32(service * self.sizes.ring_size)).astype(
            np.uint32
        )
        values = np.ascontiguousarray(real_ids, dtype=np.uint32)
        step = 65536
        for i in range(0, len(keys), step):
            k = np.ascontiguousarray(keys[i : i + step])
            v = np.ascontiguousarray(values[i : i + step])
            ck = (t.Key * len(k)).from_buffer_copy(k.tobytes())
            cv = (t.Leaf * len(v)).from_buffer_copy(v.tobytes())
            t.items_update_batch(ck, cv)

    def ring_slot(self, service: int, slot: int) -> int:
        t = self._t["rings"]
        return t[t.Key(service * self.sizes.ring_size + slot)].value

    # globals
    def set_globals(self, tunnel_src: IPv4Address, vary_bits: int) -> None:
        self.writes += 1
        vary = (0xFFFFFFFF >> (32 - vary_bits)) if vary_bits else 0
        t = self._t["globals"]
        t[t.Key(0)] = _cast(Globals(be32(tunnel_src), be32(vary)), t.Leaf)

    # NAT
    def set_real_port(self, index: int, port: int) -> None:
        """The real server's port for NAT port mapping (0: keep the VIP's port)."""
        t = self._t["real_ports"]
        t[t.Key(index)] = t.Leaf(be16(port))

    def real_port(self, index: int) -> int:
        t = self._t["real_ports"]
        return socket.ntohs(t[t.Key(index)].value)

    def set_nat_ports(self, private_ifindex: int, public_ifindex: int) -> None:
        """Where NAT frames leave: towards the real servers, towards the clients."""
        t = self._t["tx_ports"]
        t[t.Key(0)] = t.Leaf(private_ifindex)
        t[t.Key(1)] = t.Leaf(public_ifindex)

    def set_nat_config(
        self,
        private_mac: bytes,
        public_mac: bytes,
        timeouts: tuple[int, int, int],
        hz: int,
    ) -> None:
        """Source MACs of both sides, the (tcp, tcpfin, udp) idle timeouts in seconds
        and the kernel's HZ (the program's NAT clock counts jiffies); keeps the clock
        offset."""
        t = self._t["nat_config"]
        old = NatConfig.from_buffer_copy(bytes(t[t.Key(0)]))
        tcp, fin, udp = (int(x * 1e9) for x in timeouts)
        value = NatConfig(
            (ct.c_uint8 * 6)(*private_mac),
            (ct.c_uint8 * 6)(*public_mac),
            1_000_000_000 // hz,
            tcp,
            fin,
            udp,
            old.clock_offset_ns,
        )
        t[t.Key(0)] = _cast(value, t.Leaf)

    def nat_config(self) -> NatConfig:
        t = self._t["nat_config"]
        return NatConfig.from_buffer_copy(bytes(t[t.Key(0)]))

    def advance_nat_clock(self, seconds: float) -> None:
        """Move the NAT flows' clock forward (tests: timeouts without waiting)."""
        t = self._t["nat_config"]
        value = NatConfig.from_buffer_copy(bytes(t[t.Key(0)]))
        value.clock_offset_ns += int(seconds * 1e9)
        t[t.Key(0)] = _cast(value, t.Leaf)

    def _ct_entries(self, name: str) -> list[tuple[int, FlowKey, FlowState]]:
        t = self._t[name]
        return ct_entries(array_values(t.map_fd, ct.sizeof(CtSet), ct_sets(self.sizes)))

    def nat_flows(self) -> dict[tuple, tuple[IPv4Address, int]]:
        """Reply 5-tuples (RIP, rport, client, cport, proto) -> (VIP, vport)."""
        return {_flow_tuple(k): v.rev_vip() for _age, k, v in self._ct_entries("nat_rev")}

    # state
    def flows(self) -> dict[tuple, tuple[int, IPv4Address]]:
        """Tracked flows (client, cport, VIP, vport, proto) -> (real index, its address)."""
        return {
            _flow_tuple(k): (v.real, IPv4Address(socket.ntohl(v.addr)))
            for _age, k, v in self._ct_entries("conntrack")
        }

    def carry_over(self, name: str, old_fd: int, old_sets: int) -> int:
        """Copy the entries of a connection table of another size (``old_fd``, a
        replaced pin with ``old_sets`` sets) into this program's, before it runs:
        each entry goes to its set in the new geometry, the youngest CT_WAYS of a set
        when more land there. Read twice while an old program may still write: only
        sets read the same both times are copied. Returns the entries copied. Any of
        CT_TABLES and CT_TABLES6 (IPv6 keys, ct6_hash)."""
        set_type = CtSet6 if name in CT_TABLES6 else CtSet
        size = ct.sizeof(set_type)
        first = array_values(old_fd, size, old_sets)
        second = array_values(old_fd, size, old_sets)
        stable = b"".join(
            first[i : i + size]
            for i in range(0, len(first), size)
            if first[i : i + size] == second[i : i + size]
        )
        raw, kept = fill_ct_sets(ct_sets(self.sizes), ct_entries(stable, set_type), set_type)
        self._write_sets(name, raw)
        return kept

    def _write_sets(self, name: str, raw: bytes) -> None:
        t = self._t[name]
        size = ct.sizeof(CtSet6 if name in CT_TABLES6 else CtSet)
        n = len(raw) // size
        step = 4096
        for i in range(0, n, step):
            m = min(step, n - i)
            keys = (t.Key * m)(*range(i, i + m))
            chunk = raw[i * size : (i + m) * size]
            t.items_update_batch(keys, (t.Leaf * m).from_buffer_copy(chunk))

    def ct_set(self, name: str, index: int) -> CtSet:
        """One set of a connection table (tests, diagnostics)."""
        t = self._t[name]
        return CtSet.from_buffer_copy(bytes(t[t.Key(index)]))

    def write_ct_set(self, name: str, index: int, value: CtSet) -> None:
        """Overwrite one set (tests: a set held by a writer, a crafted entry)."""
        t = self._t[name]
        t[t.Key(index)] = _cast(value, t.Leaf)

    def clear_flows(self) -> None:
        zero = bytes(ct.sizeof(CtSet) * ct_sets(self.sizes))
        for name in CT_TABLES:
            self._write_sets(name, zero)
        zero6 = bytes(ct.sizeof(CtSet6) * ct_sets(self.sizes))
        for name in ("conntrack6",) * self.ipv6 + ("nat_rev6",) * self.nat6:
            self._write_sets(name, zero6)
        self._t["persist"].clear()
        if self.ipv6:
            self._t["persist6"].clear()
        self._t["real_conns"].clear()  # the flows they counted are gone

    def age_persistence(self, seconds: float) -> None:
        """Make every persistence template ``seconds`` older (tests, operators)."""
        for name in ("persist", "persist6") if self.ipv6 else ("persist",):
            t = self._t[name]
            for k, v in list(t.items()):
                val = PersistState.from_buffer_copy(bytes(v))
                val.last_ns = max(0, val.last_ns - int(seconds * 1e9))
                t[k] = _cast(val, t.Leaf)

    def templates6(self) -> dict[tuple[int, IPv6Address], int]:
        """The IPv6 persistence templates: (service index, masked client) -> real index."""
        if not self.ipv6:
            return {}
        out = {}
        for k, v in self._t["persist6"].items():
            key = PersistKey6.from_buffer_copy(bytes(k))
            val = PersistState.from_buffer_copy(bytes(v))
            out[(key.service, IPv6Address(bytes(key.client)))] = val.real
        return out

    # counters (per-CPU, summed here)
    def _sum(self, name: str, index: int) -> CounterValues:
        t = self._t[name]
        per_cpu = t[t.Key(index)]
        vals = [Counters.from_buffer_copy(bytes(c)) for c in per_cpu]
        return CounterValues(
            sum(c.packets for c in vals),
            sum(c.bytes for c in vals),
            sum(c.new_flows for c in vals),
        )

    def service_counters(self, index: int) -> CounterValues:
        return self._sum("service_stats", index)

    def real_counters(self, index: int) -> CounterValues:
        return self._sum("real_stats", index)

    def global_counters(self) -> dict[str, int]:
        t = self._t["global_stats"]
        return {name: sum(int(x) for x in t[t.Key(i)]) for i, name in enumerate(GLOBAL_COUNTERS)}

    def reset_counters(self) -> None:
        for name in ("service_stats", "real_stats", "global_stats"):
            self._t[name].clear()
