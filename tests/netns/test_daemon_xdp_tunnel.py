"""``lvs-router run --dataplane xdp`` with ``network = tunnel`` and real servers behind a
router: the daemon must send the IPIP packets to the *gateway's* MAC, which it finds
through the kernel's route to each real server and the neighbour table.

::

    client 198.18.30.2 ─┐                       ┌─ rs1 198.18.31.11 (VIP on lo, decap)
    director 198.18.30.1 ├─ br0 ─ gw ─ br1 ─────┤
    (VIP 198.18.30.100)  ┘  198.18.30.254       └─ rs2 198.18.31.12
                            198.18.31.1

The real servers' kernel has no ``ipip`` module, so they run our decap program
(dataplane/decap.py) on eth0; they answer the client directly through the router.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from bcc import BPF

from dataplane.decap import Decap
from dataplane.xdp import attach_xdp
from tests.netns.daemon_lab import DaemonLab as Lab
from tests.netns.test_daemon_xdp import CLIENT_ADDR, VIP
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import PASS_PROGRAM

pytestmark = pytest.mark.netns

GW_NEAR, GW_FAR = "198.18.30.254", "198.18.31.1"
RIPS = {"rs1": "198.18.31.11", "rs2": "198.18.31.12"}


def config() -> str:
    servers = "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n    }}\n"
        for n, a in RIPS.items()
    )
    return (
        f"network = tunnel\nvirtual web {{\n    active = 1\n    address = {VIP} eth0:1\n"
        "    port = 80\n    scheduler = wrr\n    timeout = 1\n    reentry = 2\n"
        f'    expect = "rs"\n{servers}}}\n'
    )


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    passer = BPF(text=PASS_PROGRAM)
    pass_fn = passer.load_func(b"xdp_pass", BPF.XDP)
    decap = Decap([IPv4Address(a) for a in RIPS.values()])
    with Topology("daemon-tunnel") as t:
        near, far = t.netns("switch"), t.netns("switch2")
        t.bridge(near)
        t.bridge(far)
        client, lb, gw = t.netns("client"), t.netns("director"), t.netns("gw")
        t.veth(client, "eth0", near, "client")
        t.veth(lb, "eth0", near, "director")
        t.veth(gw, "eth0", near, "gw")
        t.veth(gw, "eth1", far, "gw")
        for port in ("client", "director", "gw"):
            t.attach(near, port)
        t.attach(far, "gw")
        client.addr("eth0", f"{CLIENT_ADDR}/24")
        client.no_tx_offload("eth0")  # its frames cross XDP
        client.route("198.18.31.0/24", "via", GW_NEAR)
        lb.addr("eth0", "198.18.30.1/24")
        lb.addr("eth0", f"{VIP}/32")
        lb.route("198.18.31.0/24", "via", GW_NEAR)
        gw.addr("eth0", f"{GW_NEAR}/24")
        gw.addr("eth1", f"{GW_FAR}/24")
        gw.sysctl("net.ipv4.ip_forward", 1)
        for dev in ("all", "default", "eth0", "eth1"):
            gw.sysctl(f"net.ipv4.conf.{dev}.rp_filter", 0)  # outer sources are 172.16/16
        reals = {}
        for name, addr in RIPS.items():
            rs = reals[name] = t.netns(name)
            t.veth(rs, "eth0", far, name)
            t.attach(far, name)
            for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
                for dev in ("all", "eth0"):
                    rs.sysctl(f"net.ipv4.conf.{dev}.{key}", value)
            rs.addr("eth0", f"{addr}/24")
            rs.addr("lo", f"{VIP}/32")
            rs.route("default", "via", GW_FAR)
            with inside(rs):
                assert decap.attach("eth0") == "native"
        with inside(near):  # XDP_TX from the director's eth0 arrives here
            assert attach_xdp(pass_fn, "director") == "native"
        proc = start_client(client)
        lab = Lab(t, lb, client, reals, proc, tmp_path, vip=VIP, src=CLIENT_ADDR)
        for name in RIPS:
            lab.start_tcp(name)
        try:
            yield lab
        finally:
            lab.close()
    decap.close()
    passer.cleanup()


def test_tunnelled_service_behind_a_router_uses_the_gateways_mac(lab: Lab) -> None:
    lab.write_config(config(), network=None)
    lab.start("--on-stop", "remove")
    lab.wait_servers("web", rs1="up", rs2="up")
    assert lab.names(n=30) == {"rs1", "rs2"}  # through the gateway, decapsulated
    # the director never learned a real server's own MAC (not on its link): every
    # frame it sent went to the gateway's
    for addr in RIPS.values():
        assert lab.lb.ip("neigh", "show", addr).strip() == ""
    assert GW_NEAR in lab.lb.ip("neigh", "show", GW_NEAR)
    log = lab.log()
    assert f"no MAC for {RIPS['rs1']} yet" in log  # resolved later, through the route
    sport, name = lab.ask(op="hold", src=CLIENT_ADDR, dst=VIP, port=80)
    assert lab.ask(op="echo", sport=sport, data="tunnelled") == "tunnelled"
    lab.stop_tcp(name)  # its connection closes with it; the rest moves to the other
    other = "rs2" if name == "rs1" else "rs1"
    lab.wait_servers("web", **{name: "down"})
    assert lab.names() == {other}
    assert lab.stop() == 0
