"""The struct-built IPVS netlink codec against pyroute2's NLA classes.

Requests: for random operations of every kind, :class:`dataplane.ipvs_codec.Encoder`
must produce byte for byte the message :func:`dataplane.ipvs.message` builds with
pyroute2 (which the VM tests prove the kernel accepts). Replies: kernel-shaped
GET_SERVICE / GET_DEST messages, encoded with pyroute2 from the kernel's attribute
layout (addresses as the 16-byte ``nf_inet_addr``, counters, thresholds), must decode
to the values they hold.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.emit.ipvsadm import Destination, Service
from compiler.model import Network, Protocol
from dataplane import ipvs_codec as codec
from dataplane.ipvs import ipvs_msg, message
from dataplane.reconcile import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    SyncDaemon,
    SyncState,
    Timeouts,
)

pytestmark = pytest.mark.unit

v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def services(draw) -> Service:
    family = draw(st.sampled_from([4, 6]))
    fwmark = draw(st.sampled_from([0, 0, draw(st.integers(1, 2**31 - 1))]))
    persistent = draw(st.sampled_from([0, 0, draw(st.integers(1, 86400 * 31))]))
    pmask: IPv4Address | int | None = None
    if persistent and family == 4:
        pmask = draw(st.none() | v4.filter(lambda m: int(m) not in (0, 2**32 - 1)))
    elif persistent:  # IPv6: a prefix length (128, the default, reads as None)
        pmask = draw(st.none() | st.integers(1, 127))
    return Service(
        fwmark=fwmark,
        family=family,
        protocol=Protocol.TCP if fwmark else draw(st.sampled_from(list(Protocol))),
        address=None if fwmark else draw(v4 if family == 4 else v6),
        port=0 if fwmark else draw(st.integers(0, 65535)),
        scheduler=draw(st.sampled_from(["rr", "wlc", "sh", "mh", "wrr"])),
        persistent=persistent,
        pmask=pmask,
        destinations=(),
        virtuals=(),
    )


destinations = st.builds(
    Destination,
    address=v4 | v6,
    port=st.integers(0, 65535),
    forwarding=st.sampled_from(list(Network)),
    weight=st.integers(0, 65535),
)
ops = st.one_of(
    st.builds(AddService, services()),
    st.builds(EditService, services()),
    st.builds(DeleteService, services()),
    st.builds(AddDest, services(), destinations),
    st.builds(EditDest, services(), destinations),
    st.builds(DeleteDest, services(), destinations),
    st.builds(
        SetTimeouts,
        st.builds(Timeouts, st.integers(0, 9999), st.integers(0, 9999), st.integers(0, 9999)),
    ),
    st.builds(
        StartDaemon,
        st.builds(
            SyncDaemon,
            st.sampled_from(list(SyncState)),
            st.sampled_from(["eth0", "bond0.100", "x"]),
            st.integers(0, 255),
        ),
    ),
    st.builds(StopDaemon, st.sampled_from(list(SyncState))),
)


def pyroute2_bytes(op, family: int, flags: int, seq: int) -> bytes:
    m = message(op)
    m["header"]["type"] = family
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m.encode()
    return bytes(m.data)


@settings(max_examples=500, deadline=None)
@given(st.lists(ops, min_size=1, max_size=5), st.integers(16, 0xFFFF), st.integers(1, 2**31))
def test_requests_are_pyroute2s_bytes(batch, family, seq) -> None:
    enc = codec.Encoder()  # one encoder across ops: its per-service cache must not leak
    for op in batch:
        assert codec.request(family, 5, seq, enc.body(op)) == pyroute2_bytes(op, family, 5, seq)


def test_shared_service_key_is_reused_and_correct() -> None:
    svc = Service(0, 4, Protocol.UDP, IPv4Address("198.18.0.1"), 53, "rr", 0, None, (), ())
    other = Service(7, 6, Protocol.TCP, None, 0, "rr", 0, None, (), ())
    d = Destination(IPv4Address("198.19.0.1"), 53, Network.NAT, 3)
    enc = codec.Encoder()
    for op in (AddDest(svc, d), EditDest(svc, d), AddDest(other, d), DeleteDest(svc, d)):
        assert codec.request(30, 5, 1, enc.body(op)) == pyroute2_bytes(op, 30, 5, 1)


def reply(cmd: int, attrs: list) -> bytes:
    m = ipvs_msg()
    m["cmd"] = cmd
    m["version"] = 1
    m["attrs"] = attrs
    m["header"]["type"] = 30
    m["header"]["flags"] = 2
    m["header"]["sequence_number"] = 9
    m.encode()
    return bytes(m.data)


def stats_attr(name: str, base: int) -> tuple:
    return (
        name,
        {
            "attrs": [
                ("IPVS_STATS_ATTR_CONNS", base),
                ("IPVS_STATS_ATTR_INPKTS", base + 1),
                ("IPVS_STATS_ATTR_OUTPKTS", base + 2),
                ("IPVS_STATS_ATTR_INBYTES", base + 3),
                ("IPVS_STATS_ATTR_OUTBYTES", base + 4),
            ]
        },
    )


@settings(max_examples=300, deadline=None)
@given(services(), st.lists(destinations, max_size=3), st.integers(0, 2**31))
def test_replies_decode_to_their_values(svc, dests, base) -> None:
    pad = 16 - (4 if svc.family == 4 else 16)
    sattrs = [("IPVS_SVC_ATTR_AF", codec.AF[svc.family])]
    if svc.fwmark:
        sattrs.append(("IPVS_SVC_ATTR_FWMARK", svc.fwmark))
    sattrs += [
        ("IPVS_SVC_ATTR_PROTOCOL", codec.PROTO[svc.protocol]),
        ("IPVS_SVC_ATTR_ADDR", (svc.address.packed if svc.address else b"") + b"\0" * pad),
        ("IPVS_SVC_ATTR_PORT", svc.port),
        ("IPVS_SVC_ATTR_SCHED_NAME", svc.scheduler),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": 1 if svc.persistent else 0, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", svc.persistent),
        ("IPVS_SVC_ATTR_NETMASK", codec.netmask_u32(svc)),
        stats_attr("IPVS_SVC_ATTR_STATS", base),
        stats_attr("IPVS_SVC_ATTR_STATS64", base),
    ]
    if svc.fwmark:  # the kernel reports an fwmark service with a zero address
        sattrs[2:5] = [("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_ADDR", b"\0" * 16)]
    buf = reply(codec.CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": sattrs})])
    ((kind, seq, start, end),) = codec.messages(buf)
    assert (kind, seq) == (30, 9)
    node = codec.top_attr(buf, start, end, codec.A_SERVICE)
    assert codec.decode_service(node) == svc
    assert codec.node_stats(node, codec.S_STATS64, codec.S_STATS) == {
        "conns": base,
        "inpkts": base + 1,
        "outpkts": base + 2,
        "inbytes": base + 3,
        "outbytes": base + 4,
    }
    datagram = b""
    for d in dests:
        dattrs = [
            ("IPVS_DEST_ATTR_ADDR", d.address.packed + b"\0" * (16 - len(d.address.packed))),
            ("IPVS_DEST_ATTR_PORT", d.port),
            ("IPVS_DEST_ATTR_FWD_METHOD", codec.FWD_CODE[d.forwarding] | 0x100),
            ("IPVS_DEST_ATTR_WEIGHT", d.weight),
            ("IPVS_DEST_ATTR_U_THRESH", 0),
            ("IPVS_DEST_ATTR_L_THRESH", 0),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", 4),
            ("IPVS_DEST_ATTR_INACT_CONNS", 5),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", 6),
            stats_attr("IPVS_DEST_ATTR_STATS", base),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", codec.AF[d.address.version]),
            stats_attr("IPVS_DEST_ATTR_STATS64", base),
        ]
        datagram += reply(codec.CMD_NEW_DEST, [("IPVS_CMD_ATTR_DEST", {"attrs": dattrs})])
    got = [
        codec.decode_dest(codec.top_attr(datagram, s, e, codec.A_DEST), svc.family)
        for _k, _q, s, e in codec.messages(datagram)
    ]
    assert got == dests


def test_a_protocol_the_model_lacks_is_not_a_service() -> None:
    sctp = {
        codec.S_AF: (2).to_bytes(2, "little"),
        codec.S_PROTOCOL: (132).to_bytes(2, "little"),
    }
    assert codec.decode_service(sctp) is None


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([4, 6]), st.lists(destinations, min_size=1, max_size=6), st.data())
def test_the_learned_dest_layout_decodes_like_the_generic_parser(family, dests, data) -> None:
    """DestDecoder learns the layout from the first reply and reads the rest with one
    Struct; a reply laid out differently (an extra attribute) still decodes right."""
    replies = []
    for d in dests:
        dattrs = [
            ("IPVS_DEST_ATTR_ADDR", d.address.packed + b"\0" * (16 - len(d.address.packed))),
            ("IPVS_DEST_ATTR_PORT", d.port),
            ("IPVS_DEST_ATTR_FWD_METHOD", codec.FWD_CODE[d.forwarding]),
            ("IPVS_DEST_ATTR_WEIGHT", d.weight),
            ("IPVS_DEST_ATTR_U_THRESH", 0),
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", 4),
            ("IPVS_DEST_ATTR_INACT_CONNS", 5),
            ("IPVS_DEST_ATTR_ADDR_FAMILY", codec.AF[d.address.version]),
            stats_attr("IPVS_DEST_ATTR_STATS64", 7),
        ]
        if data.draw(st.booleans()):  # a different layout: an attribute more, or moved
            dattrs.insert(data.draw(st.integers(0, len(dattrs))), ("IPVS_DEST_ATTR_L_THRESH", 1))
        replies.append(reply(codec.CMD_NEW_DEST, [("IPVS_CMD_ATTR_DEST", {"attrs": dattrs})]))
    fast = codec.DestDecoder()
    counting = codec.DestDecoder(stats=True)
    counters = {"conns": 7, "inpkts": 8, "outpkts": 9, "inbytes": 10, "outbytes": 11}
    counters |= {"active_conns": 4, "inactive_conns": 5}
    for d, buf in zip(dests, replies, strict=True):
        ((_k, _q, start, end),) = codec.messages(buf)
        assert fast.decode(buf, start, end, family) == d
        assert codec.decode_dest(codec.top_attr(buf, start, end, codec.A_DEST), family) == d
        assert counting.decode_with_stats(buf, start, end, family) == (d, counters)
    if len(dests) > 1:  # the layout was learned and used
        assert fast._layout is not None and counting._layout is not None


def test_an_ipv6_netmask_is_the_prefix_length_as_a_plain_u32() -> None:
    """IPVS_SVC_ATTR_NETMASK of an AF_INET6 service holds the prefix length (the
    kernel checks 1..128), not a mask: ipvsadm sends 128 unless -M says otherwise."""
    base = dict(fwmark=0, family=6, protocol=Protocol.TCP, address=IPv6Address("2001:2::10"))
    base |= dict(port=80, scheduler="wlc", persistent=60, destinations=(), virtuals=())
    assert codec.netmask_u32(Service(**base, pmask=64)) == 64
    assert codec.netmask_u32(Service(**base, pmask=None)) == 128
    body = codec.Encoder().body(AddService(Service(**base, pmask=48)))
    netmask = struct.pack("=HHI", 8, codec.S_NETMASK, 48)
    assert netmask in body
