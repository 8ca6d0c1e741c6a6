"""Golden packets for network = nat through BPF_PROG_RUN: both directions (lb_ingress
on the public side, lb_nat_return on the private side), exact output bytes built
independently by tests/bpf/packets.py (full checksums, not incremental ones), port
mapping, UDP with and without a checksum, FIN/RST and idle timeouts on the NAT
clock (moved forward through the nat_config map, so no test waits), and the
replies that are not ours going to the kernel untouched.

BPF_PROG_RUN does not transmit: a redirected packet comes back with the verdict
XDP_REDIRECT (the devmap slots point at ``lo``) and its rewritten bytes."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from compiler import compile_text
from dataplane.libbpf import RunResult, prog_run
from dataplane.plan import IPVS_TIMEOUTS, Plan, Sizes, flow_hash, plan
from dataplane.xdp import XdpDataplane, kernel_hz

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
    csum,
    eth,
    ipv4,
    tcp,
    udp,
)

pytestmark = pytest.mark.bpf
XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
FIN = 0x01
VIP = "198.18.0.10"
CLIENT = "198.18.9.5"
NAT_ROUTER = "198.18.64.254"
RIPS = {"rs1": "198.18.64.11", "rs2": "198.18.64.12"}
MACS = {IPv4Address(a): bytes.fromhex(f"0200000040{i:02x}") for i, a in enumerate(RIPS.values())}
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
nat_router = {NAT_ROUTER} eth1:1
tcp_timeout = {TIMEOUTS[0]}
tcpfin_timeout = {TIMEOUTS[1]}
udp_timeout = {TIMEOUTS[2]}

virtual web {{
    active = 1
    address = {VIP} eth0:1
    port = 80
    scheduler = wrr
{servers(8080)}}}

virtual dns {{
    active = 1
    address = {VIP} eth0:1
    port = 53
    protocol = udp
    scheduler = wrr
    send = "x"
    expect = "y"
{servers(5353)}}}
"""


@dataclass
class Nat:
    dp: XdpDataplane
    plan: Plan

    def inbound(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.prog_fd, packet)

    def reply(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.nat_fn.fd, packet)  # type: ignore[attr-defined]

    def rip(self, service: str, sport: int, proto: int, dport: int) -> str:
        """The real server the Maglev table gives this client port."""
        svc = next(s for s in self.plan.services if s.name == service)
        h = flow_hash(IPv4Address(CLIENT), IPv4Address(VIP), sport, dport, proto)
        rid = int(self.dp.table(svc, {})[h % self.plan.sizes.ring_size])
        return str(next(r for r in svc.reals if r.index == rid).address)


def nat_plan(config: str = CONFIG) -> Plan:
    result = compile_text("nat.cf", config)
    assert result.ok, result.diagnostics
    return plan(result.config, Sizes(max_services=8, max_reals=16, ct_size=1021, persist_size=509))


@pytest.fixture(scope="module")
def compiled() -> Iterator[Nat]:
    p = nat_plan()
    dp = XdpDataplane(p, pin_dir=None)
    dp.sync(MACS)
    dp.configure_nat(
        private_ifindex=1, public_ifindex=1, private_mac=PRIVATE_MAC, public_mac=PUBLIC_MAC
    )
    yield Nat(dp, p)
    dp.close()


@pytest.fixture
def nat(compiled: Nat) -> Nat:
    compiled.dp.maps.clear_flows()
    compiled.dp.maps.reset_counters()
    return compiled


# packets as the client sends them, as the real server must get them, and back
def to_vip(sport: int, flags: int = SYN, port: int = 80, payload: bytes = b"") -> bytes:
    return eth(ipv4(CLIENT, VIP, TCP, tcp(CLIENT, VIP, sport, port, flags, payload)))


def at_real(rip: str, sport: int, flags: int = SYN, port: int = 8080, payload=b"") -> bytes:
    packet = ipv4(CLIENT, rip, TCP, tcp(CLIENT, rip, sport, port, flags, payload))
    return eth(packet, dst=MACS[IPv4Address(rip)], src=PRIVATE_MAC)


def from_real(rip: str, sport: int, flags: int = SYN | ACK, port: int = 8080) -> bytes:
    packet = ipv4(rip, CLIENT, TCP, tcp(rip, CLIENT, port, sport, flags, seq=7))
    return eth(packet, dst=PRIVATE_MAC, src=MACS[IPv4Address(rip)])


def at_client(sport: int, flags: int = SYN | ACK, port: int = 80) -> bytes:
    packet = ipv4(VIP, CLIENT, TCP, tcp(VIP, CLIENT, port, sport, flags, seq=7))
    return eth(packet, dst=CLIENT_MAC, src=PUBLIC_MAC)


def udp_frame(src, dst, sport, dport, *, checksum: bool = True, payload=b"query", macs=None):
    segment = udp(src, dst, sport, dport, payload)
    if not checksum:
        segment = segment[:6] + b"\0\0" + segment[8:]
    dst_mac, src_mac = macs or (DIRECTOR_MAC, CLIENT_MAC)
    return eth(ipv4(src, dst, UDP, segment), dst=dst_mac, src=src_mac)


def checked(out: RunResult) -> bytes:
    """The output, after checking its checksums independently (a UDP checksum of 0
    means none: only the IP header's is checked then)."""
    ip = out.data[14:]
    if ip[9] == UDP and ip[26:28] == b"\0\0":
        assert csum(ip[:20]) == 0, "IPv4 header checksum"
    else:
        check_ipv4(ip)
    return out.data


# --- the plan -----------------------------------------------------------------


def test_plan_accepts_nat_with_port_mapping_and_timeouts() -> None:
    p = nat_plan()
    assert "nat" in p.features
    web = next(s for s in p.services if s.name == "web")
    assert [r.port for r in web.reals] == [8080, 8080]
    assert p.timeouts == TIMEOUTS
    assert not p.notes


def test_plan_uses_ipvs_timeouts_when_lvs_cf_sets_none() -> None:
    config = "\n".join(line for line in CONFIG.splitlines() if "_timeout" not in line)
    assert nat_plan(config).timeouts == IPVS_TIMEOUTS == (900, 120, 300)


def test_the_nat_clock_counts_the_kernels_jiffies(nat: Nat) -> None:
    hz = kernel_hz()
    assert hz in (100, 250, 300, 1000)
    cfg = nat.dp.maps.nat_config()
    assert cfg.ns_per_jiffy * hz == 1_000_000_000
    assert (cfg.tcp_ns, cfg.tcpfin_ns, cfg.udp_ns) == tuple(t * 10**9 for t in TIMEOUTS)


# --- inbound --------------------------------------------------------------------


def test_syn_is_rewritten_to_the_real_server_port_and_redirected(nat: Nat) -> None:
    rip = nat.rip("web", 40000, TCP, 80)
    out = nat.inbound(to_vip(40000))
    assert out.retval == XDP_REDIRECT
    assert checked(out) == at_real(rip, 40000)
    assert nat.dp.maps.nat_flows() == {
        (IPv4Address(rip), 8080, IPv4Address(CLIENT), 40000, TCP): (IPv4Address(VIP), 80)
    }
    c = nat.dp.maps.global_counters()
    assert (c["nat_in"], c["tx"]) == (1, 0)


def test_established_flow_both_ways_with_payload(nat: Nat) -> None:
    rip = nat.rip("web", 40001, TCP, 80)
    assert nat.inbound(to_vip(40001)).retval == XDP_REDIRECT
    back = nat.reply(from_real(rip, 40001))
    assert back.retval == XDP_REDIRECT
    assert checked(back) == at_client(40001)
    out = nat.inbound(to_vip(40001, ACK, payload=b"GET / HTTP/1.0\r\n\r\n"))
    assert out.retval == XDP_REDIRECT
    assert checked(out) == at_real(rip, 40001, ACK, payload=b"GET / HTTP/1.0\r\n\r\n")
    c = nat.dp.maps.global_counters()
    assert (c["nat_in"], c["nat_out"], c["ct_hit"]) == (2, 1, 1)


def test_flows_spread_and_each_keeps_its_real_server(nat: Nat) -> None:
    seen = set()
    for sport in range(41000, 41040):
        rip = nat.rip("web", sport, TCP, 80)
        seen.add(rip)
        assert nat.inbound(to_vip(sport)).data == at_real(rip, sport)
        assert nat.reply(from_real(rip, sport)).data == at_client(sport)
        assert nat.inbound(to_vip(sport, ACK)).data == at_real(rip, sport, ACK)
    assert seen == set(RIPS.values())


@pytest.mark.parametrize("checksum", [True, False], ids=["udp-checksum", "udp-no-checksum"])
def test_udp_both_ways_with_port_mapping(nat: Nat, checksum: bool) -> None:
    rip = nat.rip("dns", 5000, UDP, 53)
    out = nat.inbound(udp_frame(CLIENT, VIP, 5000, 53, checksum=checksum))
    assert out.retval == XDP_REDIRECT
    want = udp_frame(
        CLIENT, rip, 5000, 5353, checksum=checksum, macs=(MACS[IPv4Address(rip)], PRIVATE_MAC)
    )
    assert checked(out) == want
    reply = udp_frame(
        rip, CLIENT, 5353, 5000, checksum=checksum, payload=b"answer",
        macs=(PRIVATE_MAC, MACS[IPv4Address(rip)]),
    )  # fmt: skip
    back = nat.reply(reply)
    assert back.retval == XDP_REDIRECT
    want = udp_frame(
        VIP, CLIENT, 53, 5000, checksum=checksum, payload=b"answer", macs=(CLIENT_MAC, PUBLIC_MAC)
    )
    assert checked(back) == want
    assert (
        struct.unpack("!H", back.data[40:42])[0] != 0 if checksum else back.data[40:42] == b"\0\0"
    )


def test_client_mac_is_learned_from_the_inbound_frame(nat: Nat) -> None:
    gateway = bytes.fromhex("02000000beef")
    rip = nat.rip("web", 40002, TCP, 80)
    nat.inbound(DIRECTOR_MAC + gateway + to_vip(40002)[12:])
    assert nat.reply(from_real(rip, 40002)).data[:12] == gateway + PUBLIC_MAC


# --- timeouts -------------------------------------------------------------------


def test_idle_tcp_flow_expires_after_tcp_timeout(nat: Nat) -> None:
    rip = nat.rip("web", 40010, TCP, 80)
    nat.inbound(to_vip(40010))
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 5)  # past tcpfin, not past tcp
    assert nat.reply(from_real(rip, 40010)).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)  # the reply refreshed it
    assert nat.reply(from_real(rip, 40010, ACK)).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] + 1)
    late = from_real(rip, 40010, ACK)
    out = nat.reply(late)
    assert (out.retval, out.data) == (XDP_PASS, late)
    assert nat.dp.maps.global_counters()["nat_expired"] == 1


def test_fin_shortens_the_lifetime_to_tcpfin_timeout(nat: Nat) -> None:
    rip = nat.rip("web", 40011, TCP, 80)
    nat.inbound(to_vip(40011))
    assert nat.inbound(to_vip(40011, FIN | ACK)).data == at_real(rip, 40011, FIN | ACK)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] - 2)
    assert nat.reply(from_real(rip, 40011, FIN | ACK)).data == at_client(40011, FIN | ACK)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 1)
    late = from_real(rip, 40011, ACK)
    assert (nat.reply(late).retval, nat.reply(late).data) == (XDP_PASS, late)


def test_rst_from_the_real_server_shortens_the_lifetime(nat: Nat) -> None:
    rip = nat.rip("web", 40012, TCP, 80)
    nat.inbound(to_vip(40012))
    assert nat.reply(from_real(rip, 40012, RST)).data == at_client(40012, RST)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[1] + 1)
    assert nat.reply(from_real(rip, 40012, ACK)).retval == XDP_PASS


def test_an_expired_flow_is_absent_inbound_and_starts_again(nat: Nat) -> None:
    rip = nat.rip("web", 40013, TCP, 80)
    nat.inbound(to_vip(40013))
    nat.dp.maps.advance_nat_clock(TIMEOUTS[0] + 1)
    out = nat.inbound(to_vip(40013, ACK))  # not a hit: scheduled again, tracked anew
    assert out.data == at_real(rip, 40013, ACK)
    c = nat.dp.maps.global_counters()
    assert (c["nat_expired"], c["ct_hit"]) == (1, 0)
    assert nat.reply(from_real(rip, 40013, ACK)).data == at_client(40013, ACK)


def test_udp_flow_expires_after_udp_timeout(nat: Nat) -> None:
    rip = nat.rip("dns", 5001, UDP, 53)
    nat.inbound(udp_frame(CLIENT, VIP, 5001, 53))
    macs = (PRIVATE_MAC, MACS[IPv4Address(rip)])
    reply = udp_frame(rip, CLIENT, 5353, 5001, macs=macs)
    nat.dp.maps.advance_nat_clock(TIMEOUTS[2] - 1)
    assert nat.reply(reply).retval == XDP_REDIRECT
    nat.dp.maps.advance_nat_clock(TIMEOUTS[2] + 1)
    out = nat.reply(reply)
    assert (out.retval, out.data) == (XDP_PASS, reply)


def test_nat_service_without_configure_nat_is_dropped_and_counted() -> None:
    """A NAT program whose loader never called configure_nat (no devmap, no MACs):
    nothing is sent anywhere, and the counter says why."""
    dp = XdpDataplane(nat_plan(), pin_dir=None)
    try:
        dp.sync(MACS)
        packet = to_vip(40030)
        out = prog_run(dp.prog_fd, packet)
        assert (out.retval, out.data) == (XDP_DROP, packet)
        assert dp.maps.global_counters()["drop_nat_unset"] == 1
    finally:
        dp.close()


# --- ICMP errors about NAT flows ------------------------------------------------

ROUTER = "198.18.9.1"  # a router on the public path


def icmp_error(src, dst, quoted: bytes, *, type_=3, code=4, rest=1400, macs) -> bytes:
    """An ICMP error quoting ``quoted`` (IP header + 8 bytes), checksum computed here."""
    body = struct.pack("!BBHI", type_, code, 0, rest) + quoted
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return eth(ipv4(src, dst, ICMP, body), dst=macs[0], src=macs[1])


def quote(src, dst, sport, dport, proto=TCP, l4_check=b"\x12\x34") -> bytes:
    """The first 28 bytes of a packet as an ICMP error quotes it; the TCP/UDP checksum
    is a marker: the translation leaves it alone."""
    if proto == TCP:
        l4 = struct.pack("!HHI", sport, dport, 99)
    else:
        l4 = struct.pack("!HHH", sport, dport, 40) + l4_check
    return ipv4(src, dst, proto, l4, tot_len=1500)


def check_icmp(out: RunResult) -> None:
    ip = out.data[14:]
    assert csum(ip[:20]) == 0, "outer IPv4 header checksum"
    assert csum(ip[20:]) == 0, "ICMP checksum"
    assert csum(ip[28:48]) == 0, "quoted IPv4 header checksum"


def test_fragmentation_needed_about_a_reply_reaches_the_real_server(nat: Nat) -> None:
    """Path-MTU discovery: a router on the public side cannot forward the server's
    large reply (VIP:80 -> client) and tells the VIP; the real server must hear it,
    about its own packet RIP:8080 -> client."""
    rip = nat.rip("web", 40040, TCP, 80)
    nat.inbound(to_vip(40040))
    packet = icmp_error(ROUTER, VIP, quote(VIP, CLIENT, 80, 40040), macs=(PUBLIC_MAC, CLIENT_MAC))
    out = nat.inbound(packet)
    assert out.retval == XDP_REDIRECT
    want = icmp_error(
        ROUTER, rip, quote(rip, CLIENT, 8080, 40040), macs=(MACS[IPv4Address(rip)], PRIVATE_MAC)
    )
    check_icmp(out)
    assert out.data == want
    assert nat.dp.maps.global_counters()["nat_icmp"] == 1


def test_port_unreachable_from_the_real_server_reaches_the_client(nat: Nat) -> None:
    rip = nat.rip("dns", 5010, UDP, 53)
    nat.inbound(udp_frame(CLIENT, VIP, 5010, 53))
    macs = (PRIVATE_MAC, MACS[IPv4Address(rip)])
    packet = icmp_error(rip, CLIENT, quote(CLIENT, rip, 5010, 5353, UDP), code=3, rest=0, macs=macs)
    out = nat.reply(packet)
    assert out.retval == XDP_REDIRECT
    want = icmp_error(
        VIP,
        CLIENT,
        quote(CLIENT, VIP, 5010, 53, UDP),
        code=3,
        rest=0,
        macs=(CLIENT_MAC, PUBLIC_MAC),
    )
    check_icmp(out)
    assert out.data == want


def test_icmp_that_is_not_about_a_nat_flow_passes(nat: Nat) -> None:
    rip = nat.rip("web", 40041, TCP, 80)
    nat.inbound(to_vip(40041))
    macs = (PRIVATE_MAC, MACS[IPv4Address(rip)])
    echo = bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])
    public = [
        eth(ipv4(CLIENT, VIP, ICMP, echo)),  # ping the VIP: the director answers
        icmp_error(ROUTER, VIP, quote(VIP, CLIENT, 80, 40042), macs=(PUBLIC_MAC, CLIENT_MAC)),
    ]
    for packet in public:
        out = nat.inbound(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    private = [
        eth(ipv4(rip, NAT_ROUTER, ICMP, echo), dst=PRIVATE_MAC, src=macs[1]),
        icmp_error(rip, CLIENT, quote(CLIENT, rip, 40042, 8080), code=3, macs=macs),
    ]
    for packet in private:
        out = nat.reply(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    assert nat.dp.maps.global_counters()["nat_icmp"] == 0


# --- the private side's other traffic goes to the kernel untouched --------------


def _arp() -> bytes:
    return eth(bytes(28), dst=b"\xff" * 6, src=MACS[IPv4Address(RIPS["rs1"])], ethertype=0x0806)


def test_replies_not_ours_pass_untouched(nat: Nat) -> None:
    rip = nat.rip("web", 40020, TCP, 80)
    other = RIPS["rs1"] if rip == RIPS["rs2"] else RIPS["rs2"]
    nat.inbound(to_vip(40020))
    cases = [
        from_real(rip, 40021),  # a client port with no flow
        from_real(rip, 40020, port=8081),  # another port of the real server
        from_real(other, 40020),  # the other real server: not this flow's
        _arp(),
        # the real server talking to the director itself (health checks, ARP's peer)
        eth(
            ipv4(rip, NAT_ROUTER, TCP, tcp(rip, NAT_ROUTER, 8080, 3000, ACK)),
            dst=PRIVATE_MAC,
            src=MACS[IPv4Address(rip)],
        ),
    ]
    for packet in cases:
        out = nat.reply(packet)
        assert (out.retval, out.data) == (XDP_PASS, packet)
    c = nat.dp.maps.global_counters()
    assert (c["pass_nat_no_flow"], c["pass_not_ipv4"], c["nat_out"]) == (4, 1, 0)


# --- across CPUs -------------------------------------------------------------------


def test_reply_on_another_cpu_than_the_request(nat: Nat) -> None:
    """Inbound on the public interface and the reply on the private one run on
    whatever CPUs their queues (veth: their senders) use: the one connection table
    serves both, and the reply refreshes the flow's single last-seen time."""
    saved = os.sched_getaffinity(0)
    cpus = sorted(saved)[:2]
    if len(cpus) < 2:
        raise AssertionError("this test needs two CPUs")
    rip = nat.rip("web", 40950, TCP, 80)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        assert nat.inbound(to_vip(40950)).retval == XDP_REDIRECT
        os.sched_setaffinity(0, {cpus[1]})
        nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)
        back = nat.reply(from_real(rip, 40950))
        assert back.retval == XDP_REDIRECT and checked(back) == at_client(40950)
        os.sched_setaffinity(0, {cpus[0]})
        nat.dp.maps.advance_nat_clock(TIMEOUTS[0] - 1)  # alive: the reply refreshed it
        out = nat.inbound(to_vip(40950, ACK))
        assert out.retval == XDP_REDIRECT and checked(out) == at_real(rip, 40950, ACK)
    finally:
        os.sched_setaffinity(0, saved)
    c = nat.dp.maps.global_counters()
    assert (c["nat_in"], c["nat_out"], c["ct_hit"], c["nat_expired"]) == (2, 1, 1, 0)
