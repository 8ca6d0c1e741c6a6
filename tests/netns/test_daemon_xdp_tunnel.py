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

The same lab in IPv6 (IP6IP6; 2001:2:0:50::/64 near, 2001:2:0:51::/64 far) routes the
far network through the gateway's *link-local* address, as IPv6 routers are usually
reached: the daemon must find that neighbour on the interface the route names. Its
VIP is deprecated on the director (docs/operations.md "IPv6"), so that the director's
health checks leave from its own address.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address

import pytest
from bcc import BPF

from dataplane.decap import Decap
from dataplane.xdp import attach_xdp
from tests.netns.daemon_lab import DaemonLab as Lab
from tests.netns.topo import Netns, Topology, inside, start_client
from tests.netns.xdp_lab import PASS_PROGRAM

pytestmark = pytest.mark.netns


@dataclass(frozen=True)
class Addresses:
    client: str
    director: str
    vip: str
    near: str  # the near network, for the client's and director's routes
    far: str  # the real servers' network
    gw_near: str  # the gateway's address as the director's route names it
    gw_far: str
    rips: dict[str, str]

    @property
    def v6(self) -> bool:
        return ":" in self.vip


FAMILIES = {
    "ipv4": Addresses(
        client="198.18.30.2",
        director="198.18.30.1",
        vip="198.18.30.100",
        near="198.18.30.0/24",
        far="198.18.31.0/24",
        gw_near="198.18.30.254",
        gw_far="198.18.31.1",
        rips={"rs1": "198.18.31.11", "rs2": "198.18.31.12"},
    ),
    "ipv6": Addresses(
        client="2001:2:0:50::2",
        director="2001:2:0:50::1",
        vip="2001:2:0:50::100",
        near="2001:2:0:50::/64",
        far="2001:2:0:51::/64",
        gw_near="fe80::1",
        gw_far="2001:2:0:51::1",
        rips={"rs1": "2001:2:0:51::11", "rs2": "2001:2:0:51::12"},
    ),
}


def config(a: Addresses) -> str:
    servers = "".join(
        f"    server {n} {{\n        address = {r}\n        active = 1\n    }}\n"
        for n, r in a.rips.items()
    )
    device = "eth0" if a.v6 else "eth0:1"
    return (
        f"network = tunnel\nvirtual web {{\n    active = 1\n    address = {a.vip} {device}\n"
        "    port = 80\n    scheduler = wrr\n    timeout = 1\n    reentry = 2\n"
        f'    expect = "rs"\n{servers}}}\n'
    )


def _addr(ns: Netns, dev: str, address: str, prefix: int, *flags: str) -> None:
    family = "-6" if ":" in address else "-4"
    ns.ip(family, "addr", "add", f"{address}/{prefix}", "dev", dev, *flags)


def _via(ns: Netns, net: str, gw: str) -> None:
    family = "-6" if ":" in gw else "-4"
    ns.ip(family, "route", "add", net, "via", gw, "dev", "eth0")


@pytest.fixture(params=sorted(FAMILIES))
def lab(request: pytest.FixtureRequest, tmp_path) -> Iterator[Lab]:
    a = FAMILIES[request.param]
    net, host = (64, 128) if a.v6 else (24, 32)
    flags = ("nodad",) if a.v6 else ()
    passer = BPF(text=PASS_PROGRAM)
    pass_fn = passer.load_func(b"xdp_pass", BPF.XDP)
    decap = Decap([ip_address(r) for r in a.rips.values()])
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
        _addr(client, "eth0", a.client, net, *flags)
        client.no_tx_offload("eth0")  # its frames cross XDP
        _addr(lb, "eth0", a.director, net, *flags)
        # deprecated: received and answered for, never the source of the director's
        # own packets (its health checks)
        _addr(lb, "eth0", a.vip, host, *flags, *(("preferred_lft", "0") if a.v6 else ()))
        _addr(gw, "eth0", a.gw_near, 64 if a.v6 else net, *flags)
        _addr(gw, "eth1", a.gw_far, net, *flags)
        for ns in (client, lb):
            _via(ns, a.far, a.gw_near)
        if a.v6:
            gw.ip("-6", "route", "add", a.near, "dev", "eth0")  # on-link: no address there
            gw.sysctl("net.ipv6.conf.all.forwarding", 1)
        else:
            gw.sysctl("net.ipv4.ip_forward", 1)
            for dev in ("all", "default", "eth0", "eth1"):
                gw.sysctl(f"net.ipv4.conf.{dev}.rp_filter", 0)  # outer sources are 172.16/16
        reals = {}
        for name, addr in a.rips.items():
            rs = reals[name] = t.netns(name)
            t.veth(rs, "eth0", far, name)
            t.attach(far, name)
            for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
                for dev in ("all", "eth0"):
                    rs.sysctl(f"net.ipv4.conf.{dev}.{key}", value)
            _addr(rs, "eth0", addr, net, *flags)
            _addr(rs, "lo", a.vip, host, *flags)
            _via(rs, "default", a.gw_far)
            with inside(rs):
                assert decap.attach("eth0") == "native"
        with inside(near):  # XDP_TX from the director's eth0 arrives here
            assert attach_xdp(pass_fn, "director") == "native"
        proc = start_client(client)
        lab = Lab(
            t,
            lb,
            client,
            reals,
            proc,
            tmp_path,
            vip=a.vip,
            src=a.client,
            bind="::" if a.v6 else "0.0.0.0",
        )
        for name in a.rips:
            lab.start_tcp(name)
        try:
            yield lab
        finally:
            lab.close()
    decap.close()
    passer.cleanup()


def test_tunnelled_service_behind_a_router_uses_the_gateways_mac(lab: Lab) -> None:
    a = FAMILIES["ipv6" if ":" in lab.vip else "ipv4"]
    lab.write_config(config(a), network=None)
    lab.start("--on-stop", "remove")
    lab.wait_servers("web", rs1="up", rs2="up")
    assert lab.names(n=30) == {"rs1", "rs2"}  # through the gateway, decapsulated
    # the director never learned a real server's own MAC (not on its link): every
    # frame it sent went to the gateway's
    for addr in a.rips.values():
        assert lab.lb.ip("neigh", "show", addr).strip() == ""
    assert a.gw_near in lab.lb.ip("neigh", "show", a.gw_near, "dev", "eth0")
    log = lab.log()
    assert f"no MAC for {a.rips['rs1']} yet" in log  # resolved later, through the route
    sport, name = lab.ask(op="hold", dst=a.vip, port=80)
    assert lab.ask(op="echo", sport=sport, data="tunnelled") == "tunnelled"
    lab.stop_tcp(name)  # its connection closes with it; the rest moves to the other
    other = "rs2" if name == "rs1" else "rs1"
    lab.wait_servers("web", **{name: "down"})
    assert lab.names() == {other}
    assert lab.stop() == 0
