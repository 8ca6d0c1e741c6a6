"""IPv6 direct routing through BPF_PROG_RUN (tests/bpf/lb6.cf, feature ipv6): exact
output bytes, the Maglev real that plan.flow_hash predicts, tracked flows, quiesce
and failure, and every IPv6 packet that is not ours or is malformed."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address

import pytest

from compiler import compile_file
from dataplane.decap import Decap
from dataplane.libbpf import prog_run
from dataplane.plan import flow_hash, plan
from dataplane.xdp import RealState, XdpDataplane

from .conftest import HERE, SIZES
from .packets import (
    ACK,
    DIRECTOR_MAC,
    ETH_IP6,
    RST,
    SYN,
    TCP,
    UDP,
    eth,
    ipv6,
    tcp,
    tcp6_packet,
    tcp_packet,
    udp,
    udp6_packet,
)

pytestmark = pytest.mark.bpf
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
CLIENT = "2001:2:9::5"
VIP = "2001:2::10"
MACS = {IPv6Address(f"2001:2:1::{i}"): bytes.fromhex(f"0200000006{i:02x}") for i in (1, 2, 3)}
MACS[IPv4Address("198.18.1.1")] = bytes.fromhex("020000000401")


class Lb6:
    def __init__(self, dp: XdpDataplane):
        self.dp = dp
        self.plan = dp.plan
        self.state: dict[int, RealState] = {}

    def run(self, packet: bytes):
        return prog_run(self.dp.prog_fd, packet)

    def set_state(self, state: dict[int, RealState]) -> None:
        self.state = state
        self.dp.sync(MACS, state)

    def service(self, name: str):
        return next(s for s in self.plan.services if s.name == name)

    def real_for(self, service: str, sport: int, dport: int, proto: int, src: str = CLIENT):
        """The real server the table gives this flow (plan.flow_hash, as the program)."""
        svc = self.service(service)
        h = flow_hash(IPv6Address(src), IPv6Address(VIP), sport, dport, proto)
        rid = int(self.dp.table(svc, self.state)[h % self.plan.sizes.ring_size])
        return next(r for r in svc.reals if r.index == rid)


@pytest.fixture(scope="module")
def compiled6() -> Iterator[Lb6]:
    result = compile_file(str(HERE / "lb6.cf"))
    assert result.ok
    p = plan(result.config, SIZES, ipv6=True)
    assert "ipv6" in p.features
    dp = XdpDataplane(p, pin_dir=None)
    yield Lb6(dp)
    dp.close()


@pytest.fixture
def lb(compiled6: Lb6) -> Lb6:
    compiled6.dp.maps.clear_flows()
    compiled6.dp.maps.reset_counters()
    compiled6.set_state({})
    return compiled6


def direct(packet: bytes, mac: bytes) -> bytes:
    """The frame direct routing sends: only the MACs change."""
    return mac + DIRECTOR_MAC + packet[12:]


def test_syn_goes_to_the_predicted_real_with_only_macs_rewritten(lb: Lb6):
    seen = set()
    for sport in range(2000, 2060):
        pkt = tcp6_packet(CLIENT, VIP, sport, 80, SYN)
        r = lb.real_for("web6", sport, 80, TCP)
        res = lb.run(pkt)
        assert res.retval == XDP_TX
        assert res.data == direct(pkt, MACS[r.address])
        seen.add(r.name)
    assert seen == {"a", "b", "c"}
    g = lb.dp.maps.global_counters()
    assert g["tx"] == 60 and g["pass_not_ipv4"] == 0
    assert len(lb.dp.maps.flows6()) == 60
    total = sum(lb.dp.maps.real_counters(r.index).new_flows for r in lb.service("web6").reals)
    assert total == 60


def test_hop_limit_and_payload_are_left_alone(lb: Lb6):
    pkt = tcp6_packet(CLIENT, VIP, 3000, 80, SYN, payload=b"x" * 100, hlim=1)
    r = lb.real_for("web6", 3000, 80, TCP)
    res = lb.run(pkt)
    assert res.retval == XDP_TX and res.data == direct(pkt, MACS[r.address])


def test_udp_service(lb: Lb6):
    for sport in (5000, 5001, 5002, 5003):
        pkt = udp6_packet(CLIENT, VIP, sport, 53)
        r = lb.real_for("dns6", sport, 53, UDP)
        res = lb.run(pkt)
        assert res.retval == XDP_TX and res.data == direct(pkt, MACS[r.address])


def sport_on(lb: Lb6, name: str) -> int:
    return next(p for p in range(1024, 65536) if lb.real_for("web6", p, 80, TCP).name == name)


def test_tracked_flow_keeps_its_real_when_it_is_quiesced(lb: Lb6):
    sport = sport_on(lb, "c")
    c = lb.real_for("web6", sport, 80, TCP)
    assert lb.run(tcp6_packet(CLIENT, VIP, sport, 80, SYN)).retval == XDP_TX
    lb.set_state({c.index: RealState(weight=0)})
    ack = tcp6_packet(CLIENT, VIP, sport, 80, ACK, payload=b"GET /")
    res = lb.run(ack)
    assert res.retval == XDP_TX and res.data == direct(ack, MACS[c.address])
    assert lb.dp.maps.global_counters()["ct_hit"] == 1
    # a new flow that the full table gave c goes elsewhere now
    other = sport + 1
    while lb.real_for("web6", other, 80, TCP).name == "c":
        other += 1
    new = lb.run(tcp6_packet(CLIENT, VIP, other, 80, SYN))
    assert new.retval == XDP_TX and new.data[:6] != MACS[c.address]


def test_failed_real_reschedules_its_flows(lb: Lb6):
    sport = sport_on(lb, "b")
    b = lb.real_for("web6", sport, 80, TCP)
    lb.run(tcp6_packet(CLIENT, VIP, sport, 80, SYN))
    lb.set_state({b.index: RealState(failed=True)})
    ack = tcp6_packet(CLIENT, VIP, sport, 80, ACK)
    res = lb.run(ack)
    now = lb.real_for("web6", sport, 80, TCP)
    assert now.name != "b"
    assert res.retval == XDP_TX and res.data == direct(ack, MACS[now.address])
    assert lb.dp.maps.global_counters()["rescheduled"] == 1


def test_mid_flow_packet_without_state_is_scheduled(lb: Lb6):
    ack = tcp6_packet(CLIENT, VIP, 4000, 80, ACK)
    r = lb.real_for("web6", 4000, 80, TCP)
    res = lb.run(ack)
    assert res.retval == XDP_TX and res.data == direct(ack, MACS[r.address])
    assert lb.dp.maps.global_counters()["ct_miss_non_syn"] == 1


def test_rst_is_forwarded_but_not_tracked(lb: Lb6):
    res = lb.run(tcp6_packet(CLIENT, VIP, 4100, 80, RST | ACK))
    assert res.retval == XDP_TX
    assert lb.dp.maps.flows6() == {}


def test_ipv4_service_in_the_same_program(lb: Lb6):
    pkt = tcp_packet("198.18.9.5", "198.18.0.10", 1234, 80, SYN)
    res = lb.run(pkt)
    assert res.retval == XDP_TX and res.data == direct(pkt, MACS[IPv4Address("198.18.1.1")])


@pytest.mark.parametrize(
    "packet",
    [
        # neighbour solicitation for the VIP (ICMPv6 135)
        eth(
            ipv6(CLIENT, "ff02::1:ff00:10", 58, bytes([135, 0, 0, 0]) + bytes(20)),
            ethertype=ETH_IP6,
        ),
        # ICMPv6 echo to the VIP
        eth(ipv6(CLIENT, VIP, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1])), ethertype=ETH_IP6),
        # another address, another port of the VIP, UDP to a TCP-only port
        tcp6_packet(CLIENT, "2001:2::99", 1000, 80),
        tcp6_packet(CLIENT, VIP, 1000, 443),
        udp6_packet(CLIENT, VIP, 1000, 80),
        # an extension header to another address
        eth(
            ipv6(
                CLIENT, "2001:2::99", 0, bytes([6, 0]) + bytes(6) + tcp(CLIENT, "2001:2::99", 1, 80)
            ),
            ethertype=ETH_IP6,
        ),
    ],
    ids=["ns", "echo", "other-address", "other-port", "udp-port", "ext-not-vip"],
)
def test_not_ours_passes_untouched(lb: Lb6, packet: bytes):
    res = lb.run(packet)
    assert res.retval == XDP_PASS and res.data == packet
    assert lb.dp.maps.global_counters()["pass_not_vip"] == 1


def _l4(sport=1000):
    return tcp(CLIENT, VIP, sport, 80, SYN)


@pytest.mark.parametrize(
    ("packet", "counter"),
    [
        (eth(ipv6(CLIENT, VIP, TCP, _l4())[:39], ethertype=ETH_IP6), "pass_bad_ipv6"),
        (eth(ipv6(CLIENT, VIP, TCP, _l4(), version=4), ethertype=ETH_IP6), "pass_bad_ipv6"),
        (eth(ipv6(CLIENT, VIP, TCP, _l4(), payload_len=21), ethertype=ETH_IP6), "pass_bad_ipv6"),
    ],
    ids=["truncated", "version", "payload-length"],
)
def test_bad_ipv6_passes_to_the_stack(lb: Lb6, packet: bytes, counter: str):
    res = lb.run(packet)
    assert res.retval == XDP_PASS and res.data == packet
    assert lb.dp.maps.global_counters()[counter] == 1


@pytest.mark.parametrize(
    ("nh", "ext", "counter"),
    [
        (44, bytes([TCP, 0, 0, 0, 0, 0, 0, 1]), "drop_fragment"),  # atomic fragment
        (44, bytes([TCP, 0, 0, 1, 0, 0, 0, 1]), "drop_fragment"),  # first of several
        (0, bytes([TCP, 0, 1, 4, 0, 0, 0, 0]), "drop_ipv6_ext"),  # hop-by-hop
        (43, bytes([TCP, 0, 0, 0, 0, 0, 0, 0]), "drop_ipv6_ext"),  # routing
        (60, bytes([TCP, 0, 1, 4, 0, 0, 0, 0]), "drop_ipv6_ext"),  # destination options
    ],
    ids=["atomic-fragment", "fragment", "hop-by-hop", "routing", "dest-opts"],
)
def test_extension_headers_to_a_vip_are_dropped(lb: Lb6, nh: int, ext: bytes, counter: str):
    packet = eth(ipv6(CLIENT, VIP, nh, ext + _l4()), ethertype=ETH_IP6)
    res = lb.run(packet)
    assert res.retval == XDP_DROP
    g = lb.dp.maps.global_counters()
    assert g[counter] == 1 and g["tx"] == 0


@pytest.mark.parametrize(
    "l4",
    [
        tcp(CLIENT, VIP, 1000, 80, SYN)[:19],
        tcp(CLIENT, VIP, 1000, 80, SYN, doff=4),
        udp(CLIENT, VIP, 1, 53)[:7],
    ],
    ids=["tcp-truncated", "tcp-doff", "udp-truncated"],
)
def test_bad_l4_to_a_vip_is_dropped(lb: Lb6, l4: bytes):
    nh = UDP if len(l4) == 7 else TCP
    res = lb.run(eth(ipv6(CLIENT, VIP, nh, l4), ethertype=ETH_IP6))
    assert res.retval == XDP_DROP
    assert lb.dp.maps.global_counters()["drop_bad_l4"] == 1


def test_flow_hash_of_ipv6_matches_the_program(lb: Lb6):
    """Each of 200 flows lands where plan.flow_hash puts it: the Python hash and
    flow_hash6 agree (a wrong word order would send about 2/3 elsewhere)."""
    for sport in range(10000, 10200):
        pkt = tcp6_packet(CLIENT, VIP, sport, 80, SYN)
        r = lb.real_for("web6", sport, 80, TCP)
        assert lb.run(pkt).data[:6] == MACS[r.address]


def test_services6_listing(lb: Lb6):
    assert set(lb.dp.maps.services6()) == {
        (IPv6Address(VIP), 80, TCP),
        (IPv6Address(VIP), 53, UDP),
        (IPv6Address(TUN_VIP), 80, TCP),
    }
    assert lb.dp.maps.vips6() == {IPv6Address(VIP), IPv6Address(TUN_VIP)}


TUN_VIP = "2001:2::11"


def ip6ip6(inner: bytes, src: str, dst: str, h: int) -> bytes:
    """The outer header the program builds: version 6, the inner traffic class, the
    flow hash's low 20 bits as flow label, next header 41, hop limit 64."""
    tclass = ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
    first = (6 << 28) | (tclass << 20) | (h & 0xFFFFF)
    return (
        struct.pack("!IHBB", first, len(inner), 41, 64)
        + IPv6Address(src).packed
        + IPv6Address(dst).packed
        + inner
    )


def test_ip6ip6_tunnel_exact_bytes(lb: Lb6):
    seen = set()
    for sport in range(6000, 6040):
        pkt = tcp6_packet(CLIENT, TUN_VIP, sport, 80, SYN, payload=b"hello")
        h = flow_hash(IPv6Address(CLIENT), IPv6Address(TUN_VIP), sport, 80, TCP)
        svc = lb.service("tun6")
        rid = int(lb.dp.table(svc, lb.state)[h % lb.plan.sizes.ring_size])
        r = next(x for x in svc.reals if x.index == rid)
        res = lb.run(pkt)
        assert res.retval == XDP_TX
        want = eth(
            ip6ip6(pkt[14:], TUN_VIP, str(r.address), h), MACS[r.address], DIRECTOR_MAC, ETH_IP6
        )
        assert res.data == want
        seen.add(r.name)
        # the tracked flow's next packet gets the same outer header (hash kept in the entry)
        ack = tcp6_packet(CLIENT, TUN_VIP, sport, 80, ACK)
        assert lb.run(ack).data == eth(
            ip6ip6(ack[14:], TUN_VIP, str(r.address), h), MACS[r.address], DIRECTOR_MAC, ETH_IP6
        )
    assert seen == {"a", "b"}
    assert lb.dp.maps.global_counters()["ct_hit"] == 40


def test_ip6ip6_keeps_the_traffic_class(lb: Lb6):
    l4 = tcp(CLIENT, TUN_VIP, 6100, 80, SYN)
    inner = bytes([0x6B, 0x80]) + ipv6(CLIENT, TUN_VIP, TCP, l4)[2:]  # traffic class 0xb8
    res = lb.run(eth(inner, ethertype=ETH_IP6))
    assert res.retval == XDP_TX
    outer = res.data[14:54]
    assert ((outer[0] & 0x0F) << 4 | outer[1] >> 4) == 0xB8
    assert res.data[54:] == inner


def test_ip6ip6_frame_above_1514_is_dropped(lb: Lb6):
    fits = tcp6_packet(CLIENT, TUN_VIP, 6200, 80, SYN, payload=b"x" * 1400)
    assert len(fits) + 40 == 1514
    assert lb.run(fits).retval == XDP_TX
    big = tcp6_packet(CLIENT, TUN_VIP, 6201, 80, SYN, payload=b"x" * 1401)
    assert lb.run(big).retval == XDP_DROP
    assert lb.dp.maps.global_counters()["drop_too_big"] == 1


@pytest.fixture(scope="module")
def decap() -> Iterator[Decap]:
    d = Decap([IPv6Address("2001:2:1::1"), IPv6Address("2001:2:1::2")])
    yield d
    d.close()


def test_the_real_servers_decap_restores_the_clients_packet(lb: Lb6, decap: Decap):
    """decap.bpf.c on the real server: the load balancer's IP6IP6 frame comes out as
    the client's frame (its MACs: the real's and the director's), passed to the stack."""
    before = decap.counters()
    for sport in range(6300, 6320):
        pkt = tcp6_packet(CLIENT, TUN_VIP, sport, 80, SYN, payload=b"hi")
        tunnelled = lb.run(pkt)
        assert tunnelled.retval == XDP_TX
        out = prog_run(decap.prog_fd, tunnelled.data)
        assert out.retval == XDP_PASS
        assert out.data == tunnelled.data[:14] + pkt[14:]
    after = decap.counters()
    assert after["decapsulated"] - before["decapsulated"] == 20
    assert decap.endpoints() == {IPv6Address("2001:2:1::1"), IPv6Address("2001:2:1::2")}


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        # IP6IP6 to an address that is not an endpoint
        (eth(ip6ip6(ipv6(CLIENT, TUN_VIP, TCP, _l4()), TUN_VIP, "2001:2:1::3", 0)), "not_ours"),
        # plain IPv6 TCP to an endpoint
        (eth(ipv6(CLIENT, "2001:2:1::1", TCP, _l4()), ethertype=ETH_IP6), "not_ours"),
        # IP6IP6 to an endpoint with a truncated inner header
        (eth(ip6ip6(b"\x60" + bytes(20), TUN_VIP, "2001:2:1::1", 0)[:75]), "malformed"),
        # IP6IP6 to an endpoint whose inner packet is IPv4
        (eth(ip6ip6(b"\x45" + bytes(39), TUN_VIP, "2001:2:1::1", 0)), "malformed"),
    ],
    ids=["other-endpoint", "not-tunnelled", "short-inner", "inner-ipv4"],
)
def test_decap_leaves_the_rest_untouched(decap: Decap, frame: bytes, counter: str):
    frame = frame[:12] + struct.pack("!H", ETH_IP6) + frame[14:]
    before = decap.counters()[counter]
    out = prog_run(decap.prog_fd, frame)
    assert out.retval == XDP_PASS and out.data == frame
    assert decap.counters()[counter] == before + 1
