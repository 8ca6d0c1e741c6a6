"""The kernel IPVS adapter: read the table, apply reconcile operations, over generic netlink.

The only module that talks to the kernel's ``IPVS`` generic-netlink family. It reads
the services, destinations, timeouts and sync daemons into the same typed values the
compiler produces (:class:`KernelTable`), executes :mod:`dataplane.reconcile`
operations one netlink request each, and :func:`converge` ties it together: read,
diff, apply, read back, verify. :class:`Reconciler` is the daemon's form: it holds
the table it applied and diffs each new desired state against that, without reading
the kernel (O(changed services)).

The table is read and written with :mod:`dataplane.ipvs_codec`'s struct-built
messages over a plain netlink socket (the same bytes as pyroute2's, about 75x less
Python per request). :func:`message` builds the reference request with pyroute2's
generic-netlink and NLA classes (pinned ``pyroute2==0.9.7``), which also resolve the
family and read the timeouts and daemons. Not with pyroute2's ``IPVS``,
``IPVSService`` and ``IPVSDest`` helpers, whose gaps matter to us: an fwmark service
added through ``IPVSService`` is refused with EINVAL (no address family or netmask
is sent without an address); the ``"update"`` verb sends a *delete*;
``IPVSDest.from_message`` starts from its defaults, so a NAT destination reads back
as forwarding method 3 (direct routing); the netmask is typed as an IPv4 address,
which cannot carry IPv6's prefix length; timeouts and the daemon attributes are
undecoded hex. So the attribute maps are our own, with the kernel's numbering
(``include/uapi/linux/ip_vs.h``), addresses as raw bytes and every field read from
its own attribute.

Failure semantics: every operation is one netlink request, which the kernel applies
whole or not at all. :func:`apply` stops at the first refused request and raises
:class:`ApplyError` naming the operation, the errno and the operations already
applied; the table is then the old one plus those, which is consistent, and the
next :func:`converge` finishes the job.
"""

from __future__ import annotations

import errno as _errno
import gc
import socket as _socket
import struct as _struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from socket import AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from compiler.emit.ipvsadm import Destination, Service
from compiler.model import Network, Protocol

from . import ipvs_codec as codec
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
_NLMSG_DONE = 3
_RECV = 1 << 16  # a netlink dump datagram is at most 32 KiB
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
    if svc.family == 6:  # the prefix length, a plain u32
        return svc.pmask if isinstance(svc.pmask, int) else 128
    mask = svc.pmask if isinstance(svc.pmask, IPv4Address) else _ALL_ONES
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


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a large read or diff.

    Reading or diffing 10,000 services allocates some 10^5 acyclic objects, and the
    collector, triggered by the allocations, traverses the growing heap again and
    again: 45% of a read's Python time, 25% of a diff's, measured natively. Nothing
    made here is cyclic; the collector runs again afterwards as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- the socket


class IPVSKernel:
    """A generic-netlink socket bound to the kernel's IPVS family.

    Use as a context manager. Raises :class:`IPVSUnavailable` when the family does
    not exist (no ip_vs in this kernel). pyroute2 resolves the family's id (and reads
    the timeouts and sync daemons, which are small); the table itself is read and
    written over a plain netlink socket with :mod:`dataplane.ipvs_codec`'s
    struct-built messages, which are the same bytes as pyroute2's at a fraction of
    the Python cost.
    """

    def __init__(self) -> None:
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
        self._family = self._sock.prid
        self._raw = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _NETLINK_GENERIC)
        self._raw.bind((0, 0))
        self._seq = 1
        self._encoder = codec.Encoder()

    def close(self) -> None:
        self._raw.close()
        self._sock.close()

    def __enter__(self) -> IPVSKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, msg: ipvs_msg, flags: int) -> tuple:
        return tuple(self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags))

    def _dump(self, body: bytes) -> Iterator[tuple[bytes, int, int]]:
        """Each reply of a dump request as ``(datagram, start, end)``.

        One dump at a time per socket (the kernel answers a second with EBUSY), so the
        replies are read to NLMSG_DONE before the next request.
        """
        seq = self._seq
        self._seq += 1
        self._raw.send(codec.request(self._family, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        while True:
            buf = self._raw.recv(_RECV)
            for kind, got, start, end in codec.messages(buf):
                if got != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    (err,) = _struct.unpack_from("=i", buf, start + 16)
                    if err:
                        raise NetlinkError(-err)
                    continue
                yield buf, start, end

    # ------------------------------------------------------------------ reading

    def read(self, *, stats: bool = True) -> KernelTable:
        """The whole kernel state: services and destinations, timeouts, sync daemons.

        One GET_SERVICE dump, then one GET_DEST dump per service. ``stats=False``
        skips the counters (what a reconcile needs is only the table).
        """
        with _collector_paused():
            return self._read(stats)

    def _read(self, stats: bool) -> KernelTable:
        found: list[Service] = []
        counters: dict[tuple, Stats] = {}
        unmanaged: list[str] = []
        for buf, start, end in self._dump(codec.get_services_body()):
            node = codec.top_attr(buf, start, end, codec.A_SERVICE)
            if node is None:
                continue
            svc = codec.decode_service(node)
            if svc is None:
                proto = codec.u16(node.get(codec.S_PROTOCOL))
                unmanaged.append(f"protocol {proto} service (not TCP/UDP): left alone")
                continue
            found.append(svc)
            if stats:
                counters[service_key(svc)] = Stats(
                    **codec.node_stats(node, codec.S_STATS64, codec.S_STATS)
                )
        services = []
        fast = codec.DestDecoder()
        counting = codec.DestDecoder(stats=True)
        for svc in found:
            key = service_key(svc) if stats else None
            dests = []
            if not stats:
                for buf, start, end in self._dump(codec.get_dests_body(svc)):
                    d = fast.decode(buf, start, end, svc.family)
                    if d is not None:
                        dests.append(d)
                dests.sort(key=dest_key)
                services.append(replace(svc, destinations=tuple(dests)))
                continue
            for buf, start, end in self._dump(codec.get_dests_body(svc)):
                got = counting.decode_with_stats(buf, start, end, svc.family)
                if got is not None:
                    d, counts = got
                    dests.append(d)
                    counters[(key, dest_key(d))] = Stats(**counts)
            dests.sort(key=dest_key)
            services.append(replace(svc, destinations=tuple(dests)))
        state = IPVSState(tuple(services), self.read_timeouts(), self.read_daemons())
        return KernelTable(state, counters, tuple(unmanaged))

    def read_timeouts(self) -> Timeouts:
        (reply, *_) = self._request(_msg(CMD_GET_CONFIG, []), NLM_F_REQUEST)
        return Timeouts(
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP") or 0,
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN") or 0,
            reply.get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP") or 0,
        )

    def read_daemons(self) -> tuple[SyncDaemon, ...]:
        out = []
        for reply in self._request(_msg(CMD_GET_DAEMON, []), NLM_F_REQUEST | NLM_F_DUMP):
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
        (code,) = self._pipeline((op,))
        if code:
            raise NetlinkError(code)

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
        """Write the chunk's requests in one send; their errnos (0 = applied).

        Only the last request asks for an ack; the others are answered only if the
        kernel refuses them (netlink acks an error whatever the flags). The kernel
        handles a write's requests in order before ``send`` returns, so once the last
        one's ack is read every refusal before it has been read too: one reply per
        write instead of one per request.
        """
        body = self._encoder.body
        pack = codec.NLMSG_HDR.pack
        family, seq0, last = self._family, self._seq, len(chunk) - 1
        parts = []
        for i, op in enumerate(chunk):
            b = body(op)
            flags = NLM_F_REQUEST | NLM_F_ACK if i == last else NLM_F_REQUEST
            parts.append(pack(16 + len(b), family, flags, seq0 + i, 0))
            parts.append(b)
        self._seq += len(chunk)
        self._raw.send(b"".join(parts))
        codes = [0] * len(chunk)
        while True:
            buf = self._raw.recv(_RECV)
            for kind, seq, start, _end in codec.messages(buf):
                if kind == _NLMSG_ERROR and seq0 <= seq <= seq0 + last:
                    (err,) = _struct.unpack_from("=i", buf, start + 16)
                    codes[seq - seq0] = -err
                    if seq == seq0 + last:
                        return codes


WINDOW = 64  # requests in flight per write in converge(); see IPVSKernel.apply


def converge(
    kernel: IPVSKernel, desired: IPVSState, *, verify: bool = True, window: int = WINDOW
) -> tuple[Op, ...]:
    """Read the kernel, apply the diff to ``desired``, read back and verify; the ops applied."""
    with _collector_paused():
        ops = reconcile(desired, kernel.read(stats=False).state)
        kernel.apply(ops, window=window)
        if verify:
            left = reconcile(desired, kernel.read(stats=False).state)
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

    For O(changes) from a health-check event to the kernel, pass the states of a
    :class:`~dataplane.reconcile.DesiredTable` (``desired.state(overrides)``): it
    rebuilds only the touched services and tells the diff which ones they are.
    ``desired_state(config, overrides)`` per event rebuilds all 10,000 services of a
    large table and makes the diff compare each (docs/performance.md, IPVS).
    """

    def __init__(self, kernel: IPVSKernel, *, window: int = WINDOW) -> None:
        self._kernel = kernel
        self._window = window
        self._table: SyncedTable | None = None
        self._desired: IPVSState | None = None  # the last state sync was asked for

    def adopt(self) -> IPVSState:
        """Read the kernel's table and hold it as the starting point."""
        state = self._kernel.read(stats=False).state
        self._table = SyncedTable(state)
        return state

    def sync(self, desired: IPVSState) -> tuple[Op, ...]:
        """Apply the minimal operations that make the kernel hold ``desired``; return them."""
        self._desired = desired
        if self._table is None:
            self.adopt()
        table = self._table
        assert table is not None
        with _collector_paused():
            plan = table.diff(desired)
            if plan.ops:
                try:
                    self._kernel.apply(plan.ops, window=self._window)
                except BaseException:
                    # the kernel may hold part of the plan (a refusal, or a socket
                    # error between writes): read it again next time
                    self._table = None
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
