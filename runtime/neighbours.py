"""Next-hop MAC addresses for the XDP dataplane, from the kernel's neighbour table.

The XDP program rewrites the destination MAC itself (direct routing) or sends the
IPIP / IP6IP6 packet to the next hop's MAC (tunnel), so the daemon must know, for
each real server, the MAC of the host the frame goes to: the server itself when it is
on a connected network, else the gateway of the kernel's route to it.

We let the kernel do ARP (IPv4) and neighbour discovery (IPv6):
:meth:`Neighbours.refresh` reads the neighbour table of each family it needs in one
dump, and for an address it does not know yet sends one UDP datagram to the discard
port, which makes the kernel resolve the address (an ARP request, or a neighbour
solicitation, on the wire); the next refresh finds the answer. Re-reading the table
on every tick follows changes: a real server replaced by a machine with another MAC
is re-learned by the kernel (its old entry fails its unicast probes, or the new
machine's gratuitous ARP / unsolicited neighbour advertisement updates it) and the
daemon re-syncs the maps with the new MAC.

An IPv6 gateway is usually a link-local address, which means something only on one
interface: entries are matched by (interface, address) when the route says which
interface, and the probe to a link-local hop carries that interface as its scope.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

Address = IPv4Address | IPv6Address
# a next hop: its address and the interface the route leaves by (None: not known)
Hop = tuple[Address, int | None]

# entry states that hold no usable MAC (linux/neighbour.h NUD_*)
NUD_INCOMPLETE, NUD_FAILED, NUD_NOARP = 0x01, 0x20, 0x40
DISCARD_PORT = 9


def parse_mac(text: str) -> bytes:
    octets = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(octets) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return octets


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def family(addr: Address) -> int:
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def address_order(addr: Address) -> tuple[int, int]:
    """A sort key for addresses of both families (``sorted`` cannot compare an
    IPv4Address with an IPv6Address): IPv4 first, each family in numeric order."""
    return addr.version, int(addr)


def lookup(table: Mapping[tuple[int, Address], bytes], hop: Hop) -> bytes | None:
    """The MAC ``table`` (:meth:`Neighbours.table`) holds for ``hop``: the entry on
    the hop's interface when the route named one, else the entry on any interface
    (an address outside fe80::/10 and 169.254/16 is the same host wherever it is
    seen)."""
    addr, oif = hop
    if oif is not None:
        mac = table.get((oif, addr))
        if mac is not None or addr.is_link_local:
            return mac
    return next((mac for (_i, a), mac in table.items() if a == addr), None)


class Neighbours:
    """Next hops and their MACs for a set of real-server addresses (IPv4, IPv6 or
    both). ``static`` MACs (``--real-mac``) win over the neighbour table and are
    never probed."""

    def __init__(self, static: Mapping[Address, bytes] | None = None) -> None:
        from pyroute2 import IPRoute

        self._ipr = IPRoute()
        self.static = dict(static or {})
        self._hops: dict[Address, Hop] = {}
        self._probes: dict[int, socket.socket] = {}  # family -> probe socket

    def close(self) -> None:
        self._ipr.close()
        for s in self._probes.values():
            s.close()
        self._probes.clear()

    def hop(self, addr: Address) -> Hop:
        """Where frames to ``addr`` go: the route's gateway (or ``addr`` itself on a
        connected network) and the interface (route lookup, cached)."""
        hop = self._hops.get(addr)
        if hop is None:
            hop = (addr, None)
            try:
                for route in self._ipr.route("get", dst=str(addr)):
                    gw = route.get_attr("RTA_GATEWAY")
                    hop = (ip_address(gw) if gw else addr, route.get_attr("RTA_OIF"))
            except Exception:  # no route: resolve the address itself (fails visibly later)
                pass
            self._hops[addr] = hop
        return hop

    def next_hop(self, addr: Address) -> Address:
        """The address whose MAC frames to ``addr`` go to."""
        return self.hop(addr)[0]

    def table(
        self, families: Iterable[int] = (socket.AF_INET,)
    ) -> dict[tuple[int, Address], bytes]:
        """Every usable entry of the kernel's neighbour table of ``families``, one dump
        each: (interface index, address) -> MAC."""
        found: dict[tuple[int, Address], bytes] = {}
        for fam in families:
            for n in self._ipr.get_neighbours(family=fam):
                if n["state"] & (NUD_INCOMPLETE | NUD_FAILED):
                    continue
                dst, lladdr = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
                if dst and lladdr:
                    found[(n["ifindex"], ip_address(dst))] = parse_mac(lladdr)
        return found

    def refresh(self, addresses: Iterable[Address]) -> dict[Address, bytes]:
        """MAC per real-server address for those that have one now; probes the rest."""
        out: dict[Address, bytes] = {}
        hops: dict[Address, Hop] = {}
        for addr in addresses:
            if addr in self.static:
                out[addr] = self.static[addr]
            else:
                hops[addr] = self.hop(addr)
        known = self.table(sorted({family(h) for h, _oif in hops.values()})) if hops else {}
        probed: set[Hop] = set()
        for addr, hop in hops.items():
            mac = lookup(known, hop)
            if mac is not None:
                out[addr] = mac
            elif hop not in probed:
                probed.add(hop)
                self.probe(*hop)
        return out

    def probe(self, addr: Address, oif: int | None = None) -> None:
        """Make the kernel resolve ``addr`` (ARP or neighbour solicitation): one empty
        datagram to its discard port, scoped to ``oif`` when link-local."""
        fam = family(addr)
        s = self._probes.get(fam)
        if s is None:
            s = self._probes[fam] = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
        where: tuple = (str(addr), DISCARD_PORT)
        if fam == socket.AF_INET6:
            where = (str(addr), DISCARD_PORT, 0, oif if addr.is_link_local and oif else 0)
        with contextlib.suppress(OSError):  # unreachable now: the next refresh tries again
            s.sendto(b"", where)
