"""``lvs-router run --dataplane xdp --nat-interface eth1`` live: NAT virtuals served by
the daemon, with the reply path on the private interface; IPv4 and IPv6 (nat6.h).

    client (eth0) ---- (eth0) director (eth1) ---- bridge ---- rs1, rs2

The director's eth0 holds its address and the VIP; eth1 holds the nat_router address,
which the real servers use as their default route. The daemon runs in the director's
namespace as its own process: it loads the program, attaches the requests' path to
eth0 and the replies' path to eth1, finds the real servers' MACs on the private side
in the neighbour table, checks them (from the director's own address, which the reply
path leaves to the kernel) and keeps the maps in line. IP forwarding stays off, so a
reply that reaches the client went through our program. The VIP's ports map to the
real servers' (80 -> 8080/tcp, 53 -> 5353/udp). Frames redirected into a veth arrive
only when the peer runs an XDP program: the client's eth0 and the bridge's director
port run an XDP_PASS one; senders turn checksum offload off."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns.daemon_lab import DaemonLab as Lab
from tests.netns.daemon_lab import nat_config, nat_segment, nat_virtual
from tests.netns.topo import Topology, start_client

pytestmark = pytest.mark.netns

TIMING = ("timeout = 1", "reentry = 2")


@dataclass(frozen=True)
class Addresses:
    vip: str
    client: str
    director: str
    nat_router: str
    reals: dict[str, tuple[str, int]]  # name -> (address, weight)

    def config(self) -> str:
        web = nat_virtual(
            "web",
            vip=self.vip,
            port=80,
            reals=self.reals,
            real_port=8080,
            lines=(*TIMING, 'expect = "rs"'),
        )
        dns = nat_virtual(
            "dns",
            vip=self.vip,
            port=53,
            protocol="udp",
            reals=self.reals,
            real_port=5353,
            lines=(*TIMING, 'send = "q"', 'expect = "rs"'),
        )
        return nat_config(self.nat_router, web, dns)


FAMILIES = {
    "ipv4": Addresses(
        vip="198.18.32.100",
        client="198.18.32.2",
        director="198.18.32.1",
        nat_router="198.18.33.254",
        reals={"rs1": ("198.18.33.11", 1), "rs2": ("198.18.33.12", 2)},
    ),
    "ipv6": Addresses(
        vip="2001:2:0:42::100",
        client="2001:2:0:42::2",
        director="2001:2:0:42::1",
        nat_router="2001:2:0:43::fe",
        reals={"rs1": ("2001:2:0:43::11", 1), "rs2": ("2001:2:0:43::12", 2)},
    ),
}


def serve(lab: Lab, name: str) -> None:
    lab.start_tcp(name, (8080,))
    lab.start_udp(name, (5353,))


def stop_serving(lab: Lab, name: str) -> None:
    lab.stop_tcp(name)
    lab.stop_udp(name)


@pytest.fixture(params=sorted(FAMILIES))
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    a = FAMILIES[request.param]
    with (
        Topology("daemon-nat") as t,
        nat_segment(
            t,
            client=a.client,
            director=a.director,
            vip=a.vip,
            nat_router=a.nat_router,
            reals={name: addr for name, (addr, _w) in a.reals.items()},
        ) as seg,
    ):
        lab = Lab(
            t,
            seg.director,
            seg.client,
            seg.reals,
            start_client(seg.client),
            tmp_path,
            tag="daemon-nat-test",
            vip=a.vip,
            src=a.client,
            bind="::" if ":" in a.vip else "0.0.0.0",
            options=("--nat-interface", "eth1", "--on-stop", "remove"),
        )
        lab.write_config(a.config(), network=None)
        for name in a.reals:
            serve(lab, name)
        try:
            yield lab
        finally:
            lab.close()


def test_nat_virtuals_through_the_daemon_with_port_mapping_and_health_checks(lab: Lab) -> None:
    lab.start()
    lab.wait_servers(rs1="up", rs2="up")
    log = lab.log()
    assert "XDP NAT reply path attached to eth1 (native)" in log, log
    # many TCP connections to VIP:80, answered by the servers on 8080
    assert lab.names(n=60) == {"rs1", "rs2"}
    # UDP to VIP:53, answered from 5353 and translated back
    assert lab.udp_names(n=16) == {"rs1", "rs2"}
    # rs2 stops serving: its checks fail and it is taken out of both virtuals
    stop_serving(lab, "rs2")
    lab.wait_servers(rs1="up", rs2="down")
    assert lab.names(n=30) == {"rs1"}
    assert lab.udp_names(n=12) == {"rs1"}
    # back: in again after reentry
    serve(lab, "rs2")
    lab.wait_servers(rs1="up", rs2="up")
    assert lab.names(n=40) == {"rs1", "rs2"}
    # SIGTERM with --on-stop remove: both programs detached, our services gone
    assert lab.stop(signal.SIGTERM) == 0, lab.log()
    links = lab.lb.ip("link", "show")
    assert "prog/xdp" not in links, links
