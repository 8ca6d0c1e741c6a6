"""Live IPv6 traffic through the XDP load balancer: direct routing on veths, native
XDP, the IPv6 twin of test_xdp_live.py's direct-routing tests.

One L2 segment (a bridge in its own namespace) joins a client, the director and three
real servers, all in 2001:2:0:20::/64 (RFC 5180's benchmarking range). The director
holds the VIP on eth0, so it answers the client's neighbour solicitations (our program
passes ICMPv6 to its stack) and runs our XDP program there; the real servers hold the
VIP on ``lo`` (/128, ``nodad``: no duplicate address detection to wait for) and answer
the client directly. IPv6 answers neighbour solicitations only for addresses of the
receiving interface, so the VIP on ``lo`` needs no ``arp_ignore`` twin. Every
connection's real server is predicted from the loader's Maglev table and
``plan.flow_hash`` over the IPv6 5-tuple.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv6Address

import pytest

from compiler import compile_text
from dataplane.decap import Decap
from dataplane.plan import Sizes, plan
from dataplane.xdp import RealState, XdpDataplane
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import XdpLab as Lab
from tests.netns.xdp_lab import dr_segment, link_mac, pass_on_switch

pytestmark = pytest.mark.netns

NET = "2001:2:0:20::"
VIP = f"{NET}100"
VIP_TUN = f"{NET}101"
DIRECTOR = f"{NET}1"
CLIENT = f"{NET}2"
REALS = {"rs1": (f"{NET}11", 1), "rs2": (f"{NET}12", 2), "rs3": (f"{NET}13", 3)}
TCP, UDP = 6, 17

SERVER = "  server {name} {{\n    address = {addr}\n    active = 1\n    weight = {w}\n  }}\n"
SERVERS = "".join(SERVER.format(name=n, addr=a, w=w) for n, (a, w) in REALS.items())
CONFIG = f"""network = direct
virtual web6 {{
  active = 1
  address = {VIP} eth0
  port = 80
  scheduler = wrr
{SERVERS}}}
virtual dns6 {{
  active = 1
  address = {VIP} eth0
  port = 53
  protocol = udp
  scheduler = wrr
  send = "x"
  expect = "y"
{SERVERS}}}
virtual tun6 {{
  active = 1
  address = {VIP_TUN} eth0
  port = 80
  network = tunnel
  scheduler = wrr
{SERVERS}}}
"""


@pytest.fixture(scope="module")
def built() -> Iterator[Lab]:
    result = compile_text("live6.cf", CONFIG)
    assert result.ok, result.diagnostics
    sizes = Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021)
    p = plan(result.config, sizes, ipv6=True)
    assert "ipv6" in p.features
    dp = XdpDataplane(p, pin_dir=None)
    decap = Decap([IPv6Address(a) for a, _w in REALS.values()])
    with Topology("xdp-v6") as t:
        seg = dr_segment(
            t,
            clients=[CLIENT],
            director=DIRECTOR,
            vips=[VIP, VIP_TUN],
            reals={name: addr for name, (addr, _w) in REALS.items()},
        )
        macs = {}
        for name, rs in seg.reals.items():
            with inside(rs):
                assert decap.attach("eth0") == "native"
            t.serve(rs, name=name, tcp=[80], udp=[53], bind="::")
            macs[IPv6Address(REALS[name][0])] = link_mac(rs)
        with pass_on_switch(seg):
            dp.sync(macs)
            with inside(seg.director):
                assert dp.attach("eth0") == "native"
            lab = Lab(dp, p, macs, start_client(seg.client), CLIENT, decap=decap)
            # Warm up neighbour discovery (the client's for the VIP, each real's for
            # the client, link-local DAD on fresh veths): a SYN whose answer waits
            # for it is retransmitted, and a SYN always counts a new flow.
            names = lab.ask(op="names", dst=VIP, port=80, n=30, tolerant=True, timeout=10)
            assert {"rs1", "rs2", "rs3"} <= set(names)
            yield lab
    decap.close()
    dp.close()


@pytest.fixture
def lab(built: Lab) -> Lab:
    built.sync({})
    built.dp.maps.clear_flows()
    return built


def test_many_connections_each_reach_the_predicted_real(lab: Lab) -> None:
    web = lab.service("web6")
    before = lab.new_flows(web)
    conns = lab.ask(op="many", dst=VIP, port=80, n=240)
    assert len(conns) == 240
    got = [name for _sport, name in conns]
    assert got == [lab.expected(web, sport) for sport, _ in conns]
    counts = Counter(got)
    assert set(counts) == {"rs1", "rs2", "rs3"}
    after = lab.new_flows(web)
    assert {n: after[n] - before[n] for n in after} == dict(counts)
    g = lab.dp.maps.global_counters()
    assert g["tx"] > 240 * 3  # SYN, ACK, data, FIN ... of each, all by XDP_TX


def test_udp_datagrams_follow_the_table(lab: Lab) -> None:
    dns = lab.service("dns6")
    answers = lab.ask(op="udp", dst=VIP, port=53, n=120, ports=True)
    assert [n for _s, n in answers] == [lab.expected(dns, s) for s, _n in answers]
    assert len({n for _s, n in answers}) == 3


def test_quiesced_server_keeps_its_open_connection_and_gets_no_new_ones(lab: Lab) -> None:
    web = lab.service("web6")
    sport, name = lab.ask(op="hold", dst=VIP, port=80)
    assert name == lab.expected(web, sport)
    quiesced = next(r for r in web.reals if r.name == name)
    lab.sync({quiesced.index: RealState(weight=0)})
    packets = lab.dp.maps.real_counters(quiesced.index).packets
    for i in range(5):  # a moved flow would meet a server without the socket: RST
        assert lab.ask(op="echo", sport=sport, data=f"still-{i}") == f"still-{i}"
    assert lab.dp.maps.real_counters(quiesced.index).packets >= packets + 5
    flow = (IPv6Address(CLIENT), sport, IPv6Address(VIP), 80, TCP)
    assert lab.dp.maps.flows6()[flow][0] == quiesced.index
    conns = lab.ask(op="many", dst=VIP, port=80, n=90)
    names = [n for _s, n in conns]
    assert name not in names
    assert names == [lab.expected(web, s) for s, _n in conns]
    assert lab.ask(op="echo", sport=sport, data="last") == "last"
    lab.ask(op="close", sport=sport)


def test_tcp_through_the_ip6ip6_tunnel_and_the_real_servers_decap(lab: Lab) -> None:
    tun = lab.service("tun6")
    before = lab.decap.counters()["decapsulated"]
    conns = lab.ask(op="many", dst=VIP_TUN, port=80, n=120)
    names = [n for _s, n in conns]
    assert names == [lab.expected(tun, s) for s, _n in conns]
    assert set(names) == {"rs1", "rs2", "rs3"}
    sport, name = lab.ask(op="hold", dst=VIP_TUN, port=80)
    assert name == lab.expected(tun, sport)
    assert lab.ask(op="echo", sport=sport, data="through the tunnel") == "through the tunnel"
    lab.ask(op="close", sport=sport)
    # every client packet of those connections was decapsulated (SYN, ACK, data, FIN...)
    assert lab.decap.counters()["decapsulated"] - before >= 121 * 4
