"""Live IPv6 NAT traffic through the XDP program (nat6.h): real sockets, real veths,
native XDP on both of the director's interfaces; the IPv6 twin of test_xdp_nat.py.

    client (eth0) ---- (eth0) director (eth1) ---- bridge ---- rs1, rs2
    2001:2:0:40::/64                2001:2:0:41::/64

The client and the director share the public segment (the VIP, a /128 on the
director's eth0, is answered for by the director's neighbour discovery, which our
program passes to its stack). The real servers sit on the private segment with the
director's nat_router address as their default route and run tests/netns/servers.py
on [::]:8080/tcp and [::]:5353/udp, the VIP's 80 and 53 mapped to them. The director's
eth0 runs lb_ingress, eth1 lb_nat_return; IPv6 forwarding stays off in the director,
so every reply that reaches the client went through our program. Frames redirected
into a veth arrive only when the peer runs an XDP program: the client's eth0 and the
bridge's director port run an XDP_PASS one; the senders compute checksums in
software. Every address is nodad (no duplicate address detection to wait for).

Each connection's real server is predicted from the loader's Maglev table and the
program's flow hash over the IPv6 5-tuple, so the assertions are exact per
connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address

import pytest
from bcc import BPF

from compiler import compile_text
from dataplane.plan import Sizes, plan
from dataplane.xdp import XdpDataplane, attach_xdp
from tests.netns.topo import Netns, Topology, inside, start_client
from tests.netns.xdp_lab import (
    PASS_PROGRAM,
    XdpLab,
    check_held_connection_survives_reweighting,
    check_many_tcp_through_port_mapping,
    check_port_unreachable_translated,
    check_udp_through_port_mapping,
    link_mac,
)

pytestmark = pytest.mark.netns

PUBLIC, PRIVATE = "2001:2:0:40::", "2001:2:0:41::"
VIP = f"{PUBLIC}100"
CLIENT_ADDR = f"{PUBLIC}2"
DIRECTOR = f"{PUBLIC}1"
NAT_ROUTER = f"{PRIVATE}fe"
REALS = {"rs1": (f"{PRIVATE}11", 1), "rs2": (f"{PRIVATE}12", 2)}
TCP, UDP = 6, 17


def _servers(port: int) -> str:
    return "".join(
        f"  server {n} {{\n    address = {a}\n    active = 1\n    port = {port}\n"
        f"    weight = {w}\n  }}\n"
        for n, (a, w) in REALS.items()
    )


def _virtual(name: str, port: int, rport: int, proto: str) -> str:
    udp = f'  protocol = {proto}\n  send = "x"\n  expect = "y"\n' if proto == "udp" else ""
    return (
        f"virtual {name} {{\n  active = 1\n  address = {VIP} eth0\n  port = {port}\n"
        f"  scheduler = wrr\n{udp}{_servers(rport)}}}\n"
    )


CONFIG = (
    f"network = nat\nnat_router = {NAT_ROUTER} eth1\n"
    + _virtual("web6", 80, 8080, "tcp")
    + _virtual("dns6", 53, 5353, "udp")
    + _virtual("closed6", 54, 5454, "udp")
)


@dataclass
class Lab(XdpLab):
    director: Netns | None = None
    client_ns: Netns | None = None
    real_ns: dict[str, Netns] = field(default_factory=dict)


def _addr6(ns: Netns, dev: str, cidr: str) -> None:
    ns.ip("-6", "addr", "add", cidr, "dev", dev, "nodad")


@pytest.fixture(scope="module")
def built() -> Iterator[Lab]:
    result = compile_text("nat6.cf", CONFIG)
    assert result.ok, result.diagnostics
    sizes = Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021)
    p = plan(result.config, sizes, ipv6=True)
    assert p.features == {"nat", "ipv6"}
    dp = XdpDataplane(p, pin_dir=None)
    passer = BPF(text=PASS_PROGRAM)
    pass_fn = passer.load_func(b"xdp_pass", BPF.XDP)
    with Topology("xdp-nat6") as t:
        client, lb, sw = t.netns("client"), t.netns("director"), t.netns("private")
        t.veth(client, "eth0", lb, "eth0")
        t.bridge(sw)
        t.veth(lb, "eth1", sw, "director")
        t.attach(sw, "director")
        _addr6(client, "eth0", f"{CLIENT_ADDR}/64")
        client.no_tx_offload("eth0")
        _addr6(lb, "eth0", f"{DIRECTOR}/64")
        _addr6(lb, "eth0", f"{VIP}/128")
        _addr6(lb, "eth1", f"{NAT_ROUTER}/64")
        lb.sysctl("net.ipv6.conf.all.forwarding", 0)  # replies reach the client through XDP only
        macs, spaces = {}, {}
        for name, (addr, _w) in REALS.items():
            rs = spaces[name] = t.netns(name)
            t.veth(rs, "eth0", sw, name)
            t.attach(sw, name)
            _addr6(rs, "eth0", f"{addr}/64")
            rs.ip("-6", "route", "add", "default", "via", NAT_ROUTER)
            rs.no_tx_offload("eth0")  # their replies cross XDP
            t.serve(rs, name=name, tcp=[8080], udp=[5353], bind="::")
            macs[IPv6Address(addr)] = link_mac(rs)
        with inside(client):  # redirected to the director's eth0: arrives here
            assert attach_xdp(pass_fn, "eth0") == "native"
        with inside(sw):  # redirected to the director's eth1: arrives here
            assert attach_xdp(pass_fn, "director") == "native"
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
        lab = Lab(
            dp, p, macs, start_client(client), CLIENT_ADDR, director=lb, client_ns=client,
            real_ns=spaces,
        )  # fmt: skip
        # Warm up neighbour discovery (the client's for the VIP, each real server's for
        # nat_router, link-local addresses on fresh veths): a SYN whose answer waits
        # for it is retransmitted.
        names = lab.ask(op="names", dst=VIP, port=80, n=20, tolerant=True, timeout=10)
        assert {"rs1", "rs2"} <= set(names)
        yield lab
    passer.cleanup()
    dp.close()


@pytest.fixture
def lab(built: Lab) -> Lab:
    return built.fresh()


def test_many_tcp_connections_complete_through_port_mapping(lab: Lab) -> None:
    reals = {name: address for name, (address, _weight) in REALS.items()}
    web = lab.service("web6")
    check_many_tcp_through_port_mapping(lab, web, CLIENT_ADDR, reals, lab.dp.maps.nat_flows6)
    assert lab.dp.maps.global_counters()["pass_hop_limit"] == 0


def test_udp_exchanges_complete_through_port_mapping(lab: Lab) -> None:
    check_udp_through_port_mapping(lab, lab.service("dns6"), CLIENT_ADDR, VIP)


def test_long_lived_connection_survives_a_weight_change(lab: Lab) -> None:
    check_held_connection_survives_reweighting(lab, lab.service("web6"), CLIENT_ADDR, VIP)


def test_port_unreachable_from_a_real_server_reaches_the_client_socket(lab: Lab) -> None:
    check_port_unreachable_translated(lab, lab.client_ns, VIP)


def test_the_directors_own_traffic_to_a_real_server_goes_to_its_kernel(lab: Lab) -> None:
    """A health check from the director (its nat_router address) to a real server: the
    replies match no NAT flow and are passed to the director's stack."""
    rip = REALS["rs1"][0]
    code = (
        f"import socket; s = socket.create_connection(('{rip}', 8080), timeout=5); "
        "print(s.recv(100).decode())"
    )
    assert lab.director.python(code).strip() == "rs1"  # IPv6 forwarding is off: NATed
    # replies would have left through eth0 instead
    assert lab.dp.maps.global_counters()["pass_nat_no_flow"] >= 2
    assert not [k for k in lab.dp.maps.nat_flows6() if k[2] == IPv6Address(NAT_ROUTER)]


def test_packet_too_big_about_a_reply_lowers_the_real_servers_path_mtu(lab: Lab) -> None:
    """Path-MTU discovery through the director: a router on the public side (played
    by the client's namespace with a raw ICMPv6 socket; the kernel computes the
    checksum) cannot forward a reply [VIP]:53 -> client and sends Packet Too Big
    (MTU 1280) to the VIP. The director translates it (outer destination and quoted
    source become the real server's [RIP]:5353) and the real server's kernel, which
    checks the ICMPv6 checksum over the new pseudo header, lowers its path MTU
    towards the client; the other real server hears nothing."""
    dns = lab.service("dns6")
    [[sport, name]] = lab.ask(op="udp", src=CLIENT_ADDR, dst=VIP, port=53, n=1, ports=True)
    assert name == lab.expected(dns, sport)
    other = next(n for n in REALS if n != name)

    def path_mtu(real: str) -> str:
        route = lab.real_ns[real].ip("-6", "route", "get", CLIENT_ADDR)
        return route.split(" mtu ")[1].split()[0] if " mtu " in route else "none"

    assert path_mtu(name) == path_mtu(other) == "none"
    code = (
        "import socket, struct\n"
        f"vip, client = socket.inet_pton(socket.AF_INET6, '{VIP}'), "
        f"socket.inet_pton(socket.AF_INET6, '{CLIENT_ADDR}')\n"
        "quote = struct.pack('!IHBB', 6 << 28, 1408, 17, 64) + vip + client\n"
        f"quote += struct.pack('!HHHH', 53, {sport}, 1408, 0x1234) + bytes(64)\n"
        "msg = struct.pack('!BBHI', 2, 0, 0, 1280) + quote\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n"
        f"s.sendto(msg, ('{VIP}', 0))\n"
    )
    lab.client_ns.python(code)
    for _ in range(50):  # the real server's kernel takes it within a few ms
        if path_mtu(name) != "none":
            break
        time.sleep(0.05)
    assert path_mtu(name) == "1280"
    assert path_mtu(other) == "none"
    assert lab.dp.maps.global_counters()["nat_icmp"] == 1
