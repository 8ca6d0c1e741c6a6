"""Golden packets for IPv6 NAT (nat6.h) through BPF_PROG_RUN: both directions
(lb_ingress on the public side, lb_nat_return on the private side), exact output bytes
built independently by tests/bpf/packets.py (full checksums over the IPv6 pseudo
header, checked again on every output), port mapping, the hop limit, UDP's checksum
(0 is invalid in IPv6), FIN/RST and idle timeouts on the NAT clock (moved forward
through nat_config), ICMPv6 errors both ways, and everything that is not ours or is
malformed going to the kernel untouched (or dropped), never misrouted. An IPv4 NAT
service shares the program.

BPF_PROG_RUN does not transmit: a redirected packet comes back with the verdict
XDP_REDIRECT (the devmap slots point at ``lo``) and its rewritten bytes."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from compiler import compile_text
from dataplane.libbpf import RunResult, prog_run
from dataplane.plan import Plan, Sizes, flow_hash, plan
from dataplane.xdp import XdpDataplane

from .packets import (
    ACK,
    CLIENT_MAC,
    DIRECTOR_MAC,
    ETH_IP6,
    ICMP6,
    PSH,
    RST,
    SYN,
    TCP,
    UDP,
    _pseudo,
    check_ipv4,
    check_ipv6,
    csum,
    eth,
    icmp6,
    ipv4,
    ipv6,
    tcp,
    udp,
)

pytestmark = pytest.mark.bpf
XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
FIN = 0x01
VIP = "2001:2::10"
CLIENT = "2001:2:9::5"
NAT_ROUTER = "2001:2:64::fe"
ROUTER = "2001:2:9::1"  # a router on the public path
PRIVATE_ROUTER = "2001:2:64::1"  # ... and one on the private segment
RIPS = {"rs1": "2001:2:64::11", "rs2": "2001:2:64::12"}
MACS: dict = {
    IPv6Address(a): bytes.fromhex(f"0200000060{i:02x}") for i, a in enumerate(RIPS.values())
}
VIP4, RIP4, CLIENT4 = "198.18.0.10", "198.18.64.11", "198.18.9.5"
MACS[IPv4Address(RIP4)] = bytes.fromhex("020000004011")
PRIVATE_MAC = bytes.fromhex("0200000000fe")  # the director's private interface
PUBLIC_MAC = DIRECTOR_MAC  # ... and its public one
TIMEOUTS = (60, 10, 30)  # tcp, tcpfin, udp as set below


def servers(port: int) -> str:
    return "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n"
        f"        port = {port}\n        weight = 1\n    }}\n"
        for n, a in RIPS.items()
    )


CONFIG = f"""network = nat
nat_router = {NAT_ROUTER} eth1
tcp_timeout = {TIMEOUTS[0]}
tcpfin_timeout = {TIMEOUTS[1]}
udp_timeout = {TIMEOUTS[2]}

virtual web6 {{
    active = 1
    address = {VIP} eth0
    port = 80
    scheduler = wrr
{servers(8080)}}}

virtual dns6 {{
    active = 1
    address = {VIP} eth0
    port = 53
    protocol = udp
    scheduler = rr
    send = "x"
    expect = "y"
{servers(5353)}}}

virtual web4 {{
    active = 1
    address = {VIP4} eth0:1
    port = 80
    scheduler = wrr
    server r4 {{
        address = {RIP4}
        active = 1
        port = 8081
    }}
}}
"""


@dataclass
class Nat6:
    dp: XdpDataplane
    plan: Plan

    def inbound(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.prog_fd, packet)

    def reply(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.nat_fn.fd, packet)  # type: ignore[attr-defined]

    def rip(self, service: str, sport: int, proto: int, dport: int) -> str:
        """The real server the Maglev table gives this client port (plan.flow_hash
        over the IPv6 5-tuple, as the program computes it)."""
        svc = next(s for s in self.plan.services if s.name == service)
        h = flow_hash(IPv6Address(CLIENT), IPv6Address(VIP), sport, dport, proto)
        rid = int(self.dp.table(svc, {})[h % self.plan.sizes.ring_size])
        return str(next(r for r in svc.reals if r.index == rid).address)

    def counters(self) -> dict[str, int]:
        return self.dp.maps.global_counters()


def nat6_plan(config: str = CONFIG) -> Plan:
    result = compile_text("nat6.cf", config)
    assert result.ok, result.diagnostics
    sizes = Sizes(max_services=8, max_reals=16, ct_size=1021, persist_size=509)
    return plan(result.config, sizes, ipv6=True)


@pytest.fixture(scope="module")
def compiled() -> Iterator[Nat6]:
    p = nat6_plan()
    dp = XdpDataplane(p, pin_dir=None)
    dp.sync(MACS)
    dp.configure_nat(
        private_ifindex=1, public_ifindex=1, private_mac=PRIVATE_MAC, public_mac=PUBLIC_MAC
    )
    yield Nat6(dp, p)
    dp.close()


@pytest.fixture
def nat(compiled: Nat6) -> Nat6:
    compiled.dp.maps.clear_flows()
    compiled.dp.maps.reset_counters()
    return compiled


# --- packets as the client sends them, as the real server must get them, and back --


def frame6(src, dst, nh, l4: bytes, macs, hlim: int = 64) -> bytes:
    return eth(ipv6(src, dst, nh, l4, hlim=hlim), dst=macs[0], src=macs[1], ethertype=ETH_IP6)


def to_vip(sport, flags=SYN, port=80, payload=b"", hlim=64) -> bytes:
    l4 = tcp(CLIENT, VIP, sport, port, flags, payload)
    return frame6(CLIENT, VIP, TCP, l4, (DIRECTOR_MAC, CLIENT_MAC), hlim)


def at_real(rip, sport, flags=SYN, port=8080, payload=b"", hlim=63) -> bytes:
    l4 = tcp(CLIENT, rip, sport, port, flags, payload)
    return frame6(CLIENT, rip, TCP, l4, (MACS[IPv6Address(rip)], PRIVATE_MAC), hlim)


def from_real(rip, sport, flags=SYN | ACK, port=8080, payload=b"", hlim=64) -> bytes:
    l4 = tcp(rip, CLIENT, port, sport, flags, payload, seq=7)
    return frame6(rip, CLIENT, TCP, l4, (PRIVATE_MAC, MACS[IPv6Address(rip)]), hlim)


def at_client(sport, flags=SYN | ACK, port=80, payload=b"", hlim=63) -> bytes:
    l4 = tcp(VIP, CLIENT, port, sport, flags, payload, seq=7)
    return frame6(VIP, CLIENT, TCP, l4, (CLIENT_MAC, PUBLIC_MAC), hlim)


def udp6(src, dst, sport, dport, payload, macs, hlim=64, zero_checksum=False) -> bytes:
    l4 = udp(src, dst, sport, dport, payload)
    if zero_checksum:
        l4 = l4[:6] + b"\0\0" + l4[8:]
    return frame6(src, dst, UDP, l4, macs, hlim)


def checked(out: RunResult) -> bytes:
    """The output, after checking its checksum over the IPv6 pseudo header
    independently (an incremental update gone wrong fails here)."""
    assert out.data[12:14] == b"\x86\xdd"
    check_ipv6(out.data[14:])
    return out.data


# --- the plan -------------------------------------------------------------------


def test_plan_accepts_nat_for_ipv6_with_port_mapping() -> None:
    p = nat6_plan()
    assert p.features == {"ipv6", "nat"}
    web = next(s for s in p.services if s.name == "web6")
    assert [r.port for r in web.reals] == [8080, 8080]
    assert p.timeouts == TIMEOUTS


def test_a_program_without_ipv6_nat_has_none_of_it() -> None:
    """The feature switch: nat6.h and nat_rev6 only with both nat and ipv6."""
    from dataplane.bpf.render import render

    text = render(nat6_plan())
    assert "LB_INLINE int lb_nat_return6(struct xdp_md *ctx)\n{" in text
    assert "nat_rev6, CT_SETS" in text
    v4 = nat6_plan(CONFIG.split("virtual web6")[0] + "virtual web4" + CONFIG.split("web4")[1])
    assert v4.features == {"nat"}
    assert "nat_rev6" not in render(v4) and "forward_nat6" not in render(v4)
    direct6 = nat6_plan(CONFIG.replace("network = nat", "network = direct"))
    assert direct6.features == {"direct", "ipv6"}
    text = render(direct6)
    assert "nat_rev6" not in text and "nat6_rewrite" not in text


# --- inbound --------------------------------------------------------------------


def test_syn_is_rewritten_to_the_real_server_port_and_redirected(nat: Nat6) -> None:
    rip = nat.rip("web6", 40000, TCP, 80)
    out = nat.inbound(to_vip(40000))
    assert out.retval == XDP_REDIRECT
    assert checked(out) == at_real(rip, 40000)
    assert nat.dp.maps.nat_flows6() == {
        (IPv6Address(rip), 8080, IPv6Address(CLIENT), 40000, TCP): (IPv6Address(VIP), 80)
    }
    web = next(s for s in nat.plan.services if s.name == "web6")
    rid = next(r.index for r in web.reals if str(r.address) == rip)
    assert nat.dp.maps.flows6() == {
        (IPv6Address(CLIENT), 40000, IPv6Address(VIP), 80, TCP): (rid, web.index)
    }
    c = nat.counters()
    assert (c["nat_in"], c["tx"], c["pass_hop_limit"]) == (1, 0, 0)


def test_established_flow_both_ways_with_payload(nat: Nat6) -> None:
    rip = nat.rip("web6", 40001, TCP, 80)
    assert nat.inbound(to_vip(40001)).retval == XDP_REDIRECT
    back = nat.reply(from_real(rip, 40001))
    assert back.retval == XDP_REDIRECT
    assert checked(back) == at_client(40001)
    request = b"GET / HTTP/1.0\r\n\r\n"
    out = nat.inbound(to_vip(40001, ACK | PSH, payload=request))
    assert out.retval == XDP_REDIRECT
    assert checked(out) == at_real(rip, 40001, ACK | PSH, payload=request)
    answer = b"HTTP/1.0 200 OK\r\n\r\n" + bytes(range(256)) * 4
    back = nat.reply(from_real(rip, 40001, ACK | PSH, payload=answer))
    assert checked(back) == at_client(40001, ACK | PSH, payload=answer)
    c = nat.counters()
    assert (c["nat_in"], c["nat_out"], c["ct_hit"]) == (2, 2, 1)


def test_flows_spread_and_each_keeps_its_real_server(nat: Nat6) -> None:
    seen = set()
    for sport in range(41000, 41040):
        rip = nat.rip("web6", sport, TCP, 80)
        seen.add(rip)
        assert checked(nat.inbound(to_vip(sport))) == at_real(rip, sport)
        assert checked(nat.reply(from_real(rip, sport))) == at_client(sport)
        assert checked(nat.inbound(to_vip(sport, ACK))) == at_real(rip, sport, ACK)
    assert seen == set(RIPS.values())
    assert len(nat.dp.maps.nat_flows6()) == 40


def test_udp_both_ways_with_port_mapping(nat: Nat6) -> None:
    for sport in range(5000, 5010):
        rip = nat.rip("dns6", sport, UDP, 53)
        out = nat.inbound(udp6(CLIENT, VIP, sport, 53, b"query", (DIRECTOR_MAC, CLIENT_MAC)))
        assert out.retval == XDP_REDIRECT
        rmac = MACS[IPv6Address(rip)]
        assert checked(out) == udp6(CLIENT, rip, sport, 5353, b"query", (rmac, PRIVATE_MAC), 63)
        back = nat.reply(udp6(rip, CLIENT, 5353, sport, b"answer", (PRIVATE_MAC, rmac)))
        assert back.retval == XDP_REDIRECT
        want = udp6(VIP, CLIENT, 53, sport, b"answer", (CLIENT_MAC, PUBLIC_MAC), 63)
        assert checked(back) == want


def _payload_for_zero_checksum(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A payload whose UDP checksum from src to dst computes to 0 (sent as 0xffff)."""
    for x in range(1 << 16):
        payload = b"zero" + struct.pack("!H", x)
        hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        if csum(_pseudo(src, dst, UDP, len(hdr) + len(payload)) + hdr + payload) == 0:
            return payload
    raise AssertionError("no such payload")


def test_a_udp_checksum_that_computes_to_zero_is_sent_as_ffff(nat: Nat6) -> None:
    sport = 5100
    rip = nat.rip("dns6", sport, UDP, 53)
    payload = _payload_for_zero_checksum(CLIENT, rip, sport, 5353)
    out = nat.inbound(udp6(CLIENT, VIP, sport, 53, payload, (DIRECTOR_MAC, CLIENT_MAC)))
    assert out.retval == XDP_REDIRECT
    assert out.data[14 + 40 + 6 : 14 + 40 + 8] == b"\xff\xff"
    rmac = MACS[IPv6Address(rip)]
    assert checked(out) == udp6(CLIENT, rip, sport, 5353, payload, (rmac, PRIVATE_MAC), 63)


def test_checksums_hold_across_their_range(nat: Nat6) -> None:
    """The incremental update sums the addresses' 32-bit words in 64 bits and folds
    once, with the packet's checksum: clients whose address halves are all 0xffff or
    all 0 and payloads that move the checksum being updated across its range (so the
    final fold meets its carries), both ways, each output's checksum checked
    independently."""
    clients = ("2001:2:ffff:ffff:ffff:ffff:ffff:ffff", "2001:2::", "2001:2:0:ffff::fffe")
    for client in clients:
        for i in range(40):
            payload = bytes([i]) * (i % 7 + 1) + struct.pack("!H", i * 1637)
            request = udp6(client, VIP, 6000 + i, 53, payload, (DIRECTOR_MAC, CLIENT_MAC))
            out = nat.inbound(request)
            assert out.retval == XDP_REDIRECT
            rip = str(IPv6Address(checked(out)[38:54]))
            assert rip in RIPS.values()
            rmac = MACS[IPv6Address(rip)]
            back = nat.reply(udp6(rip, client, 5353, 6000 + i, payload, (PRIVATE_MAC, rmac)))
            assert back.retval == XDP_REDIRECT
            assert checked(back)[22:38] == IPv6Address(VIP).packed


def test_udp_without_a_checksum_is_dropped_not_forwarded(nat: Nat6) -> None:
    """IPv6 forbids a UDP checksum of 0 (RFC 8200 8.1): the real server would discard
    it, and an incremental update would turn it into a wrong one. Dropped, counted,
    and no flow is started by it; one of an established flow, either way, is dropped
    untouched too."""
    packet = udp6(CLIENT, VIP, 5200, 53, b"query", (DIRECTOR_MAC, CLIENT_MAC), zero_checksum=True)
    out = nat.inbound(packet)
    assert (out.retval, out.data) == (XDP_DROP, packet)
    assert nat.dp.maps.nat_flows6() == {} and nat.dp.maps.flows6() == {}
    rip = nat.rip("dns6", 5201, UDP, 53)
    nat.inbound(udp6(CLIENT, VIP, 5201, 53, b"query", (DIRECTOR_MAC, CLIENT_MAC)))
    again = udp6(CLIENT, VIP, 5201, 53, b"again", (DIRECTOR_MAC, CLIENT_MAC), zero_checksum=True)
    out = nat.inbound(again)
    assert (out.retval, out.data) == (XDP_DROP, again)
    rmac = MACS[IPv6Address(rip)]
    reply = udp6(rip, CLIENT, 5353, 5201, b"answer", (PRIVATE_MAC, rmac), zero_checksum=True)
    out = nat.reply(reply)
    assert (out.retval, out.data) == (XDP_DROP, reply)
    c = nat.counters()
    assert (c["drop_bad_l4"], c["nat_in"], c["nat_out"]) == (3, 1, 0)


def test_client_mac_is_learned_from_the_inbound_frame(nat: Nat6) -> None:
    gateway = bytes.fromhex("02000000beef")
    rip = nat.rip("web6", 40002, TCP, 80)
    nat.inbound(DIRECTOR_MAC + gateway + to_vip(40002)[12:])
    assert nat.reply(from_real(rip, 40002)).data[:12] == gateway + PUBLIC_MAC


# --- the hop limit ----------------------------------------------------------------


def test_hop_limit_is_decremented_both_ways(nat: Nat6) -> None:
    rip = nat.rip("web6", 40003, TCP, 80)
    assert checked(nat.inbound(to_vip(40003, hlim=2))) == at_real(rip, 40003, hlim=1)
    out = nat.reply(from_real(rip, 40003, hlim=255))
    assert checked(out) == at_client(40003, hlim=254)


def test_hop_limit_one_goes_to_the_kernel_and_starts_nothing(nat: Nat6) -> None:
    """A router does not forward a packet whose hop limit runs out: it passes to the
    director's stack (inbound it is for the VIP, an address of the director; on the
    private side a forwarding stack answers Time Exceeded)."""
    rip = nat.rip("web6", 40004, TCP, 80)
    for hlim in (1, 0):
        packet = to_vip(40004, hlim=hlim)
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    assert nat.dp.maps.nat_flows6() == {}
    assert nat.inbound(to_vip(40004)).retval == XDP_REDIRECT
    tracked = to_vip(40004, ACK, hlim=1)
    assert (nat.inbound(tracked).retval, nat.inbound(tracked).data) == (XDP_PASS, tracked)
    reply = from_real(rip, 40004, hlim=1)
    out = nat.reply(reply)
    assert (out.retval, out.data) == (XDP_PASS, reply)
    c = nat.counters()
    assert (c["pass_hop_limit"], c["nat_in"], c["nat_out"]) == (5, 1, 0)


# --- timeouts -------------------------------------------------------------------


def test_idle_tcp_flow_expires_after_tcp_timeout(nat: Nat6) -> None:
    rip = nat.rip("web6", 40010, TCP, 80)
    nat.inbound(to_vip(40010))
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 5)  # past tcpfin, not past tcp
    assert nat.reply(from_real(rip, 40010)).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)  # the reply refreshed it
    assert nat.reply(from_real(rip, 40010, ACK)).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] + 1)
    late = from_real(rip, 40010, ACK)
    out = nat.reply(late)
    assert (out.retval, out.data) == (XDP_PASS, late)
    assert nat.counters()["nat_expired"] == 1


def test_fin_shortens_the_lifetime_to_tcpfin_timeout(nat: Nat6) -> None:
    rip = nat.rip("web6", 40011, TCP, 80)
    nat.inbound(to_vip(40011))
    assert checked(nat.inbound(to_vip(40011, FIN | ACK))) == at_real(rip, 40011, FIN | ACK)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] - 2)
    assert checked(nat.reply(from_real(rip, 40011, FIN | ACK))) == at_client(40011, FIN | ACK)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 1)
    late = from_real(rip, 40011, ACK)
    out = nat.reply(late)
    assert (out.retval, out.data) == (XDP_PASS, late)


def test_rst_from_the_real_server_shortens_the_lifetime(nat: Nat6) -> None:
    rip = nat.rip("web6", 40012, TCP, 80)
    nat.inbound(to_vip(40012))
    assert checked(nat.reply(from_real(rip, 40012, RST))) == at_client(40012, RST)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 1)
    assert nat.reply(from_real(rip, 40012, ACK)).retval == XDP_PASS


def test_rst_from_the_client_starts_no_flow(nat: Nat6) -> None:
    rip = nat.rip("web6", 40014, TCP, 80)
    out = nat.inbound(to_vip(40014, RST))
    assert checked(out) == at_real(rip, 40014, RST)
    assert nat.dp.maps.nat_flows6() == {} and nat.dp.maps.flows6() == {}


def test_an_expired_flow_is_absent_inbound_and_starts_again(nat: Nat6) -> None:
    rip = nat.rip("web6", 40013, TCP, 80)
    nat.inbound(to_vip(40013))
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] + 1)
    out = nat.inbound(to_vip(40013, ACK))  # not a hit: scheduled again, tracked anew
    assert checked(out) == at_real(rip, 40013, ACK)
    c = nat.counters()
    assert (c["nat_expired"], c["ct_hit"]) == (1, 0)
    assert checked(nat.reply(from_real(rip, 40013, ACK))) == at_client(40013, ACK)


def test_udp_flow_expires_after_udp_timeout(nat: Nat6) -> None:
    rip = nat.rip("dns6", 5001, UDP, 53)
    nat.inbound(udp6(CLIENT, VIP, 5001, 53, b"q", (DIRECTOR_MAC, CLIENT_MAC)))
    reply = udp6(rip, CLIENT, 5353, 5001, b"a", (PRIVATE_MAC, MACS[IPv6Address(rip)]))
    nat.dp.maps.advance_nat_clock(TIMEOUTS[2] - 1)
    assert nat.reply(reply).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[2] + 1)
    out = nat.reply(reply)
    assert (out.retval, out.data) == (XDP_PASS, reply)


def test_nat6_service_without_configure_nat_is_dropped_and_counted() -> None:
    dp = XdpDataplane(nat6_plan(), pin_dir=None)
    try:
        dp.sync(MACS)
        packet = to_vip(40030)
        out = prog_run(dp.prog_fd, packet)
        assert (out.retval, out.data) == (XDP_DROP, packet)
        assert dp.maps.global_counters()["drop_nat_unset"] == 1
        reply = from_real(RIPS["rs1"], 40030)
        out = prog_run(dp.nat_fn.fd, reply)  # type: ignore[attr-defined]
        assert (out.retval, out.data) == (XDP_PASS, reply)
    finally:
        dp.close()


# --- ICMPv6 errors about NAT flows ------------------------------------------------

PTB, UNREACH, TIME_EXCEEDED, PARAM_PROBLEM = 2, 1, 3, 4


def quote6(src, dst, sport, dport, proto=TCP, extra=b"") -> bytes:
    """The start of a packet as an ICMPv6 error quotes it: its IPv6 header (payload
    length of the original), the ports, and a marker where its checksum would be,
    which the translation leaves alone."""
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHH", sport, dport, 99, 0, 0x50, ACK, 512, 0x1234)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 1400, 0x1234)
    return ipv6(src, dst, proto, l4 + extra, payload_len=1400)


def icmp_error(src, dst, quoted: bytes, macs, *, type_=PTB, code=0, rest=1280, hlim=64) -> bytes:
    return frame6(src, dst, ICMP6, icmp6(src, dst, type_, code, rest, quoted), macs, hlim)


def test_packet_too_big_about_a_reply_reaches_the_real_server(nat: Nat6) -> None:
    """Path-MTU discovery: a router on the public side cannot forward the server's
    large reply ([VIP]:80 -> client) and tells the VIP; the real server must hear it,
    about its own packet [RIP]:8080 -> client, to lower its MSS."""
    rip = nat.rip("web6", 40040, TCP, 80)
    nat.inbound(to_vip(40040))
    body = bytes(range(200))  # more of the quoted packet: not rewritten
    packet = icmp_error(
        ROUTER, VIP, quote6(VIP, CLIENT, 80, 40040, extra=body), (PUBLIC_MAC, CLIENT_MAC)
    )
    out = nat.inbound(packet)
    assert out.retval == XDP_REDIRECT
    want = icmp_error(
        ROUTER,
        rip,
        quote6(rip, CLIENT, 8080, 40040, extra=body),
        (MACS[IPv6Address(rip)], PRIVATE_MAC),
        hlim=63,
    )
    assert checked(out) == want
    assert struct.unpack("!I", out.data[58:62])[0] == 1280  # the MTU is kept
    assert nat.counters()["nat_icmp"] == 1


def test_packet_too_big_from_a_private_router_reaches_the_client(nat: Nat6) -> None:
    """The client's large request ([VIP]:80 rewritten to [RIP]:8080) meets a smaller
    MTU on the private side: that router's error keeps its own source address and
    quotes client -> [VIP]:80 when it reaches the client."""
    rip = nat.rip("web6", 40041, TCP, 80)
    nat.inbound(to_vip(40041))
    router_mac = bytes.fromhex("020000006401")
    packet = icmp_error(
        PRIVATE_ROUTER, CLIENT, quote6(CLIENT, rip, 40041, 8080), (PRIVATE_MAC, router_mac)
    )
    out = nat.reply(packet)
    assert out.retval == XDP_REDIRECT
    want = icmp_error(
        PRIVATE_ROUTER, CLIENT, quote6(CLIENT, VIP, 40041, 80), (CLIENT_MAC, PUBLIC_MAC), hlim=63
    )
    assert checked(out) == want


def test_port_unreachable_from_the_real_server_reaches_the_client_from_the_vip(nat: Nat6) -> None:
    rip = nat.rip("dns6", 5010, UDP, 53)
    nat.inbound(udp6(CLIENT, VIP, 5010, 53, b"q", (DIRECTOR_MAC, CLIENT_MAC)))
    macs = (PRIVATE_MAC, MACS[IPv6Address(rip)])
    packet = icmp_error(
        rip, CLIENT, quote6(CLIENT, rip, 5010, 5353, UDP), macs, type_=UNREACH, code=4, rest=0
    )
    out = nat.reply(packet)
    assert out.retval == XDP_REDIRECT
    want = icmp_error(
        VIP, CLIENT, quote6(CLIENT, VIP, 5010, 53, UDP), (CLIENT_MAC, PUBLIC_MAC),
        type_=UNREACH, code=4, rest=0, hlim=63,
    )  # fmt: skip
    assert checked(out) == want


def test_time_exceeded_about_a_reply_is_translated(nat: Nat6) -> None:
    rip = nat.rip("web6", 40042, TCP, 80)
    nat.inbound(to_vip(40042))
    packet = icmp_error(
        ROUTER,
        VIP,
        quote6(VIP, CLIENT, 80, 40042),
        (PUBLIC_MAC, CLIENT_MAC),
        type_=TIME_EXCEEDED,
        rest=0,
    )
    out = nat.inbound(packet)
    want = icmp_error(
        ROUTER, rip, quote6(rip, CLIENT, 8080, 40042), (MACS[IPv6Address(rip)], PRIVATE_MAC),
        type_=TIME_EXCEEDED, rest=0, hlim=63,
    )  # fmt: skip
    assert (out.retval, checked(out)) == (XDP_REDIRECT, want)


def test_icmpv6_that_is_not_about_a_nat_flow_passes_untouched(nat: Nat6) -> None:
    rip = nat.rip("web6", 40043, TCP, 80)
    nat.inbound(to_vip(40043))
    pub = (PUBLIC_MAC, CLIENT_MAC)
    priv = (PRIVATE_MAC, MACS[IPv6Address(rip)])
    echo = icmp6(CLIENT, VIP, 128, 0, 0x00010001, b"ping")
    solicit = icmp6(CLIENT, "ff02::1:ff00:10", 135, 0, 0, IPv6Address(VIP).packed)
    public = [
        frame6(CLIENT, VIP, ICMP6, echo, pub),  # ping the VIP: the director answers
        frame6(
            CLIENT,
            "ff02::1:ff00:10",
            ICMP6,
            solicit,
            (b"\x33\x33\xff\x00\x00\x10", CLIENT_MAC),
            255,
        ),
        icmp_error(ROUTER, VIP, quote6(VIP, CLIENT, 80, 40044), pub),  # another flow
        icmp_error(ROUTER, VIP, quote6(VIP, CLIENT, 80, 40043), pub, type_=PARAM_PROBLEM),
        icmp_error(ROUTER, VIP, quote6(VIP, CLIENT, 80, 40043, proto=132), pub),  # SCTP
        icmp_error(ROUTER, VIP, quote6(VIP, ROUTER, 80, 40043), pub),  # another client
        icmp_error(ROUTER, "2001:2::99", quote6(VIP, CLIENT, 80, 40043), pub),  # not to the VIP
    ]
    for packet in public:
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    echo_reply = icmp6(rip, NAT_ROUTER, 129, 0, 0x00010001, b"ping")
    private = [
        frame6(rip, NAT_ROUTER, ICMP6, echo_reply, priv),
        icmp_error(rip, CLIENT, quote6(CLIENT, rip, 40044, 8080), priv, type_=UNREACH),
        icmp_error(rip, CLIENT, quote6(CLIENT, rip, 40043, 8081), priv, type_=UNREACH),
        icmp_error(rip, ROUTER, quote6(CLIENT, rip, 40043, 8080), priv, type_=UNREACH),
    ]
    for packet in private:
        out = nat.reply(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    assert nat.counters()["nat_icmp"] == 0


def test_malformed_icmpv6_errors_pass_untouched(nat: Nat6) -> None:
    """Errors too short to hold the quoted ports, with a payload length short of
    them, or quoting something that is not IPv6: never translated."""
    nat.inbound(to_vip(40045))
    pub = (PUBLIC_MAC, CLIENT_MAC)
    good = icmp_error(ROUTER, VIP, quote6(VIP, CLIENT, 80, 40045), pub)
    cut = good[: 14 + 40 + 8 + 40 + 3]  # the quoted ports cut short
    cut = cut[:18] + struct.pack("!H", len(cut) - 54) + cut[20:]
    short_len = good[:18] + struct.pack("!H", 8 + 40 + 3) + good[20:]  # frame has more
    v4_quote = bytearray(good)
    v4_quote[62] = 0x45  # the quoted header's version is 4
    cases = [cut, short_len, bytes(v4_quote), good[: 14 + 40 + 4]]
    for packet in cases:
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    assert nat.counters()["nat_icmp"] == 0
    out = nat.inbound(good)  # and the well-formed one is translated
    assert out.retval == XDP_REDIRECT and nat.counters()["nat_icmp"] == 1


# --- malformed and foreign packets are never misrouted -----------------------------


def test_malformed_packets_to_the_vip_are_never_forwarded(nat: Nat6) -> None:
    good = to_vip(40050)
    bad_len = good[:18] + struct.pack("!H", 2000) + good[20:]  # beyond the frame
    v4_in_v6 = good[:14] + bytes([0x45]) + good[15:]
    truncated_tcp = frame6(
        CLIENT, VIP, TCP, tcp(CLIENT, VIP, 40050, 80)[:12], (DIRECTOR_MAC, CLIENT_MAC)
    )
    bad_doff = frame6(
        CLIENT, VIP, TCP, tcp(CLIENT, VIP, 40050, 80, doff=4), (DIRECTOR_MAC, CLIENT_MAC)
    )
    fragment = frame6(
        CLIENT,
        VIP,
        44,
        bytes([TCP, 0, 0, 1, 0, 0, 0, 1]) + tcp(CLIENT, VIP, 40050, 80),
        (DIRECTOR_MAC, CLIENT_MAC),
    )
    for packet, verdict in (
        (bad_len, XDP_PASS),
        (v4_in_v6, XDP_PASS),
        (truncated_tcp, XDP_DROP),
        (bad_doff, XDP_DROP),
        (fragment, XDP_DROP),
        (good[: 14 + 39], XDP_PASS),
    ):
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (verdict, packet)
    assert nat.dp.maps.flows6() == {} and nat.dp.maps.nat_flows6() == {}
    assert nat.counters()["nat_in"] == 0


def test_malformed_replies_are_never_forwarded(nat: Nat6) -> None:
    rip = nat.rip("web6", 40051, TCP, 80)
    nat.inbound(to_vip(40051))
    good = from_real(rip, 40051)
    cases = [
        good[:18] + struct.pack("!H", 2000) + good[20:],  # payload beyond the frame
        good[: 14 + 40 + 12],  # a truncated TCP header
        good[:14] + bytes([0x45]) + good[15:],  # version 4
    ]
    for packet in cases:
        out = nat.reply(packet)
        assert out.retval in (XDP_PASS, XDP_DROP) and out.data == packet
    assert nat.counters()["nat_out"] == 0


def test_replies_not_ours_pass_untouched(nat: Nat6) -> None:
    rip = nat.rip("web6", 40020, TCP, 80)
    other = RIPS["rs1"] if rip == RIPS["rs2"] else RIPS["rs2"]
    nat.inbound(to_vip(40020))
    own = tcp(rip, NAT_ROUTER, 8080, 3000, ACK)
    cases = [
        from_real(rip, 40021),  # a client port with no flow
        from_real(rip, 40020, port=8081),  # another port of the real server
        frame6(
            other,
            CLIENT,
            TCP,
            tcp(other, CLIENT, 8080, 40020, ACK),
            (PRIVATE_MAC, MACS[IPv6Address(other)]),
        ),
        # the real server talking to the director itself (health checks)
        frame6(rip, NAT_ROUTER, TCP, own, (PRIVATE_MAC, MACS[IPv6Address(rip)])),
    ]
    for packet in cases:
        out = nat.reply(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    c = nat.counters()
    assert (c["pass_nat_no_flow"], c["nat_out"]) == (4, 0)


def test_traffic_not_for_a_virtual_service_passes(nat: Nat6) -> None:
    macs = (DIRECTOR_MAC, CLIENT_MAC)
    cases = [
        frame6(CLIENT, VIP, TCP, tcp(CLIENT, VIP, 40060, 81), macs),  # another port
        frame6(CLIENT, "2001:2::11", TCP, tcp(CLIENT, "2001:2::11", 40060, 80), macs),
        udp6(CLIENT, VIP, 40060, 54, b"q", macs),
    ]
    for packet in cases:
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)


# --- IPv4 NAT in the same program --------------------------------------------------


def test_ipv4_nat_in_the_same_program(nat: Nat6) -> None:
    syn = eth(ipv4(CLIENT4, VIP4, TCP, tcp(CLIENT4, VIP4, 40070, 80)))
    out = nat.inbound(syn)
    assert out.retval == XDP_REDIRECT
    check_ipv4(out.data[14:])
    want = eth(
        ipv4(CLIENT4, RIP4, TCP, tcp(CLIENT4, RIP4, 40070, 8081)),
        dst=MACS[IPv4Address(RIP4)],
        src=PRIVATE_MAC,
    )
    assert out.data == want
    reply = eth(
        ipv4(RIP4, CLIENT4, TCP, tcp(RIP4, CLIENT4, 8081, 40070, SYN | ACK)),
        dst=PRIVATE_MAC,
        src=want[:6],
    )
    back = nat.reply(reply)
    assert back.retval == XDP_REDIRECT
    check_ipv4(back.data[14:])
    assert back.data == eth(
        ipv4(VIP4, CLIENT4, TCP, tcp(VIP4, CLIENT4, 80, 40070, SYN | ACK)),
        dst=CLIENT_MAC,
        src=PUBLIC_MAC,
    )
    assert ip_address(VIP4).version == 4 and nat.dp.maps.nat_flows6() == {}


# --- across CPUs -------------------------------------------------------------------


def test_reply_on_another_cpu_than_the_request(nat: Nat6) -> None:
    saved = os.sched_getaffinity(0)
    cpus = sorted(saved)[:2]
    if len(cpus) < 2:
        raise AssertionError("this test needs two CPUs")
    rip = nat.rip("web6", 40950, TCP, 80)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        assert nat.inbound(to_vip(40950)).retval == XDP_REDIRECT
        os.sched_setaffinity(0, {cpus[1]})
        nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)
        assert checked(nat.reply(from_real(rip, 40950))) == at_client(40950)
        os.sched_setaffinity(0, {cpus[0]})
        nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)  # alive: the reply refreshed it
        assert checked(nat.inbound(to_vip(40950, ACK))) == at_real(rip, 40950, ACK)
    finally:
        os.sched_setaffinity(0, saved)
    c = nat.counters()
    assert (c["nat_in"], c["nat_out"], c["ct_hit"], c["nat_expired"]) == (2, 1, 1, 0)
