"""The real servers' IPIP decap program (dataplane/bpf/decap.bpf.c) through
BPF_PROG_RUN: exact output bytes for a tunnelled packet, untouched for the rest,
and the load balancer's own tunnel output decapsulates back to the client's packet."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dataplane.decap import Decap
from dataplane.libbpf import prog_run

from .conftest import Lb
from .packets import CLIENT_MAC, DIRECTOR_MAC, TCP, UDP, check_ipv4, eth, ipv4, tcp, udp_packet

pytestmark = pytest.mark.bpf
XDP_PASS = 2
RS = "198.18.1.1"
IPIP = 4


@pytest.fixture(scope="module")
def decap() -> Iterator[Decap]:
    d = Decap([IPv4Address(RS)])
    yield d
    d.close()


def inner_tcp(payload: bytes = b"hello") -> bytes:
    return ipv4(
        "198.18.9.5", "198.18.0.10", TCP, tcp("198.18.9.5", "198.18.0.10", 41000, 80, 0x18, payload)
    )


def test_tunnelled_packet_loses_its_outer_header(decap: Decap) -> None:
    before = decap.counters()["decapsulated"]
    inner = inner_tcp()
    frame = eth(ipv4("172.16.3.4", RS, IPIP, inner))
    out = prog_run(decap.prog_fd, frame)
    assert out.retval == XDP_PASS
    assert out.data == eth(inner)  # same MACs, the inner packet byte for byte
    check_ipv4(out.data[14:])
    assert decap.counters()["decapsulated"] == before + 1


@pytest.mark.parametrize(
    "frame",
    [
        udp_packet("198.18.9.5", RS, 5000, 53),  # plain UDP to us
        eth(ipv4("172.16.3.4", "198.18.1.2", IPIP, inner_tcp())),  # IPIP, not our endpoint
        eth(ipv4("172.16.3.4", RS, UDP, inner_tcp())),  # not IPIP
        eth(b"\x00" * 28, ethertype=0x0806),  # ARP
        eth(ipv4("172.16.3.4", RS, IPIP, inner_tcp()))[:30],  # truncated outer header
    ],
    ids=["udp", "other-endpoint", "not-ipip", "arp", "truncated"],
)
def test_other_packets_pass_untouched(decap: Decap, frame: bytes) -> None:
    out = prog_run(decap.prog_fd, frame)
    assert (out.retval, out.data) == (XDP_PASS, frame)


@pytest.mark.parametrize(
    "outer",
    [
        ipv4("172.16.3.4", RS, IPIP, inner_tcp(), options=b"\x01\x01\x01\x00"),
        ipv4("172.16.3.4", RS, IPIP, inner_tcp(), frag=0x2000),
        ipv4("172.16.3.4", RS, IPIP, inner_tcp()[:12]),
    ],
    ids=["outer-options", "outer-fragment", "short-inner"],
)
def test_malformed_tunnel_packets_pass_untouched(decap: Decap, outer: bytes) -> None:
    before = decap.counters()["malformed"]
    frame = eth(outer)
    out = prog_run(decap.prog_fd, frame)
    assert (out.retval, out.data) == (XDP_PASS, frame)
    assert decap.counters()["malformed"] == before + 1


def test_load_balancer_tunnel_output_decapsulates_to_the_client_packet(
    decap: Decap, lb: Lb
) -> None:
    """Director then real server: what the client sent is what the stack gets."""
    dns = lb.service("dns")
    sent = udp_packet("198.18.9.5", str(dns.vip), 5353, dns.port, b"query")
    tunnelled = lb.run(sent)
    assert tunnelled.data[23] == IPIP
    rs = str(IPv4Address(tunnelled.data[30:34]))
    if rs not in decap.endpoints():
        decap.add_endpoint(IPv4Address(rs))
    out = prog_run(decap.prog_fd, tunnelled.data)
    assert out.retval == XDP_PASS
    assert out.data[14:] == sent[14:]
    assert out.data[12:14] == b"\x08\x00" and out.data[6:12] == DIRECTOR_MAC
    assert out.data[:6] != CLIENT_MAC
