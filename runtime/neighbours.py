"""Next-hop MAC addresses for the XDP dataplane, from the kernel's neighbour table.

The XDP program rewrites the destination MAC itself (direct routing) or sends the
IPIP packet to the next hop's MAC (tunnel), so the daemon must know, for each real
server, the MAC of the host the frame goes to: the server itself when it is on a
connected network, else the gateway of the kernel's route to it.

We let the kernel do ARP: :meth:`Neighbours.refresh` reads the neighbour table in one
dump, and for an address it does not know yet sends one UDP datagram to the discard
port, which makes the kernel resolve the address (an ARP request on the wire); the
next refresh finds the answer. Re-reading the table on every tick follows changes: a
real server replaced by a machine with another MAC is re-learned by the kernel (its
old entry fails its unicast probes, or the new machine's gratuitous ARP updates it)
and the daemon re-syncs the maps with the new MAC.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address

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


class Neighbours:
    """Next hops and their MACs for a set of real-server addresses.

    ``static`` MACs (``--real-mac``) win over the neighbour table and are never probed.
    """

    def __init__(self, static: Mapping[IPv4Address, bytes] | None = None) -> None:
        from pyroute2 import IPRoute

        self._ipr = IPRoute()
        self.static = dict(static or {})
        self._hops: dict[IPv4Address, IPv4Address] = {}
        self._probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._probe.setblocking(False)

    def close(self) -> None:
        self._ipr.close()
        self._probe.close()

    def next_hop(self, addr: IPv4Address) -> IPv4Address:
        """The address whose MAC frames to ``addr`` go to (route lookup, cached)."""
        hop = self._hops.get(addr)
        if hop is None:
            hop = addr
            try:
                for route in self._ipr.route("get", dst=str(addr)):
                    gw = route.get_attr("RTA_GATEWAY")
                    if gw:
                        hop = IPv4Address(gw)
            except Exception:  # no route: ARP for the address itself (fails visibly later)
                pass
            self._hops[addr] = hop
        return hop

    def table(self) -> dict[IPv4Address, bytes]:
        """Every usable IPv4 entry of the kernel's neighbour table, in one dump."""
        found: dict[IPv4Address, bytes] = {}
        for n in self._ipr.get_neighbours(family=socket.AF_INET):
            if n["state"] & (NUD_INCOMPLETE | NUD_FAILED):
                continue
            dst, lladdr = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
            if dst and lladdr:
                found[IPv4Address(dst)] = parse_mac(lladdr)
        return found

    def refresh(self, addresses: Iterable[IPv4Address]) -> dict[IPv4Address, bytes]:
        """MAC per real-server address for those that have one now; probes the rest."""
        addresses = list(addresses)
        known = self.table()
        out: dict[IPv4Address, bytes] = {}
        for addr in addresses:
            if addr in self.static:
                out[addr] = self.static[addr]
                continue
            hop = self.next_hop(addr)
            mac = known.get(hop)
            if mac is not None:
                out[addr] = mac
            else:
                self.probe(hop)
        return out

    def probe(self, addr: IPv4Address) -> None:
        """Make the kernel resolve ``addr``: one empty datagram to its discard port."""
        with contextlib.suppress(OSError):  # unreachable now: the next refresh tries again
            self._probe.sendto(b"", (str(addr), DISCARD_PORT))
