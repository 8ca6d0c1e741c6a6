"""Golden packets through BPF_PROG_RUN: verdict and exact output bytes for every
forwarding method, scheduler, persistence, quiesce, failure and malformed case."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from dataplane.plan import addr_hash, flow_hash
from dataplane.xdp import RealState

from .conftest import MACS, Lb
from .packets import (
    ACK,
    CLIENT_MAC,
    DIRECTOR_MAC,
    ICMP,
    RST,
    SYN,
    TCP,
    UDP,
    check_ipv4,
    eth,
    ipv4,
    tcp,
    tcp_packet,
    udp,
    udp_packet,
)

pytestmark = pytest.mark.bpf
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
CLIENT = "198.18.9.5"
WEB = "198.18.0.10"


def real_of(lb: Lb, service: str, h: int):
    """The real server the service's Maglev table gives for hash ``h``."""
    svc = lb.service(service)
    rid = int(lb.dp.table(svc, lb._state)[h % lb.plan.sizes.ring_size])
    return next(r for r in svc.reals if r.index == rid)


@pytest.fixture(autouse=True)
def _state(lb: Lb):
    lb._state = {}
    orig = lb.set_state

    def set_state(state):
        lb._state = state
        orig(state)

    lb.set_state = set_state
    yield
    lb.set_state = orig


def expect_direct(packet: bytes, mac: bytes) -> bytes:
    return mac + DIRECTOR_MAC + packet[12:]


def web_flow(lb: Lb, sport: int, flags=SYN, src=CLIENT):
    pkt = tcp_packet(src, WEB, sport, 80, flags)
    h = flow_hash(IPv4Address(src), IPv4Address(WEB), sport, 80, TCP)
    return pkt, real_of(lb, "web", h)


def sport_for(lb: Lb, name: str, start: int = 1024) -> int:
    """A client port whose web flow the table sends to real server ``name``."""
    for sport in range(start, 65536):
        if web_flow(lb, sport)[1].name == name:
            return sport
    raise AssertionError(name)


# --- packets that are not ours: XDP_PASS, untouched ------------------------------


def _vlan_packet() -> bytes:
    inner = ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1000, 80))
    return DIRECTOR_MAC + CLIENT_MAC + struct.pack("!HHH", 0x8100, 7, 0x0800) + inner


PASSED = {
    "arp": (eth(bytes(28), ethertype=0x0806), "pass_not_ipv4"),
    "ipv6": (eth(bytes(40), ethertype=0x86DD), "pass_not_ipv4"),
    "vlan-tagged to a VIP": (_vlan_packet(), "pass_not_ipv4"),
    # shorter than 14 bytes never reaches XDP (BPF_PROG_RUN refuses it too)
    "ethernet header only": (DIRECTOR_MAC + CLIENT_MAC + b"\x08\x00", "pass_bad_ipv4"),
    "truncated ipv4 header": (eth(ipv4(CLIENT, WEB, TCP, b"")[:12]), "pass_bad_ipv4"),
    "ihl < 5": (eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1, 80), ihl=4)), "pass_bad_ipv4"),
    "version 6 in ipv4 frame": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1, 80), version=6)),
        "pass_bad_ipv4",
    ),
    "total length beyond frame": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1, 80), tot_len=200)),
        "pass_bad_ipv4",
    ),
    "not a VIP": (tcp_packet(CLIENT, "198.18.0.99", 1000, 80), "pass_not_vip"),
    "VIP, port not served": (tcp_packet(CLIENT, WEB, 1000, 81), "pass_not_vip"),
    "VIP, protocol not served": (udp_packet(CLIENT, "198.18.0.11", 1000, 80), "pass_not_vip"),
    "ICMP to a VIP": (
        eth(ipv4(CLIENT, WEB, ICMP, bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0]))),
        "pass_not_vip",
    ),
}


@pytest.mark.parametrize("case", PASSED)
def test_passed_untouched(lb: Lb, case: str) -> None:
    packet, counter = PASSED[case]
    out = lb.run(packet)
    assert (out.retval, out.data) == (XDP_PASS, packet)
    counters = lb.dp.maps.global_counters()
    assert counters[counter] == 1
    assert counters["tx"] == 0


# --- malformed packets to a VIP: XDP_DROP ------------------------------------------

DROPPED = {
    "fragment (more fragments)": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1000, 80), frag=0x2000)),
        "drop_fragment",
    ),
    "fragment (offset)": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1000, 80), frag=0x0010)),
        "drop_fragment",
    ),
    "ip options": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1000, 80), options=b"\x01\x01\x01\x00")),
        "drop_ip_options",
    ),
    "truncated tcp header": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1, 80)[:12])),
        "drop_bad_l4",
    ),
    "tcp data offset < 5": (
        eth(ipv4(CLIENT, WEB, TCP, tcp(CLIENT, WEB, 1, 80, doff=4))),
        "drop_bad_l4",
    ),
    "truncated udp header": (
        eth(ipv4(CLIENT, WEB, UDP, udp(CLIENT, WEB, 1, 53)[:6])),
        "drop_bad_l4",
    ),
}


@pytest.mark.parametrize("case", DROPPED)
def test_malformed_to_vip_dropped(lb: Lb, case: str) -> None:
    packet, counter = DROPPED[case]
    out = lb.run(packet)
    assert out.retval == XDP_DROP
    counters = lb.dp.maps.global_counters()
    assert counters[counter] == 1 and counters["tx"] == 0
    assert lb.dp.maps.flows() == {}


# --- direct routing ----------------------------------------------------------------


def test_direct_syn_rewrites_only_the_macs(lb: Lb) -> None:
    packet, real = web_flow(lb, 40000)
    out = lb.run(packet)
    assert out.retval == XDP_TX
    assert out.data == expect_direct(packet, MACS[real.address])
    check_ipv4(out.data[14:])
    svc = lb.service("web")
    assert lb.dp.maps.service_counters(svc.index) == (1, len(packet), 1)
    assert lb.dp.maps.real_counters(real.index) == (1, len(packet), 1)
    assert lb.dp.maps.global_counters()["tx"] == 1


def test_established_flow_uses_conntrack(lb: Lb) -> None:
    syn, real = web_flow(lb, 40001)
    lb.run(syn)
    ack = web_flow(lb, 40001, ACK)[0]
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, MACS[real.address])
    c = lb.dp.maps.global_counters()
    assert c["ct_hit"] == 1
    assert lb.dp.maps.real_counters(real.index) == (2, len(syn) + len(ack), 1)


def test_tracked_flow_of_a_removed_service_is_not_forwarded(lb: Lb) -> None:
    """A conntrack entry names its service's index; once that index no longer holds
    the flow's VIP and port, the entry forwards nothing (the stack gets the packet)."""
    syn, _real = web_flow(lb, 40004)
    assert lb.run(syn).retval == XDP_TX
    lb.dp.maps.delete_service(IPv4Address(WEB), 80, TCP)
    ack = web_flow(lb, 40004, ACK)[0]
    out = lb.run(ack)
    assert (out.retval, out.data) == (XDP_PASS, ack)
    c = lb.dp.maps.global_counters()
    assert (c["ct_hit"], c["pass_not_vip"]) == (0, 1)
    lb.set_state({})  # sync puts the service back under its key and index
    out = lb.run(ack)
    assert out.retval == XDP_TX and lb.dp.maps.global_counters()["ct_hit"] == 1


def test_choices_match_the_table_and_follow_weights(lb: Lb) -> None:
    counts = {"a": 0, "b": 0, "c": 0}
    for sport in range(20000, 20600):
        packet, real = web_flow(lb, sport)
        out = lb.run(packet)
        assert out.data[:6] == MACS[real.address], sport
        counts[real.name] += 1
    # weights 1:2:3 over 600 flows: expected 100/200/300
    assert 60 < counts["a"] < 140 and 150 < counts["b"] < 250 and 240 < counts["c"] < 360


def test_mid_flow_packet_without_state_is_forwarded_by_the_table(lb: Lb) -> None:
    packet, real = web_flow(lb, 40002, ACK)
    out = lb.run(packet)
    assert out.retval == XDP_TX and out.data[:6] == MACS[real.address]
    assert lb.dp.maps.global_counters()["ct_miss_non_syn"] == 1


def test_rst_creates_no_state(lb: Lb) -> None:
    packet, real = web_flow(lb, 40003, RST | ACK)
    out = lb.run(packet)
    assert out.retval == XDP_TX and out.data[:6] == MACS[real.address]
    assert lb.dp.maps.flows() == {}


# --- quiesce and failure -----------------------------------------------------------


def test_quiesced_server_keeps_its_flows_and_gets_no_new_ones(lb: Lb) -> None:
    sport = sport_for(lb, "c")
    syn, real = web_flow(lb, sport)
    assert lb.run(syn).data[:6] == MACS[real.address]
    others = [s for s in range(30000, 30100) if web_flow(lb, s)[1].name != "c"]
    before = {s: web_flow(lb, s)[1].name for s in others}
    lb.set_state({real.index: RealState(weight=0)})
    ack = web_flow(lb, sport, ACK)[0]
    assert lb.run(ack).data[:6] == MACS[real.address]  # existing flow stays
    lb.dp.maps.clear_flows()
    out = lb.run(web_flow(lb, sport)[0])  # a new connection on the same ports
    assert out.retval == XDP_TX and out.data[:6] != MACS[real.address]
    for s in others:  # nobody else's flows move
        assert web_flow(lb, s)[1].name == before[s]
        assert lb.run(web_flow(lb, s)[0]).data[:6] == MACS[lb.real("web", before[s]).address]


def test_failed_server_flows_are_rescheduled(lb: Lb) -> None:
    sport = sport_for(lb, "b")
    syn, real = web_flow(lb, sport)
    lb.run(syn)
    lb.set_state({real.index: RealState(failed=True)})
    ack, now = web_flow(lb, sport, ACK)
    assert now.name != "b"
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, MACS[now.address])
    assert lb.dp.maps.global_counters()["rescheduled"] == 1
    assert lb.dp.maps.flows()[(IPv4Address(CLIENT), sport, IPv4Address(WEB), 80, TCP)][0] == (
        now.index
    )


def test_no_live_server_drops(lb: Lb) -> None:
    svc = lb.service("dsthash")
    lb.set_state({r.index: RealState(failed=True) for r in svc.reals})
    out = lb.run(tcp_packet(CLIENT, "198.18.0.11", 1000, 443))
    assert out.retval == XDP_DROP
    assert lb.dp.maps.global_counters()["drop_no_real"] == 1


# --- sh, dh ------------------------------------------------------------------------


def test_sh_hashes_the_source_address_only(lb: Lb) -> None:
    for client in ("198.18.9.1", "198.18.9.2", "198.18.77.3", "198.18.200.4"):
        want = real_of(lb, "srchash", addr_hash(IPv4Address(client)))
        for sport in (1000, 2000, 3000):
            out = lb.run(tcp_packet(client, "198.18.0.11", sport, 80))
            assert out.retval == XDP_TX and out.data[:6] == MACS[want.address]


def test_dh_hashes_the_destination_address(lb: Lb) -> None:
    want = real_of(lb, "dsthash", addr_hash(IPv4Address("198.18.0.11")))
    for client in ("198.18.9.1", "198.18.50.2", "198.18.100.3"):
        out = lb.run(tcp_packet(client, "198.18.0.11", 5555, 443))
        assert out.data[:6] == MACS[want.address]


# --- tunnel ------------------------------------------------------------------------


def expect_tunnel(packet: bytes, real_addr: IPv4Address, h: int) -> bytes:
    """New Ethernet header, then outer IPv4: version 4, IHL 5, the inner TOS, id 0, no
    fragment bits, TTL 64, protocol 4, source 172.16.0.0/16 with the low 16 bits from
    the flow hash, destination the real server; then the packet as it came."""
    inner = packet[14:]
    outer_src = IPv4Address(bytes([172, 16, (h >> 16) & 0xFF, (h >> 24) & 0xFF]))
    ip = ipv4(str(outer_src), str(real_addr), 4, inner, ident=0, tos=inner[1], ttl=64)
    return MACS[real_addr] + DIRECTOR_MAC + b"\x08\x00" + ip


def test_tunnel_udp_encapsulates_in_ipip(lb: Lb) -> None:
    packet = udp_packet(CLIENT, WEB, 5353, 53, b"query")
    h = flow_hash(IPv4Address(CLIENT), IPv4Address(WEB), 5353, 53, UDP)
    real = real_of(lb, "dns", h)
    out = lb.run(packet)
    assert out.retval == XDP_TX
    assert out.data == expect_tunnel(packet, real.address, h)
    check_ipv4(out.data[14:])
    check_ipv4(out.data[34:])
    # the next packet of the flow takes the hash kept in its conntrack entry: same bytes
    again = lb.run(packet)
    assert again.data == out.data
    assert lb.dp.maps.global_counters()["ct_hit"] == 1


def test_tunnel_through_an_all_port_fwmark_service(lb: Lb) -> None:
    """The fwmark service `marked` (tunnel, every port): the outer source comes from
    the flow hash on the first packet and from the conntrack entry after it."""
    marked = lb.service("marked")
    packet = tcp_packet(CLIENT, str(marked.vip), 40100, 8443, SYN)
    h = flow_hash(IPv4Address(CLIENT), marked.vip, 40100, 8443, TCP)
    real = real_of(lb, "marked", h)
    first = lb.run(packet)
    assert first.data == expect_tunnel(packet, real.address, h)
    ack = tcp_packet(CLIENT, str(marked.vip), 40100, 8443, ACK)
    assert lb.run(ack).data == expect_tunnel(ack, real.address, h)


def test_tunnel_outer_source_varies_per_flow(lb: Lb) -> None:
    sources = {lb.run(udp_packet(CLIENT, WEB, p, 53)).data[26:30] for p in range(2000, 2020)}
    assert len(sources) > 15 and all(s[:2] == bytes([172, 16]) for s in sources)


@pytest.mark.parametrize("dport", [80, 22, 8443])
def test_fwmark_service_takes_every_port(lb: Lb, dport: int) -> None:
    packet = tcp_packet(CLIENT, "198.18.0.13", 3333, dport)
    h = flow_hash(IPv4Address(CLIENT), IPv4Address("198.18.0.13"), 3333, dport, TCP)
    out = lb.run(packet)
    assert out.retval == XDP_TX
    assert out.data == expect_tunnel(packet, real_of(lb, "marked", h).address, h)


def test_tunnel_frame_too_big_is_dropped(lb: Lb) -> None:
    packet = tcp_packet(CLIENT, "198.18.0.13", 3333, 80, ACK, bytes(1460))
    assert len(packet) == 1514
    assert lb.run(packet).retval == XDP_DROP
    assert lb.dp.maps.global_counters()["drop_too_big"] == 1


# --- persistence -------------------------------------------------------------------

STICKY = "198.18.0.12"


def sticky(lb: Lb, client: str, sport: int, dport: int = 443, flags=SYN) -> bytes:
    return lb.run(tcp_packet(client, STICKY, sport, dport, flags)).data[:6]


def test_persistence_by_masked_source_across_ports(lb: Lb) -> None:
    first = real_of(lb, "sticky", addr_hash(IPv4Address("198.18.9.0")))
    for client, sport, dport in [("198.18.9.5", 1000, 443), ("198.18.9.77", 2000, 80)]:
        assert sticky(lb, client, sport, dport) == MACS[first.address]


def test_persistence_outlives_failure_only_until_timeout(lb: Lb) -> None:
    client = "198.18.9.5"
    first = real_of(lb, "sticky", addr_hash(IPv4Address("198.18.9.0")))
    assert sticky(lb, client, 1000) == MACS[first.address]
    lb.set_state({first.index: RealState(failed=True)})
    moved = sticky(lb, client, 1001)
    assert moved != MACS[first.address]
    lb.set_state({})  # the first server is back, but the template now points elsewhere
    assert sticky(lb, client, 1002) == moved
    assert lb.dp.maps.global_counters()["persist_hit"] == 1
    lb.dp.maps.age_persistence(299)
    assert sticky(lb, client, 1003) == moved  # 299 s since the last packet: still held
    lb.dp.maps.age_persistence(301)
    assert sticky(lb, client, 1004) == MACS[first.address]  # expired: the table decides


def test_persistence_does_not_send_new_flows_to_a_quiesced_server(lb: Lb) -> None:
    client = "198.18.9.5"
    first = real_of(lb, "sticky", addr_hash(IPv4Address("198.18.9.0")))
    assert sticky(lb, client, 1000) == MACS[first.address]
    lb.set_state({first.index: RealState(weight=0)})
    assert sticky(lb, client, 1000, flags=ACK) == MACS[first.address]  # open flow stays
    assert sticky(lb, client, 1001) != MACS[first.address]  # a new one does not


def test_counters_per_service_and_server(lb: Lb) -> None:
    sizes = 0
    for sport in range(100, 110):
        packet = udp_packet(CLIENT, WEB, sport, 53)
        lb.run(packet)
        sizes += len(packet)
    svc = lb.service("dns")
    assert lb.dp.maps.service_counters(svc.index) == (10, sizes, 10)
    per_real = [lb.dp.maps.real_counters(r.index) for r in svc.reals]
    assert sum(c.packets for c in per_real) == 10
    assert sum(c.new_flows for c in per_real) == 10
