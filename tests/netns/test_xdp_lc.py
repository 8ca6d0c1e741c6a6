"""wlc against wrr in live traffic through the XDP load balancer (real sockets, real
veths, native XDP): a "slow" real server that holds many open connections receives
fewer new ones under wlc than under wrr.

The topology is test_xdp_live.py's (a bridge joining a client, the director and three
real servers answering directly) with two services on one VIP and the same three
servers of equal weight: ``lc`` (port 80, wlc) and ``plain`` (port 8080, wrr). For
each service, the client first holds HELD connections on rs1 (rs2 and rs3 failed for
that moment, so every new flow goes to rs1), then opens NEW short connections (each
closed with a FIN, which releases its count). Under wrr rs1 takes its Maglev share;
under wlc it is one of two candidates, and the less loaded other one wins unless both
candidates are rs1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from compiler import compile_text
from dataplane.plan import ServicePlan, Sizes, plan
from dataplane.xdp import RealState, XdpDataplane
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import LcLab, dr_segment, link_mac, pass_on_switch

pytestmark = pytest.mark.netns

VIP = "198.18.21.100"
DIRECTOR = "198.18.21.1"
CLIENT = "198.18.21.2"
REALS = {"rs1": "198.18.21.11", "rs2": "198.18.21.12", "rs3": "198.18.21.13"}
HELD, NEW = 40, 180

SERVER = "  server {name} {{\n    address = {addr}\n    active = 1\n    weight = 1\n  }}\n"
SERVERS = "".join(SERVER.format(name=n, addr=a) for n, a in REALS.items())
CONFIG = f"""network = direct
virtual lc {{
  active = 1
  address = {VIP} eth0:1
  port = 80
  scheduler = wlc
{SERVERS}}}
virtual plain {{
  active = 1
  address = {VIP} eth0:1
  port = 8080
  scheduler = wrr
{SERVERS}}}
"""


Lab = LcLab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    result = compile_text("lc.cf", CONFIG)
    assert result.ok, result.diagnostics
    p = plan(result.config, Sizes(max_services=8, max_reals=16, ct_size=4093, persist_size=1021))
    assert "lc" in p.features
    dp = XdpDataplane(p, pin_dir=None)
    with Topology("xdp-lc") as t:
        seg = dr_segment(t, clients=[CLIENT], director=DIRECTOR, vips=[VIP], reals=REALS)
        macs = {}
        for name, rs in seg.reals.items():
            t.serve(rs, name=name, tcp=[80, 8080])
            macs[IPv4Address(REALS[name])] = link_mac(rs)
        with pass_on_switch(seg):
            dp.sync(macs)
            with inside(seg.director):
                assert dp.attach("eth0") == "native"
            yield Lab(dp, p, macs, start_client(seg.client), CLIENT)
    dp.close()


def _load_rs1_then_open(lab: Lab, svc: ServicePlan) -> tuple[list[int], list[list]]:
    """HELD connections held open on rs1, then NEW short ones: (held ports, the new
    ones' [source port, server])."""
    others = {r.index: RealState(failed=True) for r in svc.reals if r.name != "rs1"}
    lab.dp.sync(lab.macs, others)  # for a moment every new flow goes to rs1
    held = [lab.ask(op="hold", src=CLIENT, dst=VIP, port=svc.port) for _ in range(HELD)]
    assert {name for _sport, name in held} == {"rs1"}
    lab.dp.sync(lab.macs, {})
    new = lab.ask(op="many", src=CLIENT, dst=VIP, port=svc.port, n=NEW)
    assert len(new) == NEW
    return [sport for sport, _name in held], new


def test_a_loaded_server_gets_fewer_new_connections_under_wlc_than_wrr(lab: Lab) -> None:
    lc, plain = lab.service("lc"), lab.service("plain")
    lc_held, lc_new = _load_rs1_then_open(lab, lc)
    # the held connections are counted, the closed ones released by their FINs
    assert lab.wait_conns(lc, {"rs1": HELD, "rs2": 0, "rs3": 0}) == {
        "rs1": HELD,
        "rs2": 0,
        "rs3": 0,
    }
    wrr_held, wrr_new = _load_rs1_then_open(lab, plain)
    assert lab.conns(plain) == {"rs1": 0, "rs2": 0, "rs3": 0}  # wrr counts nothing

    under_wlc = Counter(name for _sport, name in lc_new)
    under_wrr = Counter(name for _sport, name in wrr_new)
    # wrr: the Maglev table alone (a third of the slots each)
    assert under_wrr["rs1"] > NEW // 6
    # wlc: rs1 only when both candidates are rs1 (about one flow in nine), and
    # every other flow to the less loaded of its two candidates
    for sport, name in lc_new:
        a, b = lab.candidates(lc, sport)
        if name == "rs1":
            assert (a, b) == ("rs1", "rs1")
        else:
            assert name in (a, b) and name != "rs1"
            if a == "rs1":
                assert name == b
    # about 20 against about 60 of 180: five standard deviations apart
    assert under_wlc["rs1"] < under_wrr["rs1"]
    assert lab.dp.maps.global_counters()["lc_second"] > 0

    for sport in lc_held + wrr_held:  # their FINs release rs1's count
        lab.ask(op="close", sport=sport)
    assert lab.wait_conns(lc, {"rs1": 0, "rs2": 0, "rs3": 0}) == {"rs1": 0, "rs2": 0, "rs3": 0}
