"""The direct-routing segment the live XDP tests share: one bridge, a client, the
director and real servers set up as LVS-DR wants them, plus the pass program veth needs.

Built inside a :class:`tests.netns.topo.Topology`, so everything goes when it closes::

    switch (bridge)  ── client    CLIENTS/24
                     ── director  DIRECTOR/24 + each VIP/32 on eth0
                     ── rsN       its address/24, each VIP/32 on lo (arp_ignore = 1,
                                  arp_announce = 2, rp_filter off: the VIP is only for
                                  packets the director forwards, never ARPed for)

A frame the director's XDP program sends back out of its veth (``XDP_TX``) is only
delivered if the receiving peer runs an XDP program too (native XDP on veth), hence
:func:`pass_on_switch`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address

from bcc import BPF

from dataplane.decap import Decap
from dataplane.maps import lc_second_hash
from dataplane.plan import Plan, RealPlan, ServicePlan, flow_hash
from dataplane.xdp import RealState, XdpDataplane, attach_xdp
from tests.netns.topo import Netns, Topology, ask, inside

PASS_PROGRAM = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"


@dataclass
class XdpLab:
    """What a live XDP test module holds: the loader and its plan, the real servers'
    MACs, the client process (tests/netns/client.py) and the client address it speaks
    from by default, the run-time state last synced, and the decap program if any."""

    dp: XdpDataplane
    plan: Plan
    macs: dict
    client: subprocess.Popen
    src: str
    state: dict[int, RealState] = field(default_factory=dict)
    decap: Decap | None = None

    def ask(self, **command: object) -> object:
        return ask(self.client, **command)

    def service(self, name: str) -> ServicePlan:
        return next(s for s in self.plan.services if s.name == name)

    def sync(self, state: dict[int, RealState]) -> None:
        self.state = state
        self.dp.sync(self.macs, state)

    def real_at(self, svc: ServicePlan, h: int) -> RealPlan:
        """The real server the service's table (as the loader wrote it) gives hash h."""
        rid = int(self.dp.table(svc, self.state)[h % self.plan.sizes.ring_size])
        return next(r for r in svc.reals if r.index == rid)

    def expected(self, svc: ServicePlan, sport: int, src: str | None = None) -> str:
        """The server a new flow from (src or the default client, sport) must reach: the
        program's flow hash computed in Python, looked up in the same table."""
        client = ip_address(src or self.src)
        return self.real_at(svc, flow_hash(client, svc.vip, sport, svc.port, svc.proto)).name

    def new_flows(self, svc: ServicePlan) -> dict[str, int]:
        return {r.name: self.dp.maps.real_counters(r.index).new_flows for r in svc.reals}

    def fresh(self) -> XdpLab:
        """The lab as a test starts it: every real server healthy at its configured
        weight, no tracked flows, counters at zero."""
        self.sync({})
        self.dp.maps.clear_flows()
        self.dp.maps.reset_counters()
        return self


@dataclass
class DrSegment:
    switch: Netns
    client: Netns
    director: Netns
    reals: dict[str, Netns]


def link_mac(ns: Netns, dev: str = "eth0") -> bytes:
    """The MAC address of ``dev`` in ``ns``."""
    link = json.loads(ns.ip("-j", "link", "show", dev))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


def _addr(ns: Netns, dev: str, address: str, host: bool = False) -> None:
    """address/24 (or /32 with host), IPv6 /64 (or /128), usable at once (no DAD)."""
    if ":" in address:
        ns.ip("-6", "addr", "add", f"{address}/{128 if host else 64}", "dev", dev, "nodad")
    else:
        ns.addr(dev, f"{address}/{32 if host else 24}")


def dr_segment(
    t: Topology,
    *,
    clients: Sequence[str],
    director: str,
    vips: Sequence[str],
    reals: Mapping[str, str],
) -> DrSegment:
    """The segment above, IPv4 or IPv6 by the addresses given; ``reals`` maps a server's
    name (its namespace's role) to its address. Servers are not started: each test
    serves what its config needs."""
    sw = t.netns("switch")
    t.bridge(sw)
    client, lb = t.netns("client"), t.netns("director")
    t.veth(client, "eth0", sw, "client")
    t.veth(lb, "eth0", sw, "director")
    for port in ("client", "director"):
        t.attach(sw, port)
    for addr in clients:
        _addr(client, "eth0", addr)
    client.no_tx_offload("eth0")  # its frames cross XDP (checksums in software)
    _addr(lb, "eth0", director)
    for vip in vips:
        _addr(lb, "eth0", vip, host=True)
    spaces = {}
    for name, addr in reals.items():
        rs = spaces[name] = t.netns(name)
        t.veth(rs, "eth0", sw, name)
        t.attach(sw, name)
        for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
            for dev in ("all", "eth0"):
                rs.sysctl(f"net.ipv4.conf.{dev}.{key}", value)
        _addr(rs, "eth0", addr)
        for vip in vips:
            _addr(rs, "lo", vip, host=True)
    return DrSegment(sw, client, lb, spaces)


@contextmanager
def pass_on_switch(seg: DrSegment) -> Iterator[None]:
    """A pass-everything XDP program on the switch's director port, for as long as the
    block runs (the topology's teardown removes the port and the program with it)."""
    passer = BPF(text=PASS_PROGRAM)
    try:
        with inside(seg.switch):
            assert attach_xdp(passer.load_func(b"xdp_pass", BPF.XDP), "director") == "native"
        yield
    finally:
        passer.cleanup()


def check_udp_through_port_mapping(lab: XdpLab, dns: ServicePlan, client: str, vip: str) -> None:
    """100 UDP exchanges with VIP:53 (mapped to the real servers' own port), each
    answered by the real server the table predicts, both real servers used. Counted on
    the service itself: a global ``nat_out`` would also count a real server's answer
    to a late packet of an earlier test's TCP connection (a mid-flow packet without
    state is scheduled like a new flow, on another service)."""
    answers = lab.ask(op="udp", src=client, dst=vip, port=53, n=100, ports=True)
    assert [n for _s, n in answers] == [lab.expected(dns, s) for s, _n in answers]
    assert {n for _s, n in answers} == {"rs1", "rs2"}
    assert lab.dp.maps.service_counters(dns.index).packets == 200  # every datagram in and out
    assert lab.dp.maps.global_counters()["nat_out"] >= 100


def check_held_connection_survives_reweighting(
    lab: XdpLab, web: ServicePlan, client: str, vip: str
) -> None:
    """A connection held open on VIP:80 keeps its real server when another server's
    weight changes (the table moves slots) and when its own server is quiesced; new
    connections then avoid the quiesced one."""
    sport, name = lab.ask(op="hold", src=client, dst=vip, port=80)
    assert name == lab.expected(web, sport)
    held = next(r for r in web.reals if r.name == name)
    other = next(r for r in web.reals if r.name != name)
    assert lab.ask(op="echo", sport=sport, data="before") == "before"
    lab.sync({other.index: RealState(weight=5)})
    assert lab.ask(op="echo", sport=sport, data="reweighted") == "reweighted"
    lab.sync({held.index: RealState(weight=0)})
    for i in range(5):
        assert lab.ask(op="echo", sport=sport, data=f"still-{i}") == f"still-{i}"
    conns = lab.ask(op="many", src=client, dst=vip, port=80, n=40)
    assert {n for _s, n in conns} == {other.name}
    assert lab.ask(op="echo", sport=sport, data="last") == "last"
    lab.ask(op="close", sport=sport)


def check_many_tcp_through_port_mapping(
    lab: XdpLab, web: ServicePlan, client: str, reals: Mapping[str, str], flows: Callable[[], dict]
) -> None:
    """200 TCP connections to VIP:80 (mapped to the real servers' port 8080), each on
    the real server the table predicts, both used; every reply keyed [RIP]:8080 ->
    client:sport in the reverse table ``flows()`` returns, pointing back at VIP:80."""
    conns = lab.ask(op="many", src=client, dst=str(web.vip), port=80, n=200)
    names = [name for _sport, name in conns]
    assert names == [lab.expected(web, sport) for sport, _name in conns]
    assert set(names) == {"rs1", "rs2"}
    found = flows()
    for sport, name in conns:
        key = (ip_address(reals[name]), 8080, ip_address(client), sport, 6)
        assert found[key] == (web.vip, 80)
    c = lab.dp.maps.global_counters()
    # at least SYN, ACK, data, FIN, ACK in and SYN-ACK, greeting, echo, FIN out each
    assert c["nat_in"] >= 200 * 4 and c["nat_out"] >= 200 * 3


@dataclass
class LcLab(XdpLab):
    """A lab for the least-connection family: each flow's two candidates and the
    program's open-flow counts per real server."""

    def candidates(self, svc: ServicePlan, sport: int) -> tuple[str, str]:
        """The Maglev slot's real server and the second hash's, for the default client."""
        h = flow_hash(ip_address(self.src), svc.vip, sport, svc.port, svc.proto)
        return self.real_at(svc, h).name, self.real_at(svc, lc_second_hash(h)).name

    def conns(self, svc: ServicePlan) -> dict[str, int]:
        counts = self.dp.maps.real_conns()
        return {r.name: counts.get(r.index, 0) for r in svc.reals}

    def wait_conns(self, svc: ServicePlan, want: dict[str, int]) -> dict[str, int]:
        """The counts once the last FINs crossed the director (they travel after the
        client's close() returns); what they are after a few seconds otherwise."""
        deadline = time.monotonic() + 5
        while (got := self.conns(svc)) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got


def check_port_unreachable_translated(lab: XdpLab, client_ns: Netns, vip: str) -> None:
    """VIP:54 maps to port 5454, where no real server listens: the real server's port
    unreachable (about client -> RIP:5454) is translated on the private side (about
    client -> VIP:54, from the VIP), so the client's connected socket gets
    ECONNREFUSED instead of a timeout."""
    family = "AF_INET6" if ":" in vip else "AF_INET"
    code = (
        "import socket\n"
        f"u = socket.socket(socket.{family}, socket.SOCK_DGRAM); u.settimeout(5)\n"
        f"u.connect(('{vip}', 54)); u.send(b'q')\n"
        "try:\n    u.recv(100); print('answered')\n"
        "except ConnectionRefusedError:\n    print('refused')\n"
        "except TimeoutError:\n    print('timeout')\n"
    )
    assert client_ns.python(code).strip() == "refused"
    assert lab.dp.maps.global_counters()["nat_icmp"] == 1
