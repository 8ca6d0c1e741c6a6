"""The kernel IPVS adapter: read the table, apply reconcile operations, over generic netlink.

The only module that talks to the kernel's ``IPVS`` generic-netlink family. It reads
the services, destinations, timeouts and sync daemons into the same typed values the
compiler produces (:class:`KernelTable`), executes :mod:`dataplane.reconcile`
operations one netlink request each, and :func:`converge` ties it together: read,
diff, apply, read back, verify.

Messages are built here with pyroute2's generic-netlink and NLA classes (pinned
``pyroute2==0.9.7``), not with its ``IPVS``/``IPVSService``/``IPVSDest`` helpers,
whose gaps matter to us: an fwmark service added through ``IPVSService`` is refused
with EINVAL (no address family or netmask is sent without an address); the
``"update"`` verb sends a *delete*; ``IPVSDest.from_message`` starts from its
defaults, so a NAT destination reads back as forwarding method 3 (direct routing);
the netmask is typed as an IPv4 address, which cannot carry IPv6's prefix length;
timeouts and the daemon attributes are undecoded hex. So the attribute maps below are
our own, with the kernel's numbering (``include/uapi/linux/ip_vs.h``), addresses as
raw bytes and every field read from its own attribute.

Failure semantics: every operation is one netlink request, which the kernel applies
whole or not at all. :func:`apply` stops at the first refused request and raises
:class:`ApplyError` naming the operation, the errno and the operations already
applied; the table is then the old one plus those, which is consistent, and the
next :func:`converge` finishes the job.
"""

from __future__ import annotations

import errno as _errno
import socket as _socket
import struct as _struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from socket import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from compiler.emit.ipvsadm import Destination, Service
from compiler.model import Network, Protocol

from .reconcile import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    IPVSState,
    Op,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    SyncDaemon,
    SyncedTable,
    SyncState,
    Timeouts,
    dest_key,
    reconcile,
    service_key,
)

_NETLINK_GENERIC = 16
_NLMSG_ERROR = 2
FAMILY = "IPVS"
GENL_VERSION = 1

# IPVS_CMD_* (include/uapi/linux/ip_vs.h)
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
CMD_SET_CONFIG, CMD_GET_CONFIG = 12, 13

SVC_F_PERSISTENT = 0x1
# IP_VS_CONN_F_* forwarding codes
FWD_MASQ, FWD_LOCALNODE, FWD_TUNNEL, FWD_DROUTE = 0, 1, 2, 3
_FWD_CODE = {Network.NAT: FWD_MASQ, Network.TUNNEL: FWD_TUNNEL, Network.DIRECT: FWD_DROUTE}
# a destination on a local address is switched to local delivery by the kernel;
# ipvsadm shows it as -g, and so do we
_FWD_NETWORK = {
    FWD_MASQ: Network.NAT,
    FWD_LOCALNODE: Network.DIRECT,
    FWD_TUNNEL: Network.TUNNEL,
    FWD_DROUTE: Network.DIRECT,
}
_AF = {4: AF_INET, 6: AF_INET6}
_PROTO = {Protocol.TCP: IPPROTO_TCP, Protocol.UDP: IPPROTO_UDP}
_ALL_ONES = IPv4Address(0xFFFFFFFF)


class _stats(nla):
    nla_map = (
        ("IPVS_STATS_ATTR_UNSPEC", "none"),
        ("IPVS_STATS_ATTR_CONNS", "uint32"),
        ("IPVS_STATS_ATTR_INPKTS", "uint32"),
        ("IPVS_STATS_ATTR_OUTPKTS", "uint32"),
        ("IPVS_STATS_ATTR_INBYTES", "uint64"),
        ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
    )


class _stats64(nla):
    nla_map = (
        ("IPVS_STATS_ATTR_UNSPEC", "none"),
        ("IPVS_STATS_ATTR_CONNS", "uint64"),
        ("IPVS_STATS_ATTR_INPKTS", "uint64"),
        ("IPVS_STATS_ATTR_OUTPKTS", "uint64"),
        ("IPVS_STATS_ATTR_INBYTES", "uint64"),
        ("IPVS_STATS_ATTR_OUTBYTES", "uint64"),
    )


class ipvs_msg(genlmsg):
    """An IPVS generic-netlink message with the kernel's attribute numbering.

    Addresses are raw bytes (``cdata``): their family is the AF attribute's, which
    pyroute2's ``target`` type reads only when it precedes the address.
    ``IPVS_SVC_ATTR_NETMASK`` is a u32 whose meaning depends on the family (the IPv4
    mask's network-order bytes, or the IPv6 prefix length).
    """

    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    class service(nla):
        nla_map = (
            ("IPVS_SVC_ATTR_UNSPEC", "none"),
            ("IPVS_SVC_ATTR_AF", "uint16"),
            ("IPVS_SVC_ATTR_PROTOCOL", "uint16"),
            ("IPVS_SVC_ATTR_ADDR", "cdata"),
            ("IPVS_SVC_ATTR_PORT", "be16"),
            ("IPVS_SVC_ATTR_FWMARK", "uint32"),
            ("IPVS_SVC_ATTR_SCHED_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_FLAGS", "flags"),
            ("IPVS_SVC_ATTR_TIMEOUT", "uint32"),
            ("IPVS_SVC_ATTR_NETMASK", "uint32"),
            ("IPVS_SVC_ATTR_STATS", "stats"),
            ("IPVS_SVC_ATTR_PE_NAME", "asciiz"),
            ("IPVS_SVC_ATTR_STATS64", "stats64"),
        )

        class flags(nla):
            fields = (("flags", "I"), ("mask", "I"))

        stats = _stats
        stats64 = _stats64

    class dest(nla):
        nla_map = (
            ("IPVS_DEST_ATTR_UNSPEC", "none"),
            ("IPVS_DEST_ATTR_ADDR", "cdata"),
            ("IPVS_DEST_ATTR_PORT", "be16"),
            ("IPVS_DEST_ATTR_FWD_METHOD", "uint32"),
            ("IPVS_DEST_ATTR_WEIGHT", "uint32"),
            ("IPVS_DEST_ATTR_U_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_L_THRESH", "uint32"),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_INACT_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", "uint32"),
            ("IPVS_DEST_ATTR_STATS", "stats"),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", "uint16"),
            ("IPVS_DEST_ATTR_STATS64", "stats64"),
            ("IPVS_DEST_ATTR_TUN_TYPE", "uint8"),
            ("IPVS_DEST_ATTR_TUN_PORT", "be16"),
            ("IPVS_DEST_ATTR_TUN_FLAGS", "uint16"),
        )

        stats = _stats
        stats64 = _stats64

    class daemon(nla):
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
        )


# --------------------------------------------------------------------------- errors


class IPVSError(Exception):
    """Something about the kernel's IPVS went wrong."""


class IPVSUnavailable(IPVSError):
    """The kernel has no ``IPVS`` generic-netlink family (no ip_vs module loaded/built)."""


class ApplyError(IPVSError):
    """The kernel refused an operation; the ones before it were applied, none after."""

    def __init__(self, op: Op, code: int, applied: Sequence[Op], remaining: Sequence[Op]):
        self.op = op
        self.errno = code
        self.applied = tuple(applied)
        self.remaining = tuple(remaining)
        reason = _errno.errorcode.get(code, str(code))
        super().__init__(
            f"the kernel refused `{op}`: {_explain(op, code)} ({reason}); "
            f"{len(self.applied)} operation(s) applied before it, "
            f"{len(self.remaining)} after it not applied — the table is consistent, "
            "run apply again once the cause is fixed"
        )


class VerifyError(IPVSError):
    """After applying, the kernel's table still differs from the desired one."""

    def __init__(self, left: Sequence[Op]):
        self.left = tuple(left)
        shown = "; ".join(str(o) for o in self.left[:5])
        super().__init__(
            f"read-back differs from the desired state: {len(self.left)} operation(s) "
            f"still needed ({shown}{' …' if len(self.left) > 5 else ''})"
        )


def _explain(op: Op, code: int) -> str:
    if code == _errno.ENOENT and isinstance(op, AddService | EditService):
        return f"no scheduler module ip_vs_{op.service.scheduler}"
    if code == _errno.EEXIST:
        return "it exists already"
    if code == _errno.ESRCH:
        return "no such service"
    if code == _errno.ENOENT and isinstance(op, EditDest | DeleteDest):
        return "no such destination"
    return _errno_text(code)


def _errno_text(code: int) -> str:
    import os

    return os.strerror(code)


# --------------------------------------------------------------------------- observed


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of a service or destination (``ipvsadm -L --stats`` / ``-L`` columns)."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    active_conns: int = 0  # destinations only
    inactive_conns: int = 0


@dataclass(frozen=True, slots=True)
class KernelTable:
    """What the kernel holds: the state, counters by key, and what we cannot model."""

    state: IPVSState
    stats: dict[tuple, Stats] = field(default_factory=dict)  # service_key or (key, dest_key)
    unmanaged: tuple[str, ...] = ()  # services of other protocols (SCTP …), left alone


# --------------------------------------------------------------------------- encoding


def _netmask_u32(svc: Service) -> int:
    if svc.family == 6:
        return 128
    mask = svc.pmask if svc.pmask is not None else _ALL_ONES
    return int.from_bytes(mask.packed, sys.byteorder)  # the raw network-order bytes


def _service_key_attrs(svc: Service) -> list[tuple[str, object]]:
    attrs: list[tuple[str, object]] = [("IPVS_SVC_ATTR_AF", _AF[svc.family])]
    if svc.fwmark:
        attrs.append(("IPVS_SVC_ATTR_FWMARK", svc.fwmark))
    else:
        assert svc.address is not None
        attrs += [
            ("IPVS_SVC_ATTR_PROTOCOL", _PROTO[svc.protocol]),
            ("IPVS_SVC_ATTR_ADDR", svc.address.packed),
            ("IPVS_SVC_ATTR_PORT", svc.port),
        ]
    return attrs


def _service_attrs(svc: Service) -> list[tuple[str, object]]:
    flags = SVC_F_PERSISTENT if svc.persistent else 0
    return [
        *_service_key_attrs(svc),
        ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", svc.persistent),
        ("IPVS_SVC_ATTR_NETMASK", _netmask_u32(svc)),
    ]


def _dest_key_attrs(dest: Destination) -> list[tuple[str, object]]:
    return [
        ("IPVS_DEST_ATTR_ADDR", dest.address.packed),
        ("IPVS_DEST_ATTR_PORT", dest.port),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _AF[dest.address.version]),
    ]


def _dest_attrs(dest: Destination) -> list[tuple[str, object]]:
    return [
        *_dest_key_attrs(dest),
        ("IPVS_DEST_ATTR_FWD_METHOD", _FWD_CODE[dest.forwarding]),
        ("IPVS_DEST_ATTR_WEIGHT", dest.weight),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_TUN_TYPE", 0),  # ipip, what ipvsadm-save shows for -i
    ]


def _msg(cmd: int, attrs: list[tuple[str, object]]) -> ipvs_msg:
    m = ipvs_msg()
    m["cmd"] = cmd
    m["version"] = GENL_VERSION
    m["attrs"] = attrs
    return m


def _nested(attrs: list[tuple[str, object]]) -> dict:
    return {"attrs": attrs}


def message(op: Op) -> ipvs_msg:
    """The netlink request that performs one operation."""
    match op:
        case AddService(service=s) | EditService(service=s):
            cmd = CMD_NEW_SERVICE if isinstance(op, AddService) else CMD_SET_SERVICE
            return _msg(cmd, [("IPVS_CMD_ATTR_SERVICE", _nested(_service_attrs(s)))])
        case DeleteService(service=s):
            return _msg(
                CMD_DEL_SERVICE, [("IPVS_CMD_ATTR_SERVICE", _nested(_service_key_attrs(s)))]
            )
        case AddDest(service=s, dest=d) | EditDest(service=s, dest=d):
            cmd = CMD_NEW_DEST if isinstance(op, AddDest) else CMD_SET_DEST
            return _msg(
                cmd,
                [
                    ("IPVS_CMD_ATTR_SERVICE", _nested(_service_key_attrs(s))),
                    ("IPVS_CMD_ATTR_DEST", _nested(_dest_attrs(d))),
                ],
            )
        case DeleteDest(service=s, dest=d):
            return _msg(
                CMD_DEL_DEST,
                [
                    ("IPVS_CMD_ATTR_SERVICE", _nested(_service_key_attrs(s))),
                    ("IPVS_CMD_ATTR_DEST", _nested(_dest_key_attrs(d))),
                ],
            )
        case SetTimeouts(timeouts=t):
            attrs: list[tuple[str, object]] = []
            for name, value in (("TCP", t.tcp), ("TCP_FIN", t.tcpfin), ("UDP", t.udp)):
                if value:  # absent = keep, as ipvsadm's 0
                    attrs.append((f"IPVS_CMD_ATTR_TIMEOUT_{name}", value))
            return _msg(CMD_SET_CONFIG, attrs)
        case StartDaemon(daemon=d):
            return _msg(
                CMD_NEW_DAEMON,
                [
                    (
                        "IPVS_CMD_ATTR_DAEMON",
                        _nested(
                            [
                                ("IPVS_DAEMON_ATTR_STATE", d.state.value),
                                ("IPVS_DAEMON_ATTR_MCAST_IFN", d.iface),
                                ("IPVS_DAEMON_ATTR_SYNC_ID", d.syncid),
                            ]
                        ),
                    )
                ],
            )
        case StopDaemon(state=st):
            return _msg(
                CMD_DEL_DAEMON,
                [("IPVS_CMD_ATTR_DAEMON", _nested([("IPVS_DAEMON_ATTR_STATE", st.value)]))],
            )
    raise TypeError(f"not an IPVS operation: {op!r}")


# --------------------------------------------------------------------------- decoding


def _addr(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    return ip_address(raw[:4] if family == AF_INET else raw[:16])


def _stats_of(node, extra: dict | None = None) -> Stats:
    st = node.get_attr("IPVS_SVC_ATTR_STATS64") or node.get_attr("IPVS_DEST_ATTR_STATS64")
    if st is None:
        st = node.get_attr("IPVS_SVC_ATTR_STATS") or node.get_attr("IPVS_DEST_ATTR_STATS")
    vals = {}
    if st is not None:
        for k in ("CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES"):
            vals[k.lower()] = st.get_attr(f"IPVS_STATS_ATTR_{k}") or 0
    return Stats(**vals, **(extra or {}))


def _decode_service(node) -> Service | None:
    """A service from a GET_SERVICE reply; ``None`` for a protocol the model lacks."""
    family = {AF_INET: 4, AF_INET6: 6}[node.get_attr("IPVS_SVC_ATTR_AF")]
    fwmark = node.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
    address = None
    port = 0
    protocol = Protocol.TCP
    if not fwmark:
        proto = node.get_attr("IPVS_SVC_ATTR_PROTOCOL")
        if proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return None
        protocol = Protocol.TCP if proto == IPPROTO_TCP else Protocol.UDP
        address = _addr(node.get_attr("IPVS_SVC_ATTR_ADDR"), _AF[family])
        port = node.get_attr("IPVS_SVC_ATTR_PORT")
    flags = node.get_attr("IPVS_SVC_ATTR_FLAGS")
    persistent = node.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0
    if not (flags["flags"] & SVC_F_PERSISTENT):
        persistent = 0
    pmask = None
    if persistent and family == 4:
        raw = node.get_attr("IPVS_SVC_ATTR_NETMASK")
        mask = IPv4Address(raw.to_bytes(4, sys.byteorder))
        if mask not in (_ALL_ONES, IPv4Address(0)):
            pmask = mask
    return Service(
        fwmark=fwmark,
        family=family,
        protocol=protocol,
        address=address,
        port=port,
        scheduler=node.get_attr("IPVS_SVC_ATTR_SCHED_NAME"),
        persistent=persistent,
        pmask=pmask,
        destinations=(),
        virtuals=(),
    )


def _decode_dest(node, svc_family: int) -> Destination:
    family = node.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") or _AF[svc_family]
    fwd = node.get_attr("IPVS_DEST_ATTR_FWD_METHOD") & 0x7  # IP_VS_CONN_F_FWD_MASK
    return Destination(
        _addr(node.get_attr("IPVS_DEST_ATTR_ADDR"), family),
        node.get_attr("IPVS_DEST_ATTR_PORT"),
        _FWD_NETWORK.get(fwd, Network.DIRECT),
        node.get_attr("IPVS_DEST_ATTR_WEIGHT"),
    )


# --------------------------------------------------------------------------- the socket


class IPVSKernel:
    """A generic-netlink socket bound to the kernel's IPVS family.

    Use as a context manager. Raises :class:`IPVSUnavailable` when the family does
    not exist (no ip_vs in this kernel).
    """

    def __init__(self) -> None:
        self._raw: _socket.socket | None = None  # for pipelined writes (apply(window=N))
        self._seq = 1
        self._sock = GenericNetlinkSocket()
        try:
            self._sock.bind(FAMILY, ipvs_msg)
        except NetlinkError as err:
            self._sock.close()
            if err.code == _errno.ENOENT:
                raise IPVSUnavailable(
                    "this kernel has no IPVS (generic netlink family `IPVS` not found; "
                    "is the ip_vs module loaded?)"
                ) from err
            raise IPVSError(f"cannot open IPVS netlink: {err}") from err

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        self._sock.close()

    def __enter__(self) -> IPVSKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, msg: ipvs_msg, flags: int) -> tuple:
        return tuple(self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags))

    def _dump(self, cmd: int, attrs: list[tuple[str, object]] | None = None) -> tuple:
        return self._request(_msg(cmd, attrs or []), NLM_F_REQUEST | NLM_F_DUMP)

    # ------------------------------------------------------------------ reading

    def read(self) -> KernelTable:
        """The whole kernel state: services and destinations, timeouts, sync daemons."""
        services: list[Service] = []
        stats: dict[tuple, Stats] = {}
        unmanaged: list[str] = []
        for reply in self._dump(CMD_GET_SERVICE):
            node = reply.get_attr("IPVS_CMD_ATTR_SERVICE")
            svc = _decode_service(node)
            if svc is None:
                proto = node.get_attr("IPVS_SVC_ATTR_PROTOCOL")
                unmanaged.append(f"protocol {proto} service (not TCP/UDP): left alone")
                continue
            key = service_key(svc)
            stats[key] = _stats_of(node)
            dests = []
            for dreply in self._dump(
                CMD_GET_DEST, [("IPVS_CMD_ATTR_SERVICE", _nested(_service_key_attrs(svc)))]
            ):
                dnode = dreply.get_attr("IPVS_CMD_ATTR_DEST")
                d = _decode_dest(dnode, svc.family)
                dests.append(d)
                stats[(key, dest_key(d))] = _stats_of(
                    dnode,
                    {
                        "active_conns": dnode.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
                        "inactive_conns": dnode.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0,
                    },
                )
            services.append(
                Service(**{**_fields(svc), "destinations": tuple(sorted(dests, key=dest_key))})
            )
        state = IPVSState(tuple(services), self.read_timeouts(), self.read_daemons())
        return KernelTable(state, stats, tuple(unmanaged))

    def read_timeouts(self) -> Timeouts:
        (reply, *_) = self._request(_msg(CMD_GET_CONFIG, []), NLM_F_REQUEST)
        return Timeouts(
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP") or 0,
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN") or 0,
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP") or 0,
        )

    def read_daemons(self) -> tuple[SyncDaemon, ...]:
        out = []
        for reply in self._dump(CMD_GET_DAEMON):
            node = reply.get_attr("IPVS_CMD_ATTR_DAEMON")
            if node is None:
                continue
            out.append(
                SyncDaemon(
                    SyncState(node.get_attr("IPVS_DAEMON_ATTR_STATE")),
                    node.get_attr("IPVS_DAEMON_ATTR_MCAST_IFN"),
                    node.get_attr("IPVS_DAEMON_ATTR_SYNC_ID") or 0,
                )
            )
        out.sort(key=lambda d: d.state.value)
        return tuple(out)

    # ------------------------------------------------------------------ writing

    def execute(self, op: Op) -> None:
        """One operation, one request; raises ``NetlinkError`` if the kernel refuses it."""
        self._request(message(op), NLM_F_REQUEST | NLM_F_ACK)

    def apply(self, ops: Iterable[Op], *, window: int = 1) -> tuple[Op, ...]:
        """Execute operations in order; stop at the first refusal with :class:`ApplyError`.

        ``window = 1`` (the default): one request, wait for its ack, the next — nothing
        after a refused operation is attempted. ``window = N``: up to N requests are
        written at once and their acks read together (far fewer round trips for a
        large table); the kernel still applies each one whole and in order, but the
        ones already written after a refused one are attempted too. The error then
        counts those that succeeded as applied and the rest as not applied; no
        further window is sent. Either way the table is consistent and the next
        reconcile converges.
        """
        ops = tuple(ops)
        if window <= 1:
            for i, op in enumerate(ops):
                try:
                    self.execute(op)
                except NetlinkError as err:
                    raise ApplyError(op, err.code, ops[:i], ops[i + 1 :]) from err
            return ops
        applied: list[Op] = []
        for start in range(0, len(ops), window):
            chunk = ops[start : start + window]
            codes = self._pipeline(chunk)
            failed = [i for i, code in enumerate(codes) if code]
            if failed:
                first = failed[0]
                applied += [op for op, code in zip(chunk, codes, strict=True) if not code]
                rest = [
                    op
                    for op, code in zip(chunk[first + 1 :], codes[first + 1 :], strict=True)
                    if code
                ]
                raise ApplyError(
                    chunk[first], codes[first], applied, [*rest, *ops[start + window :]]
                )
            applied += chunk
        return ops

    def _pipeline(self, chunk: Sequence[Op]) -> list[int]:
        """Write the chunk's requests in one send, read one ack each: their errnos."""
        if self._raw is None:
            self._raw = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _NETLINK_GENERIC)
            self._raw.bind((0, 0))
        data = bytearray()
        base = self._seq
        for i, op in enumerate(chunk):
            m = message(op)
            m["header"]["type"] = self._sock.prid
            m["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
            m["header"]["sequence_number"] = base + i
            m.encode()
            data += m.data
        self._seq += len(chunk)
        self._raw.sendall(data)
        codes: dict[int, int] = {}
        while len(codes) < len(chunk):
            buf = self._raw.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                length, kind, _flags, seq, _pid = _struct.unpack_from("=IHHII", buf, off)
                if kind == _NLMSG_ERROR and base <= seq < base + len(chunk):
                    (err,) = _struct.unpack_from("=i", buf, off + 16)
                    codes[seq - base] = -err
                off += (length + 3) & ~3
                if length == 0:
                    break
        return [codes[i] for i in range(len(chunk))]


def _fields(svc: Service) -> dict:
    return {f: getattr(svc, f) for f in svc.__slots__}


WINDOW = 64  # requests in flight per write in converge(); see IPVSKernel.apply


def converge(
    kernel: IPVSKernel, desired: IPVSState, *, verify: bool = True, window: int = WINDOW
) -> tuple[Op, ...]:
    """Read the kernel, apply the diff to ``desired``, read back and verify; the ops applied."""
    ops = reconcile(desired, kernel.read().state)
    kernel.apply(ops, window=window)
    if verify:
        left = reconcile(desired, kernel.read().state)
        if left:
            raise VerifyError(left)
    return ops


class Reconciler:
    """Keeps the last known kernel table; each sync diffs only what changed.

    What the runtime daemon uses: :meth:`adopt` reads the kernel once at start (what is
    there is adopted, not flushed), :meth:`sync` makes the kernel hold a desired state
    by diffing it against the table held in memory (:class:`~dataplane.reconcile.SyncedTable`,
    O(changed services), no kernel read) and applying the operations, and
    :meth:`verify` is the periodic safety net: a full read, diff and repair, for
    whatever changed the kernel behind our back.

    The operations are exactly :func:`~dataplane.reconcile.reconcile`'s against the
    kernel's table. When the kernel refuses one, :class:`ApplyError` propagates and the
    held table is dropped: the next :meth:`sync` reads the kernel first.
    """

    def __init__(self, kernel: IPVSKernel, *, window: int = WINDOW) -> None:
        self._kernel = kernel
        self._window = window
        self._table: SyncedTable | None = None
        self._desired: IPVSState | None = None  # the last state sync was asked for

    def adopt(self) -> IPVSState:
        """Read the kernel's table and hold it as the starting point."""
        state = self._kernel.read().state
        self._table = SyncedTable(state)
        return state

    def sync(self, desired: IPVSState) -> tuple[Op, ...]:
        """Apply the minimal operations that make the kernel hold ``desired``; return them."""
        self._desired = desired
        if self._table is None:
            self.adopt()
        table = self._table
        assert table is not None
        plan = table.diff(desired)
        if plan.ops:
            try:
                self._kernel.apply(plan.ops, window=self._window)
            except IPVSError:
                self._table = None  # the kernel holds part of the plan: read it next time
                raise
        table.commit(plan)
        return plan.ops

    def verify(self) -> tuple[Op, ...]:
        """Re-read the kernel and repair any difference from the last desired state.

        Before any :meth:`sync` there is nothing to repair to: it only re-reads.
        """
        self.adopt()
        if self._desired is None:
            return ()
        return self.sync(self._desired)


__all__ = [
    "ApplyError",
    "IPVSError",
    "IPVSKernel",
    "IPVSUnavailable",
    "KernelTable",
    "Reconciler",
    "Stats",
    "VerifyError",
    "converge",
    "message",
]
