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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bcc import BPF

from dataplane.xdp import attach_xdp
from tests.netns.topo import Netns, Topology, inside

PASS_PROGRAM = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"


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


def dr_segment(
    t: Topology,
    *,
    clients: Sequence[str],
    director: str,
    vips: Sequence[str],
    reals: Mapping[str, str],
) -> DrSegment:
    """The segment above; ``reals`` maps a server's name (its namespace's role) to its
    address. Servers are not started: each test serves what its config needs."""
    sw = t.netns("switch")
    t.bridge(sw)
    client, lb = t.netns("client"), t.netns("director")
    t.veth(client, "eth0", sw, "client")
    t.veth(lb, "eth0", sw, "director")
    for port in ("client", "director"):
        t.attach(sw, port)
    for addr in clients:
        client.addr("eth0", f"{addr}/24")
    client.no_tx_offload("eth0")  # its frames cross XDP (checksums in software)
    lb.addr("eth0", f"{director}/24")
    for vip in vips:
        lb.addr("eth0", f"{vip}/32")
    spaces = {}
    for name, addr in reals.items():
        rs = spaces[name] = t.netns(name)
        t.veth(rs, "eth0", sw, name)
        t.attach(sw, name)
        for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
            for dev in ("all", "eth0"):
                rs.sysctl(f"net.ipv4.conf.{dev}.{key}", value)
        rs.addr("eth0", f"{addr}/24")
        for vip in vips:
            rs.addr("lo", f"{vip}/32")
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
