"""Gratuitous ARP as piranha's send_arp sent it, and IPv6 unsolicited neighbour
advertisements: pure frame builders and a thin AF_PACKET sender.

send_arp's frame (spec §6.2) is an unsolicited *broadcast ARP reply* — opcode 2,
sender = VIP → our MAC, target MAC ff:ff:ff:ff:ff:ff, target IP = the interface's
broadcast address — padded with zeros to 60 bytes. pulse sends it five times one
second apart per address (§6.1); count and interval are parameters here.

For an IPv6 VIP the equivalent is an unsolicited neighbour advertisement (RFC 4861
§7.2.6): ICMPv6 type 136 to ff02::1 with the Override flag, the VIP as target and
our MAC in a target link-layer address option, hop limit 255 (receivers drop
anything else), from the VIP itself.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
FRAME_MIN = 60  # Ethernet minimum without FCS; send_arp pads to it


def parse_mac(text: str) -> bytes:
    """send_arp's hardware address syntax: 12 hex digits, ``:`` (or ``-``) allowed."""
    digits = text.replace(":", "").replace("-", "")
    if len(digits) != 12:
        raise ValueError(f"bad hardware address {text!r}: want 12 hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"bad hardware address {text!r}: not hexadecimal") from None


def arp_frame(
    src_ip: IPv4Address,
    src_mac: bytes,
    target_ip: IPv4Address,
    target_mac: bytes = BROADCAST_MAC,
) -> bytes:
    """send_arp's frame, byte for byte (§6.2): Ethernet to ``target_mac``, ARP reply."""
    eth = target_mac + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
    arp += src_mac + src_ip.packed + target_mac + target_ip.packed
    frame = eth + arp
    return frame + bytes(FRAME_MIN - len(frame))


def announcement_frame(address: IPv4Address, src_mac: bytes) -> bytes:
    """An RFC 5227 §3 ARP announcement: a broadcast *request* whose sender and target
    IP are both the VIP (target MAC zero). Not what send_arp sent — an extension:
    Linux neighbours apply a new MAC from piranha's reply only if their entry is older
    than ``locktime`` (1 s by default), but from this form at once (``is_garp`` in
    the kernel's arp_process)."""
    eth = BROADCAST_MAC + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    arp += src_mac + address.packed + bytes(6) + address.packed
    frame = eth + arp
    return frame + bytes(FRAME_MIN - len(frame))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: IPv6Address, dst: IPv6Address, icmp: bytes) -> int:
    """The ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 §8.1)."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(icmp), 58)
    return _checksum(pseudo + icmp)


def na_frame(target: IPv6Address, src_mac: bytes) -> bytes:
    """An unsolicited neighbour advertisement for ``target`` → ``src_mac``."""
    flags = 0x20000000  # Override; not Router, not Solicited
    body = struct.pack("!BBHI", 136, 0, 0, flags) + target.packed
    body += struct.pack("!BB", 2, 1) + src_mac  # target link-layer address, 8 bytes
    csum = icmpv6_checksum(target, ALL_NODES, body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + target.packed + ALL_NODES.packed
    return ALL_NODES_MAC + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def announce_frames(
    address: IPv4Address | IPv6Address,
    src_mac: bytes,
    broadcast: IPv4Address | None,
    rfc5227: bool = False,
) -> tuple[bytes, ...]:
    """The takeover announcement for one address: send_arp's ARP reply for IPv4
    (followed by an RFC 5227 announcement when ``rfc5227``), an NA for IPv6."""
    if isinstance(address, IPv6Address):
        return (na_frame(address, src_mac),)
    reply = arp_frame(address, src_mac, broadcast or IPv4Address("255.255.255.255"))
    return (reply, announcement_frame(address, src_mac)) if rfc5227 else (reply,)


def packet_socket(device: str) -> socket.socket:
    """A raw AF_PACKET socket bound to ``device`` (send_arp used the older
    SOCK_PACKET; the frame on the wire is the same). Keep it for a series: its
    ``close()`` waits for an RCU grace period (~8 ms measured here, more under load)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((device, 0))
    except OSError:
        s.close()
        raise
    return s


def send_frame(device: str, frame: bytes) -> None:
    """One frame out of ``device`` on a socket of its own (see :func:`packet_socket`)."""
    with packet_socket(device) as s:
        s.send(frame)


class Announcer:
    """One address's announcement, ready to go: the frames built and a raw socket
    bound to the device, both prepared when pulse starts, so that a takeover costs one
    ``send()`` per frame — no netlink round trip for the MAC and broadcast, no socket
    to open — and can run straight from the dead timer's callback.

    The MAC and broadcast are those of start-up; :meth:`update` rebuilds the frames
    when they changed (pulse re-reads them after the first round) and reopens the
    socket when the device was replaced (a send fails with ENODEV/ENXIO)."""

    def __init__(
        self,
        device: str,
        address: IPv4Address | IPv6Address,
        mac: bytes,
        broadcast: IPv4Address | None,
        rfc5227: bool = False,
    ) -> None:
        self.device = device
        self.address = address
        self.rfc5227 = rfc5227
        self.mac = mac
        self.broadcast = broadcast
        self.frames = announce_frames(address, mac, broadcast, rfc5227)
        self.sock: socket.socket | None = None
        self._open()

    def _open(self) -> None:
        s = packet_socket(self.device)
        s.setblocking(False)  # never stall the event loop; a full queue fails the round
        self.sock = s

    def update(self, mac: bytes, broadcast: IPv4Address | None) -> bool:
        """New frames if the device's MAC or broadcast changed; True when they did."""
        if (mac, broadcast) == (self.mac, self.broadcast):
            return False
        self.mac, self.broadcast = mac, broadcast
        self.frames = announce_frames(self.address, mac, broadcast, self.rfc5227)
        return True

    def send(self) -> None:
        """One round: every frame, back to back. Raises OSError when the device is
        gone even after reopening the socket once."""
        for attempt in (0, 1):
            try:
                if self.sock is None:
                    self._open()
                assert self.sock is not None
                for f in self.frames:
                    self.sock.send(f)
                return
            except OSError:
                self.close()
                if attempt:
                    raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def repeat(
    device: str,
    frame: bytes | tuple[bytes, ...],
    *,
    count: int = 5,
    interval: float = 1.0,
    send: Callable[[str, bytes], None] = send_frame,
) -> int:
    """Send ``frame`` (or each of several frames, back to back) ``count`` times,
    ``interval`` seconds apart, the first at once. Returns how many rounds went out;
    a failing send (device gone) ends the series."""
    frames = (frame,) if isinstance(frame, bytes) else frame
    sent = 0
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        try:
            for f in frames:
                send(device, f)
        except OSError:
            break
        sent += 1
    return sent
