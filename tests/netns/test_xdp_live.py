"""Live traffic through the XDP load balancer: real sockets, real veths, native XDP.

One L2 segment (a bridge in its own namespace) joins a client, the director and three
real servers. The director holds the VIPs on eth0 (so it answers ARP for them) and
runs our XDP program there in native mode; the real servers hold the VIPs on ``lo``
with ``arp_ignore=1``/``arp_announce=2``, run tests/netns/servers.py, and answer the
client directly. For the tunnelled service the real servers' eth0 runs our IPIP decap
program (the kernel has no ipip module). The director's frames leave by ``XDP_TX``,
which on a veth needs an XDP program on the peer: the bridge port runs an XDP_PASS one.

Every connection's real server is predicted from the same Maglev table the loader
wrote and the program's flow hash computed in Python (dataplane.plan.flow_hash), so
the assertions are exact per connection, not statistical. The program is compiled
once for the module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from compiler import compile_text
from dataplane.decap import Decap
from dataplane.plan import Sizes, addr_hash, plan
from dataplane.xdp import RealState, XdpDataplane
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import XdpLab as Lab
from tests.netns.xdp_lab import dr_segment, link_mac, pass_on_switch

pytestmark = pytest.mark.netns

VIP, VIP_TUN = "198.18.20.100", "198.18.20.101"
DIRECTOR = "198.18.20.1"
CLIENTS = ("198.18.20.2", "198.18.20.3")
REALS = {"rs1": ("198.18.20.11", 1), "rs2": ("198.18.20.12", 2), "rs3": ("198.18.20.13", 3)}
TCP, UDP = 6, 17

SERVER = "  server {name} {{\n    address = {addr}\n    active = 1\n    weight = {w}\n  }}\n"
SERVERS = "".join(SERVER.format(name=n, addr=a, w=w) for n, (a, w) in REALS.items())
CONFIG = f"""network = direct
virtual web {{
  active = 1
  address = {VIP} eth0:1
  port = 80
  scheduler = wrr
{SERVERS}}}
virtual dns {{
  active = 1
  address = {VIP} eth0:1
  port = 53
  protocol = udp
  scheduler = wrr
  send = "x"
  expect = "y"
{SERVERS}}}
virtual sticky {{
  active = 1
  address = {VIP} eth0:1
  port = 443
  scheduler = wrr
  persistent = 300
  pmask = 255.255.255.255
{SERVERS}}}
virtual tunnelled {{
  active = 1
  address = {VIP_TUN} eth0:2
  port = 80
  network = tunnel
  scheduler = wrr
{SERVERS}}}
"""


@pytest.fixture(scope="module")
def built() -> Iterator[Lab]:
    result = compile_text("live.cf", CONFIG)
    assert result.ok, result.diagnostics
    p = plan(result.config, Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021))
    dp = XdpDataplane(p, pin_dir=None)
    decap = Decap([IPv4Address(a) for a, _ in REALS.values()])
    with Topology("xdp-live") as t:
        seg = dr_segment(
            t,
            clients=CLIENTS,
            director=DIRECTOR,
            vips=[VIP, VIP_TUN],
            reals={name: addr for name, (addr, _w) in REALS.items()},
        )
        macs = {}
        for name, rs in seg.reals.items():
            with inside(rs):
                assert decap.attach("eth0") == "native"
            t.serve(rs, name=name, tcp=[80, 443], udp=[53])
            macs[IPv4Address(REALS[name][0])] = link_mac(rs)
        with pass_on_switch(seg):
            dp.sync(macs)
            with inside(seg.director):
                assert dp.attach("eth0") == "native"
            yield Lab(dp, p, macs, start_client(seg.client), CLIENTS[0], decap=decap)
    decap.close()
    dp.close()


@pytest.fixture
def lab(built: Lab) -> Lab:
    built.sync({})
    built.dp.maps.clear_flows()
    return built


def test_many_connections_complete_and_follow_the_weighted_table(lab: Lab) -> None:
    web = lab.service("web")
    before = lab.new_flows(web)
    conns = lab.ask(op="many", src=CLIENTS[0], dst=VIP, port=80, n=240)
    assert len(conns) == 240
    got = [name for _sport, name in conns]
    assert got == [lab.expected(web, sport, CLIENTS[0]) for sport, _ in conns]
    counts = Counter(got)
    assert set(counts) == {"rs1", "rs2", "rs3"}
    after = lab.new_flows(web)
    assert {n: after[n] - before[n] for n in after} == dict(counts)
    # the table those connections followed gives the servers 1:2:3 of its slots
    table = lab.dp.table(web, {})
    slots = Counter(int(x) for x in table)
    total = lab.plan.sizes.ring_size
    for r in web.reals:
        assert abs(slots[r.index] / total - r.weight / 6) < 0.01


def test_udp_datagrams_follow_the_table(lab: Lab) -> None:
    dns = lab.service("dns")
    answers = lab.ask(op="udp", src=CLIENTS[1], dst=VIP, port=53, n=120, ports=True)
    assert [n for _s, n in answers] == [lab.expected(dns, s, CLIENTS[1]) for s, _n in answers]
    assert len({n for _s, n in answers}) == 3


def test_quiesced_server_keeps_its_open_connection_and_gets_no_new_ones(lab: Lab) -> None:
    web = lab.service("web")
    sport, name = lab.ask(op="hold", src=CLIENTS[0], dst=VIP, port=80)
    assert name == lab.expected(web, sport, CLIENTS[0])
    quiesced = next(r for r in web.reals if r.name == name)
    lab.sync({quiesced.index: RealState(weight=0)})
    packets = lab.dp.maps.real_counters(quiesced.index).packets
    for i in range(5):  # a moved flow would meet a server without the socket: RST
        assert lab.ask(op="echo", sport=sport, data=f"still-{i}") == f"still-{i}"
    assert lab.dp.maps.real_counters(quiesced.index).packets >= packets + 5
    flow = (IPv4Address(CLIENTS[0]), sport, IPv4Address(VIP), 80, TCP)
    assert lab.dp.maps.flows()[flow][0] == quiesced.index
    conns = lab.ask(op="many", src=CLIENTS[0], dst=VIP, port=80, n=90)
    names = [n for _s, n in conns]
    assert name not in names
    assert names == [lab.expected(web, s, CLIENTS[0]) for s, _n in conns]
    assert lab.ask(op="echo", sport=sport, data="last") == "last"
    lab.ask(op="close", sport=sport)


def test_persistence_sends_each_client_to_one_server(lab: Lab) -> None:
    sticky = lab.service("sticky")
    for src in CLIENTS:
        conns = lab.ask(op="many", src=src, dst=VIP, port=443, n=30)
        assert len({s for s, _n in conns}) == 30  # thirty different source ports
        want = lab.real_at(sticky, addr_hash(IPv4Address(src))).name
        assert [n for _s, n in conns] == [want] * 30
    # without persistence the same source ports would have spread over the servers
    spread = {lab.expected(sticky, s, CLIENTS[0]) for s, _n in conns}
    assert len(spread) > 1
    assert lab.dp.maps.global_counters()["persist_hit"] >= 2 * 29


def test_tcp_through_the_ipip_tunnel_and_the_real_servers_decap(lab: Lab) -> None:
    tun = lab.service("tunnelled")
    before = lab.decap.counters()["decapsulated"]
    conns = lab.ask(op="many", src=CLIENTS[0], dst=VIP_TUN, port=80, n=120)
    names = [n for _s, n in conns]
    assert names == [lab.expected(tun, s, CLIENTS[0]) for s, _n in conns]
    assert set(names) == {"rs1", "rs2", "rs3"}
    sport, name = lab.ask(op="hold", src=CLIENTS[1], dst=VIP_TUN, port=80)
    assert name == lab.expected(tun, sport, CLIENTS[1])
    assert lab.ask(op="echo", sport=sport, data="through the tunnel") == "through the tunnel"
    lab.ask(op="close", sport=sport)
    # every client packet of those connections was decapsulated (SYN, ACK, data, FIN...)
    assert lab.decap.counters()["decapsulated"] - before >= 121 * 4
