"""IPVS generic-netlink messages as bytes: requests built and dump replies parsed with
``struct``, for the hot paths of :mod:`dataplane.ipvs`.

Why not pyroute2's NLA classes, which :func:`dataplane.ipvs.message` uses: building a
message through them costs about 120 µs of Python per request on this machine (about
3 ms under the VM's emulated CPU), which made applying 110,000 operations 8.9x slower
than ``ipvsadm-restore``; decoding a dump reply through them costs as much again. A
request here is a few ``struct.pack`` calls: the destination attributes are one
precompiled ``Struct`` per address family, and the service's key attributes, which
every destination request repeats, are built once per service. The bytes are exactly
pyroute2's (same attribute order, widths and padding, no ``NLA_F_NESTED``), which
``tests/unit/test_ipvs_codec.py`` checks operation by operation, so the kernel sees
the same requests as before.

Numbering is the kernel's (``include/uapi/linux/ip_vs.h``); the constants live in
:mod:`dataplane.ipvs`, which imports this module.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, htons, ntohs

from compiler.emit.ipvsadm import Destination, Service
from compiler.model import Network, Protocol

from .reconcile import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    Op,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
)

GENL_VERSION = 1
# IPVS_CMD_*
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON = 9, 10
CMD_SET_CONFIG = 12
# IPVS_CMD_ATTR_*
A_SERVICE, A_DEST, A_DAEMON = 1, 2, 3
A_TIMEOUT_TCP, A_TIMEOUT_TCP_FIN, A_TIMEOUT_UDP = 4, 5, 6
# IPVS_SVC_ATTR_*
S_AF, S_PROTOCOL, S_ADDR, S_PORT, S_FWMARK, S_SCHED_NAME = 1, 2, 3, 4, 5, 6
S_FLAGS, S_TIMEOUT, S_NETMASK, S_STATS, S_PE_NAME, S_STATS64 = 7, 8, 9, 10, 11, 12
# IPVS_DEST_ATTR_*
D_ADDR, D_PORT, D_FWD_METHOD, D_WEIGHT, D_U_THRESH, D_L_THRESH = 1, 2, 3, 4, 5, 6
D_ACTIVE_CONNS, D_INACT_CONNS, D_PERSIST_CONNS, D_STATS = 7, 8, 9, 10
D_ADDR_FAMILY, D_STATS64, D_TUN_TYPE = 11, 12, 13
# IPVS_DAEMON_ATTR_*
DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID = 1, 2, 3

SVC_F_PERSISTENT = 0x1
FWD_MASQ, FWD_LOCALNODE, FWD_TUNNEL, FWD_DROUTE = 0, 1, 2, 3
FWD_CODE = {Network.NAT: FWD_MASQ, Network.TUNNEL: FWD_TUNNEL, Network.DIRECT: FWD_DROUTE}
# a destination on a local address is switched to local delivery by the kernel;
# ipvsadm shows it as -g, and so do we
FWD_NETWORK = {
    FWD_MASQ: Network.NAT,
    FWD_LOCALNODE: Network.DIRECT,
    FWD_TUNNEL: Network.TUNNEL,
    FWD_DROUTE: Network.DIRECT,
}
AF = {4: AF_INET, 6: AF_INET6}
PROTO = {Protocol.TCP: IPPROTO_TCP, Protocol.UDP: IPPROTO_UDP}
ALL_ONES = IPv4Address(0xFFFFFFFF)
_ALL_ONES_U32 = int.from_bytes(ALL_ONES.packed, sys.byteorder)

NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_GENL = struct.Struct("=BBH")  # cmd, version, reserved
_NLA = struct.Struct("=HH")  # length, type
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_FLAGS = struct.Struct("=II")

# --------------------------------------------------------------------------- encoding


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _u16(kind: int, value: int) -> bytes:
    return _nla(kind, _U16.pack(value))


def _u32(kind: int, value: int) -> bytes:
    return _nla(kind, _U32.pack(value))


def _asciiz(kind: int, text: str) -> bytes:
    return _nla(kind, text.encode() + b"\0")


def netmask_u32(svc: Service) -> int:
    """``IPVS_SVC_ATTR_NETMASK``: the IPv4 mask's network-order bytes, or IPv6's prefix
    length as a plain u32 (the kernel checks 1..128; ipvsadm sends 128 by default)."""
    if svc.family == 6:
        return svc.pmask if isinstance(svc.pmask, int) else 128
    if svc.pmask is None or isinstance(svc.pmask, int):
        return _ALL_ONES_U32
    return int.from_bytes(svc.pmask.packed, sys.byteorder)


def _service_key(svc: Service) -> bytes:
    out = _u16(S_AF, AF[svc.family])
    if svc.fwmark:
        return out + _u32(S_FWMARK, svc.fwmark)
    assert svc.address is not None
    return (
        out
        + _u16(S_PROTOCOL, PROTO[svc.protocol])
        + _nla(S_ADDR, svc.address.packed)
        + _nla(S_PORT, struct.pack(">H", svc.port))
    )


def _service_full(svc: Service) -> bytes:
    return (
        _service_key(svc)
        + _asciiz(S_SCHED_NAME, svc.scheduler)
        + _nla(S_FLAGS, _FLAGS.pack(SVC_F_PERSISTENT if svc.persistent else 0, 0xFFFFFFFF))
        + _u32(S_TIMEOUT, svc.persistent)
        + _u32(S_NETMASK, netmask_u32(svc))
    )


# the whole IPVS_CMD_ATTR_DEST of an add or edit, by address family: nest header, then
# ADDR, PORT (network order), ADDR_FAMILY, FWD_METHOD, WEIGHT, U_THRESH, L_THRESH, TUN_TYPE
_DEST4 = struct.Struct("=HH HH4s HHH2x HHH2x HHI HHI HHI HHI HHB3x")
_DEST6 = struct.Struct("=HH HH16s HHH2x HHH2x HHI HHI HHI HHI HHB3x")
_DEST_FIELDS = {4: (_DEST4, 8), 6: (_DEST6, 20)}
# and of a delete: ADDR, PORT, ADDR_FAMILY
_DKEY4 = struct.Struct("=HH HH4s HHH2x HHH2x")
_DKEY6 = struct.Struct("=HH HH16s HHH2x HHH2x")


def _dest_full(dest: Destination) -> bytes:
    addr = dest.address
    layout, alen = _DEST_FIELDS[addr.version]
    return layout.pack(
        layout.size,
        A_DEST,
        alen,
        D_ADDR,
        addr.packed,
        6,
        D_PORT,
        htons(dest.port),
        6,
        D_ADDR_FAMILY,
        AF[addr.version],
        8,
        D_FWD_METHOD,
        FWD_CODE[dest.forwarding],
        8,
        D_WEIGHT,
        dest.weight,
        8,
        D_U_THRESH,
        0,
        8,
        D_L_THRESH,
        0,
        5,
        D_TUN_TYPE,
        0,  # ipip, what ipvsadm-save shows for -i
    )


def _dest_key(dest: Destination) -> bytes:
    addr = dest.address
    layout = _DKEY4 if addr.version == 4 else _DKEY6
    alen = 8 if addr.version == 4 else 20
    return layout.pack(
        layout.size,
        A_DEST,
        alen,
        D_ADDR,
        addr.packed,
        6,
        D_PORT,
        htons(dest.port),
        6,
        D_ADDR_FAMILY,
        AF[addr.version],
    )


def _genl(cmd: int) -> bytes:
    return _GENL.pack(cmd, GENL_VERSION, 0)


_NEW_DEST, _SET_DEST, _DEL_DEST = _genl(CMD_NEW_DEST), _genl(CMD_SET_DEST), _genl(CMD_DEL_DEST)


class Encoder:
    """Builds request bodies (generic-netlink header and attributes) for operations.

    Holds the last service's encoded key: the operations of one service come together
    in a reconcile, and each destination request repeats the service's key.
    """

    __slots__ = ("_key", "_svc")

    def __init__(self) -> None:
        self._svc: Service | None = None
        self._key = b""

    def _service_attr(self, svc: Service) -> bytes:
        if svc is not self._svc:
            inner = _service_key(svc)
            self._key = _NLA.pack(4 + len(inner), A_SERVICE) + inner
            self._svc = svc
        return self._key

    def body(self, op: Op) -> bytes:
        """Everything after the netlink header of the request that performs ``op``."""
        kind = type(op)
        if kind is AddDest:
            return _NEW_DEST + self._service_attr(op.service) + _dest_full(op.dest)
        if kind is EditDest:
            return _SET_DEST + self._service_attr(op.service) + _dest_full(op.dest)
        if kind is DeleteDest:
            return _DEL_DEST + self._service_attr(op.service) + _dest_key(op.dest)
        if kind is AddService or kind is EditService:
            cmd = CMD_NEW_SERVICE if kind is AddService else CMD_SET_SERVICE
            return _genl(cmd) + _nla(A_SERVICE, _service_full(op.service))
        if kind is DeleteService:
            return _genl(CMD_DEL_SERVICE) + _nla(A_SERVICE, _service_key(op.service))
        if kind is SetTimeouts:
            t = op.timeouts
            attrs = b"".join(
                _u32(a, v)
                for a, v in (
                    (A_TIMEOUT_TCP, t.tcp),
                    (A_TIMEOUT_TCP_FIN, t.tcpfin),
                    (A_TIMEOUT_UDP, t.udp),
                )
                if v  # absent = keep, as ipvsadm's 0
            )
            return _genl(CMD_SET_CONFIG) + attrs
        if kind is StartDaemon:
            d = op.daemon
            inner = (
                _u32(DAEMON_STATE, d.state.value)
                + _asciiz(DAEMON_MCAST_IFN, d.iface)
                + _u32(DAEMON_SYNC_ID, d.syncid)
            )
            return _genl(CMD_NEW_DAEMON) + _nla(A_DAEMON, inner)
        if kind is StopDaemon:
            return _genl(CMD_DEL_DAEMON) + _nla(A_DAEMON, _u32(DAEMON_STATE, op.state.value))
        raise TypeError(f"not an IPVS operation: {op!r}")


def request(family: int, flags: int, seq: int, body: bytes) -> bytes:
    """A whole netlink message: header (port id 0, the kernel fills it) and body."""
    return NLMSG_HDR.pack(16 + len(body), family, flags, seq, 0) + body


def service_key_attr(svc: Service) -> bytes:
    """``IPVS_CMD_ATTR_SERVICE`` holding the service's key: the body of a GET_DEST dump."""
    return _nla(A_SERVICE, _service_key(svc))


def get_dests_body(svc: Service) -> bytes:
    return _genl(CMD_GET_DEST) + service_key_attr(svc)


def get_services_body() -> bytes:
    return _genl(CMD_GET_SERVICE)


# --------------------------------------------------------------------------- decoding


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(type, sequence, start, end)`` of each netlink message in a datagram; the
    payload is ``buf[start + 16:end]``."""
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        if length < 16:
            return
        yield kind, seq, off, off + length
        off += (length + 3) & ~3


def attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    """The attributes between ``off`` and ``end`` by type (flag bits cleared)."""
    out = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        n, kind = unpack(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def top_attr(buf: bytes, start: int, end: int, kind: int) -> dict[int, bytes] | None:
    """The nested attribute ``kind`` of a generic-netlink message's payload, parsed."""
    off = start + 16 + 4  # netlink and generic-netlink headers
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        n, k = unpack(buf, off)
        if n < 4:
            break
        if k & 0x3FFF == kind:
            return attrs(buf, off + 4, off + n)
        off += (n + 3) & ~3
    return None


def u16(raw: bytes | None) -> int:
    return _U16.unpack(raw)[0] if raw else 0


def u32(raw: bytes | None) -> int:
    return _U32.unpack(raw)[0] if raw else 0


def be16(raw: bytes | None) -> int:
    return ntohs(_U16.unpack(raw)[0]) if raw else 0


def asciiz(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode() if raw else ""


_STATS_NAMES = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")


def stats(raw: bytes | None, wide: bool) -> dict[str, int]:
    """``IPVS_*_ATTR_STATS64`` (``wide``) or ``…_STATS``: counters by name; 0 if absent."""
    out = dict.fromkeys(_STATS_NAMES, 0)
    if raw:
        for kind, value in attrs(raw, 0, len(raw)).items():
            if 1 <= kind <= 5:
                if wide or kind >= 4:
                    out[_STATS_NAMES[kind - 1]] = _U64.unpack(value[:8])[0]
                else:
                    out[_STATS_NAMES[kind - 1]] = _U32.unpack(value[:4])[0]
    return out


def node_stats(node: dict[int, bytes], stats64: int, stats32: int) -> dict[str, int]:
    if stats64 in node:
        return stats(node[stats64], True)
    return stats(node.get(stats32), False)


def address(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    return IPv4Address(raw[:4]) if family == AF_INET else IPv6Address(raw[:16])


def decode_service(node: dict[int, bytes]) -> Service | None:
    """A service from a GET_SERVICE reply's attributes; ``None`` for a protocol the
    model lacks (SCTP …)."""
    family = 4 if u16(node.get(S_AF)) == AF_INET else 6
    fwmark = u32(node.get(S_FWMARK))
    addr = None
    port = 0
    protocol = Protocol.TCP
    if not fwmark:
        proto = u16(node.get(S_PROTOCOL))
        if proto == IPPROTO_TCP:
            protocol = Protocol.TCP
        elif proto == IPPROTO_UDP:
            protocol = Protocol.UDP
        else:
            return None
        addr = address(node[S_ADDR], AF[family])
        port = be16(node.get(S_PORT))
    flags = node.get(S_FLAGS)
    persistent = u32(node.get(S_TIMEOUT))
    if not flags or not (_U32.unpack(flags[:4])[0] & SVC_F_PERSISTENT):
        persistent = 0
    pmask: IPv4Address | int | None = None
    if persistent and family == 4:
        mask = IPv4Address(node[S_NETMASK][:4])
        if mask != ALL_ONES and int(mask):
            pmask = mask
    elif persistent and S_NETMASK in node:
        plen = u32(node[S_NETMASK])
        if 0 < plen < 128:
            pmask = plen
    return Service(
        fwmark=fwmark,
        family=family,
        protocol=protocol,
        address=addr,
        port=port,
        scheduler=asciiz(node.get(S_SCHED_NAME)),
        persistent=persistent,
        pmask=pmask,
        destinations=(),
        virtuals=(),
    )


def decode_dest(node: dict[int, bytes], svc_family: int) -> Destination:
    """A destination from a GET_DEST reply's attributes."""
    family = u16(node.get(D_ADDR_FAMILY)) or AF[svc_family]
    fwd = u32(node.get(D_FWD_METHOD)) & 0x7  # IP_VS_CONN_F_FWD_MASK
    return Destination(
        address(node[D_ADDR], family),
        be16(node.get(D_PORT)),
        FWD_NETWORK.get(fwd, Network.DIRECT),
        u32(node.get(D_WEIGHT)),
    )


# the fields DestDecoder reads: name, attribute path, value format (None: the size seen)
_READ_FIELDS = (
    ("addr", (D_ADDR,), None),
    ("port", (D_PORT,), "2s"),
    ("fwd", (D_FWD_METHOD,), "I"),
    ("weight", (D_WEIGHT,), "I"),
    ("family", (D_ADDR_FAMILY,), "H"),
)
_READ_STATS_FIELDS = (
    ("active_conns", (D_ACTIVE_CONNS,), "I"),
    ("inactive_conns", (D_INACT_CONNS,), "I"),
    *((name, (D_STATS64, i + 1), "Q") for i, name in enumerate(_STATS_NAMES)),
)


class DestDecoder:
    """Decodes GET_DEST replies, fast once it has seen one.

    The kernel writes every destination's attributes in the same order and sizes, so
    after parsing the first reply generically this learns where the fields it needs
    sit (address, port, forwarding, weight, family; with ``stats``, the connection
    counts and the 64-bit counters too) and reads them, with the message length and
    those attributes' own length/type headers as checks, in one precompiled
    ``Struct``. A reply whose length or headers differ from the learned ones (another
    kernel, a tunnel attribute added) is parsed generically.
    """

    __slots__ = ("_fields", "_headers", "_index", "_layout", "_length", "_stats")

    def __init__(self, *, stats: bool = False) -> None:
        self._stats = stats
        self._fields = _READ_FIELDS + (_READ_STATS_FIELDS if stats else ())
        self._layout: struct.Struct | None = None
        self._length = 0
        self._headers: tuple[int, ...] = ()
        self._index: dict[str, int] = {}  # field name -> position of its value

    def decode(self, buf: bytes, start: int, end: int, svc_family: int) -> Destination | None:
        """The destination of one reply (``None`` if it holds none)."""
        got = self.decode_with_stats(buf, start, end, svc_family)
        return None if got is None else got[0]

    def decode_with_stats(
        self, buf: bytes, start: int, end: int, svc_family: int
    ) -> tuple[Destination, dict[str, int]] | None:
        """The destination and, with ``stats``, its counters by name (else ``{}``)."""
        layout = self._layout
        if layout is not None and end - start == self._length:
            v = layout.unpack_from(buf, start)
            if v[0] == self._length and v[1::2] == self._headers:
                at = self._index
                dest = Destination(
                    address(v[at["addr"]], v[at["family"]] or AF[svc_family]),
                    int.from_bytes(v[at["port"]], "big"),
                    FWD_NETWORK.get(v[at["fwd"]] & 0x7, Network.DIRECT),
                    v[at["weight"]],
                )
                if not self._stats:
                    return dest, {}
                return dest, {name: v[at[name]] for name, _, _ in _READ_STATS_FIELDS}
        node = top_attr(buf, start, end, A_DEST)
        if node is None:
            return None
        if layout is None:
            self._learn(buf, start, end)
        counters: dict[str, int] = {}
        if self._stats:
            counters = node_stats(node, D_STATS64, D_STATS)
            counters["active_conns"] = u32(node.get(D_ACTIVE_CONNS))
            counters["inactive_conns"] = u32(node.get(D_INACT_CONNS))
        return decode_dest(node, svc_family), counters

    def _learn(self, buf: bytes, start: int, end: int) -> None:
        """Record where the fields sit in this reply: the ``Struct`` and its checks."""
        off = start + 20  # the IPVS_CMD_ATTR_DEST header, after netlink's and genl's
        n, kind = _NLA.unpack_from(buf, off)
        if kind & 0x3FFF != A_DEST:
            return
        where: dict[tuple[int, ...], tuple[int, int]] = {}  # path -> (offset, length)

        def walk(lo: int, hi: int, path: tuple[int, ...]) -> bool:
            while lo + 4 <= hi:
                alen, akind = _NLA.unpack_from(buf, lo)
                if alen < 4:
                    return False
                here = (*path, akind & 0x3FFF)
                where.setdefault(here, (lo - start, alen))
                if here == (D_STATS64,) and not walk(lo + 4, lo + alen, here):
                    return False
                lo += (alen + 3) & ~3
            return True

        if not walk(off + 4, min(off + n, end), ()):
            return
        fields = []
        for name, path, value in self._fields:
            if path not in where:
                return
            at, alen = where[path]
            value = value or f"{alen - 4}s"
            if struct.calcsize("=" + value) != alen - 4:
                return  # not the size this reads
            fields.append((at, alen, path[-1], name, value))
        fields.sort()
        fmt, pos, headers, index = "=I", 4, [], {}
        for k, (at, alen, kind_, name, value) in enumerate(fields):
            if at < pos:
                return
            fmt += f"{at - pos}xI{value}"
            pos = at + alen
            headers.append(_U32.unpack(_NLA.pack(alen, kind_))[0])
            index[name] = 2 + 2 * k
        self._layout = struct.Struct(fmt)
        self._length = end - start
        self._headers = tuple(headers)
        self._index = index


__all__ = [
    "DestDecoder",
    "Encoder",
    "attrs",
    "decode_dest",
    "decode_service",
    "get_dests_body",
    "get_services_body",
    "messages",
    "request",
    "service_key_attr",
    "top_attr",
]
