"""IPv6 scheduling in live traffic through the XDP load balancer (real sockets, real
veths, native XDP): the IPv6 twin of test_xdp_lc.py, wlc against wrr, and
persistence by prefix length.

The segment is test_xdp_ipv6.py's (a bridge joining a client, the director and three
real servers answering directly, all in 2001:2:0:21::/64) with three services on one
VIP and the same three servers of equal weight: ``lc6`` (port 80, wlc), ``plain6``
(port 8080, wrr) and ``sticky6`` (port 81, wlc, persistent, ``pmask = 64``). For lc6
and plain6 the client first holds HELD connections on rs1 (rs2 and rs3 failed for
that moment), then opens NEW short connections (each closed with a FIN, which
releases its count): under wrr rs1 takes its Maglev share, under wlc it is one of two
candidates and the less loaded other one wins unless both candidates are rs1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv6Address

import pytest

from compiler import compile_text
from dataplane.plan import ServicePlan, Sizes, persist_client, plan
from dataplane.xdp import RealState, XdpDataplane
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import LcLab, dr_segment, link_mac, pass_on_switch

pytestmark = pytest.mark.netns

NET = "2001:2:0:21::"
VIP = f"{NET}100"
DIRECTOR = f"{NET}1"
CLIENT = f"{NET}2"
CLIENT2 = f"{NET}3:2"  # the same /64, another address
REALS = {"rs1": f"{NET}11", "rs2": f"{NET}12", "rs3": f"{NET}13"}
HELD, NEW = 40, 180

SERVER = "  server {name} {{\n    address = {addr}\n    active = 1\n    weight = 1\n  }}\n"
SERVERS = "".join(SERVER.format(name=n, addr=a) for n, a in REALS.items())
CONFIG = f"""network = direct
virtual lc6 {{
  active = 1
  address = {VIP} eth0
  port = 80
  scheduler = wlc
{SERVERS}}}
virtual plain6 {{
  active = 1
  address = {VIP} eth0
  port = 8080
  scheduler = wrr
{SERVERS}}}
virtual sticky6 {{
  active = 1
  address = {VIP} eth0
  port = 81
  scheduler = wlc
  persistent = 300
  pmask = /64
{SERVERS}}}
"""


Lab = LcLab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    result = compile_text("lc6.cf", CONFIG)
    assert result.ok, result.diagnostics
    sizes = Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021)
    p = plan(result.config, sizes, ipv6=True)
    assert {"ipv6", "lc", "persistence"} <= p.features
    dp = XdpDataplane(p, pin_dir=None)
    with Topology("xdp-lc6") as t:
        seg = dr_segment(t, clients=[CLIENT, CLIENT2], director=DIRECTOR, vips=[VIP], reals=REALS)
        macs = {}
        for name, rs in seg.reals.items():
            t.serve(rs, name=name, tcp=[80, 81, 8080], bind="::")
            macs[IPv6Address(REALS[name])] = link_mac(rs)
        with pass_on_switch(seg):
            dp.sync(macs)
            with inside(seg.director):
                assert dp.attach("eth0") == "native"
            lab = Lab(dp, p, macs, start_client(seg.client), CLIENT)
            # neighbour discovery first (through the wrr service, which counts
            # nothing): a SYN whose answer waits for it is retransmitted
            for src in (CLIENT, CLIENT2):
                names = lab.ask(
                    op="names", src=src, dst=VIP, port=8080, n=30, tolerant=True, timeout=10
                )
                assert {"rs1", "rs2", "rs3"} <= set(names)
            dp.maps.clear_flows()
            yield lab
    dp.close()


def _load_rs1_then_open(lab: Lab, svc: ServicePlan) -> tuple[list[int], list[list]]:
    """HELD connections held open on rs1, then NEW short ones: (held ports, the new
    ones' [source port, server])."""
    lab.sync({r.index: RealState(failed=True) for r in svc.reals if r.name != "rs1"})
    held = [lab.ask(op="hold", src=CLIENT, dst=VIP, port=svc.port) for _ in range(HELD)]
    assert {name for _sport, name in held} == {"rs1"}
    lab.sync({})
    new = lab.ask(op="many", src=CLIENT, dst=VIP, port=svc.port, n=NEW)
    assert len(new) == NEW
    return [sport for sport, _name in held], new


def test_a_loaded_ipv6_server_gets_fewer_new_connections_under_wlc_than_wrr(lab: Lab) -> None:
    lc, plain = lab.service("lc6"), lab.service("plain6")
    lc_held, lc_new = _load_rs1_then_open(lab, lc)
    # the held connections are counted, the closed ones released by their FINs
    idle = {"rs1": 0, "rs2": 0, "rs3": 0}
    assert lab.wait_conns(lc, idle | {"rs1": HELD}) == idle | {"rs1": HELD}
    wrr_held, wrr_new = _load_rs1_then_open(lab, plain)
    assert lab.conns(plain) == idle  # wrr counts nothing

    under_wlc = Counter(name for _sport, name in lc_new)
    under_wrr = Counter(name for _sport, name in wrr_new)
    assert under_wrr["rs1"] > NEW // 6  # wrr: the table alone, a third each
    for sport, name in lc_new:  # wlc: the less loaded of its two candidates
        a, b = lab.candidates(lc, sport)
        if name == "rs1":
            assert (a, b) == ("rs1", "rs1")
        else:
            assert name in (a, b) and name != "rs1"
            if a == "rs1":
                assert name == b
    assert under_wlc["rs1"] < under_wrr["rs1"]
    assert lab.dp.maps.global_counters()["lc_second"] > 0

    for sport in lc_held + wrr_held:  # their FINs release rs1's count
        lab.ask(op="close", sport=sport)
    assert lab.wait_conns(lc, idle) == idle


def test_clients_of_one_prefix_stick_to_one_real(lab: Lab) -> None:
    sticky = lab.service("sticky6")
    first = lab.ask(op="many", src=CLIENT, dst=VIP, port=81, n=20)
    second = lab.ask(op="many", src=CLIENT2, dst=VIP, port=81, n=20)
    names = {name for _sport, name in first + second}
    assert len(names) == 1  # 40 flows over 3 servers, 2 addresses: one template
    (name,) = names
    prefix = persist_client(IPv6Address(CLIENT2), sticky)
    assert prefix == IPv6Address(NET)
    real = next(r for r in sticky.reals if r.name == name)
    assert lab.dp.maps.templates6() == {(sticky.index, prefix): real.index}
    assert lab.dp.maps.global_counters()["persist_hit"] >= 39
