"""The floating addresses: which ones a config asks for (pure) and bringing them up
and down with netlink (pyroute2), idempotently.

piranha ran ``ifconfig eth0:1 VIP [netmask M broadcast B] up`` for each distinct VIP
of an active virtual, and for ``nat_router`` in NAT mode, and ``ifconfig eth0:1
down`` to give them up (spec §3.5). We add and remove exactly those addresses, on
the base device, labelled with the alias name so ``ip addr`` and ``ifconfig`` show
them as piranha's did. Differences: without ``vip_nmask`` ifconfig gave the address
its classful netmask; we give it /32 (/128), which is what a floating service
address wants; an IPv6 VIP is added deprecated (preferred lifetime 0, so never
chosen as a source address) and without duplicate address detection. Adding an
address that is there, or removing one that is not, is not an error: activation and
deactivation can be repeated safely.

The netlink side is synchronous (pyroute2's ``IPRoute`` runs its own event loop, so
the asyncio adapter calls it through ``asyncio.to_thread``). ``netns`` names a
network namespace to work in, otherwise the caller's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from pyroute2 import IPRoute

from compiler.model import Config, Host, Hostname, Network

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class VipSpec:
    """One floating address as it goes on a device."""

    address: IPAddress
    prefixlen: int
    device: str  # the base device, e.g. eth0
    label: str | None  # the alias, e.g. eth0:1 (IPv4 only; None for a plain device)
    broadcast: IPv4Address | None  # only with a netmask, as ifconfig computed it


def resolve(host: Host) -> IPAddress:
    """A model host as an address; a host name is resolved now, as piranha did."""
    if isinstance(host, Hostname):
        return ip_address(socket.getaddrinfo(host.name, None)[0][4][0])
    return host


def _prefix(mask: IPv4Address | None) -> int:
    """A netmask's prefix length; no mask (or 0.0.0.0, piranha's "unset") is /32."""
    if mask is None or int(mask) == 0:
        return 32
    return bin(int(mask)).count("1")


def vip_spec(
    host: Host,
    device: str,
    mask: IPv4Address | None,
    interface_for_vip: Callable[[str], str] = lambda d: d,
) -> VipSpec:
    """One address: ``device`` as written (``eth0:1``) becomes base device + label;
    the broadcast is ``(ip & M) | ~M`` when a mask is given (§3.5 step 4)."""
    address = resolve(host)
    base, _, alias = device.partition(":")
    base = interface_for_vip(base)
    if isinstance(address, IPv6Address):
        return VipSpec(address, 128, base, None, None)
    prefixlen = _prefix(mask)
    label = f"{base}:{alias}" if alias else None
    broadcast = None
    if mask is not None and int(mask) != 0:
        broadcast = IPv4Address((int(address) & int(mask)) | (~int(mask) & 0xFFFFFFFF))
    return VipSpec(address, prefixlen, base, label, broadcast)


def desired_vips(
    config: Config, interface_for_vip: Callable[[str], str] = lambda d: d
) -> tuple[VipSpec, ...]:
    """Every distinct VIP of an active virtual (the first virtual naming an address
    decides its device and mask), then ``nat_router`` when any active virtual uses
    NAT."""
    out: list[VipSpec] = []
    seen: set[IPAddress] = set()
    for vs in config.active_virtuals:
        if vs.address is None or vs.device is None:
            continue
        spec = vip_spec(vs.address, vs.device, vs.vip_nmask, interface_for_vip)
        if spec.address not in seen:
            seen.add(spec.address)
            out.append(spec)
    nat = config.network is Network.NAT or any(
        config.forwarding(vs) is Network.NAT for vs in config.active_virtuals
    )
    if nat and config.nat_router is not None:
        nr = config.nat_router
        spec = vip_spec(nr.address, nr.device, config.nat_nmask, interface_for_vip)
        if spec.address not in seen:
            out.append(spec)
    return tuple(out)


class Netlink:
    """The few netlink operations pulse needs, each opening a short-lived socket."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    @contextmanager
    def _ipr(self) -> Iterator[IPRoute]:
        ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    @staticmethod
    def _index(ipr: IPRoute, device: str) -> int:
        found = ipr.link_lookup(ifname=device)
        if not found:
            raise LookupError(f"no such device: {device}")
        return found[0]

    @staticmethod
    def _family(address: IPAddress) -> int:
        return socket.AF_INET6 if isinstance(address, IPv6Address) else socket.AF_INET

    def present(self, spec: VipSpec) -> bool:
        with self._ipr() as ipr:
            return self._find(ipr, spec) is not None

    def _find(self, ipr: IPRoute, spec: VipSpec) -> int | None:
        idx = self._index(ipr, spec.device)
        for msg in ipr.get_addr(family=self._family(spec.address), index=idx):
            if ip_address(msg.get_attr("IFA_ADDRESS")) == spec.address:
                return int(msg["prefixlen"])
        return None

    def add(self, spec: VipSpec) -> bool:
        """Bring ``spec`` up; False when it already was."""
        with self._ipr() as ipr:
            if self._find(ipr, spec) is not None:
                return False
            kw: dict[str, object] = {}
            if spec.label:
                kw["label"] = spec.label
            if spec.broadcast is not None:
                kw["broadcast"] = str(spec.broadcast)
            if isinstance(spec.address, IPv6Address):
                kw["flags"] = 0x02  # IFA_F_NODAD: a floating address cannot wait for DAD
                # Deprecated at once (valid forever): it still receives and answers
                # neighbour solicitations, but source selection never picks it. A /128
                # VIP inside the real servers' /64 would otherwise win the longest-match
                # rule over the director's own /64 address and become the source of
                # its health checks, which a direct-routing real server (it holds the
                # VIP too) drops.
                kw["preferred_lft"] = 0
            ipr.addr(
                "add",
                index=self._index(ipr, spec.device),
                address=str(spec.address),
                prefixlen=spec.prefixlen,
                **kw,
            )
            return True

    def remove(self, spec: VipSpec) -> bool:
        """Take ``spec`` down; False when it was not there."""
        with self._ipr() as ipr:
            prefixlen = self._find(ipr, spec)
            if prefixlen is None:
                return False
            ipr.addr(
                "del",
                index=self._index(ipr, spec.device),
                address=str(spec.address),
                prefixlen=prefixlen,
            )
            return True

    def mac(self, device: str) -> bytes:
        """The device's hardware address (send_arp's SIOCGIFHWADDR)."""
        with self._ipr() as ipr:
            link = ipr.get_links(self._index(ipr, device))[0]
            return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))

    def broadcast(self, device: str) -> IPv4Address | None:
        """The device's own IPv4 broadcast, send_arp's target IP (piranha read it with
        SIOCGIFBRDADDR on the base device): that of its first address not labelled
        as an alias; when that address was added without one (``ip addr add`` sets
        none unless asked) the subnet's broadcast computed from its prefix."""
        with self._ipr() as ipr:
            idx = self._index(ipr, device)
            for msg in ipr.get_addr(family=socket.AF_INET, index=idx):
                label = msg.get_attr("IFA_LABEL")
                if label is not None and label != device:
                    continue
                brd = msg.get_attr("IFA_BROADCAST")
                if brd:
                    return IPv4Address(brd)
                net = ip_network(f"{msg.get_attr('IFA_LOCAL')}/{msg['prefixlen']}", strict=False)
                return net.broadcast_address if net.prefixlen < 31 else None
        return None

    def local_addresses(self) -> dict[IPAddress, str]:
        """Every address on a non-loopback interface, with its device (§3.2 amMaster)."""
        with self._ipr() as ipr:
            names = {
                link["index"]: link.get_attr("IFLA_IFNAME")
                for link in ipr.get_links()
                if not link["flags"] & 0x8  # IFF_LOOPBACK
            }
            return {
                ip_address(msg.get_attr("IFA_ADDRESS")): names[msg["index"]]
                for msg in ipr.get_addr()
                if msg["index"] in names
            }

    def link_up(self, device: str) -> bool:
        """§3.7: administratively up and with carrier (a missing device is down)."""
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=device)
            if not found:
                return False
            link = ipr.get_links(found[0])[0]
            if not link["flags"] & 0x1:  # IFF_UP
                return False
            return link.get_attr("IFLA_CARRIER") != 0 and link.get_attr("IFLA_OPERSTATE") in (
                "UP",
                "UNKNOWN",
            )
