"""Live NAT traffic through the XDP program: real sockets, real veths, native XDP on
both of the director's interfaces.

    client (eth0) ---- (eth0) director (eth1) ---- bridge ---- rs1, rs2

The client and the director share the public segment (the VIP is on the director's
eth0, so it answers ARP for it). The real servers sit on a private segment whose
default route is the director's nat_router address; they run tests/netns/servers.py
on ports 8080/tcp and 5353/udp, the VIP's 80 and 53 mapped to them. The director's
eth0 runs lb_ingress (requests: rewritten, redirected to eth1), eth1 runs
lb_nat_return (replies: rewritten back, redirected to eth0); IP forwarding stays off
in the director, so every reply that reaches the client went through our program.
Frames redirected into a veth arrive only when the peer runs an XDP program: the
client's eth0 and the bridge's director port run an XDP_PASS one; the senders turn
checksum offload off (docs: /work/shared/docs/architecture.md).

Each connection's real server is predicted from the loader's Maglev table and the
program's flow hash, so the assertions are exact per connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from compiler import compile_text
from dataplane.plan import Sizes, plan
from dataplane.xdp import XdpDataplane
from tests.netns.daemon_lab import nat_config, nat_segment, nat_virtual
from tests.netns.topo import Netns, Topology, inside, start_client
from tests.netns.xdp_lab import (
    XdpLab,
    check_held_connection_survives_reweighting,
    check_many_tcp_through_port_mapping,
    check_port_unreachable_translated,
    check_udp_through_port_mapping,
    link_mac,
)

pytestmark = pytest.mark.netns

VIP = "198.18.30.100"
CLIENT_ADDR = "198.18.30.2"
DIRECTOR = "198.18.30.1"
NAT_ROUTER = "198.18.31.254"
REALS = {"rs1": ("198.18.31.11", 1), "rs2": ("198.18.31.12", 2)}
TCP, UDP = 6, 17


CHECK = ('send = "x"', 'expect = "y"')
CONFIG = nat_config(
    NAT_ROUTER,
    nat_virtual("web", vip=VIP, port=80, reals=REALS, real_port=8080),
    nat_virtual("dns", vip=VIP, port=53, protocol="udp", reals=REALS, real_port=5353, lines=CHECK),
    nat_virtual(
        "closed", vip=VIP, port=54, protocol="udp", reals=REALS, real_port=5454, lines=CHECK
    ),
)


@dataclass
class Lab(XdpLab):
    director: Netns | None = None
    client_ns: Netns | None = None


@pytest.fixture(scope="module")
def built() -> Iterator[Lab]:
    result = compile_text("nat.cf", CONFIG)
    assert result.ok, result.diagnostics
    p = plan(result.config, Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021))
    assert p.features == {"nat"}
    dp = XdpDataplane(p, pin_dir=None)
    with (
        Topology("xdp-nat") as t,
        nat_segment(
            t,
            client=CLIENT_ADDR,
            director=DIRECTOR,
            vip=VIP,
            nat_router=NAT_ROUTER,
            reals={name: addr for name, (addr, _w) in REALS.items()},
        ) as seg,
    ):
        lb, client = seg.director, seg.client
        macs = {}
        for name, (addr, _w) in REALS.items():
            t.serve(seg.reals[name], name=name, tcp=[8080], udp=[5353])
            macs[IPv4Address(addr)] = link_mac(seg.reals[name])
        dp.sync(macs)
        with inside(lb):
            dp.configure_nat(
                private_ifindex=socket.if_nametoindex("eth1"),
                public_ifindex=socket.if_nametoindex("eth0"),
                private_mac=link_mac(lb, "eth1"),
                public_mac=link_mac(lb),
            )
            assert dp.attach_nat("eth1") == "native"
            assert dp.attach("eth0") == "native"
        proc = start_client(client)
        yield Lab(dp, p, macs, proc, CLIENT_ADDR, director=lb, client_ns=client)
    dp.close()


@pytest.fixture
def lab(built: Lab) -> Lab:
    return built.fresh()


def test_many_tcp_connections_complete_through_port_mapping(lab: Lab) -> None:
    reals = {name: address for name, (address, _weight) in REALS.items()}
    web = lab.service("web")
    check_many_tcp_through_port_mapping(lab, web, CLIENT_ADDR, reals, lab.dp.maps.nat_flows)


def test_udp_exchanges_complete_through_port_mapping(lab: Lab) -> None:
    check_udp_through_port_mapping(lab, lab.service("dns"), CLIENT_ADDR, VIP)


def test_long_lived_connection_survives_a_weight_change(lab: Lab) -> None:
    check_held_connection_survives_reweighting(lab, lab.service("web"), CLIENT_ADDR, VIP)


def test_port_unreachable_from_a_real_server_reaches_the_client_socket(lab: Lab) -> None:
    check_port_unreachable_translated(lab, lab.client_ns, VIP)


def test_the_directors_own_traffic_to_a_real_server_goes_to_its_kernel(lab: Lab) -> None:
    """A health check from the director (nat_router address) to a real server: the
    replies match no NAT flow and are passed to the director's stack."""
    rip = REALS["rs1"][0]
    code = (
        f"import socket; s = socket.create_connection(('{rip}', 8080), timeout=5); "
        "print(s.recv(100).decode())"
    )
    # IP forwarding is off: a reply translated by mistake would have left through eth0
    assert lab.director.python(code).strip() == "rs1"
    assert lab.dp.maps.global_counters()["pass_nat_no_flow"] >= 2
    # no NAT flow of the director's own (nat_out may count late packets of earlier
    # tests' connections; the director's connection has no reverse entry)
    assert not [k for k in lab.dp.maps.nat_flows() if k[2] == IPv4Address(NAT_ROUTER)]
