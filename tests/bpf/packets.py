"""Building and checking test packets (Ethernet/IPv4/TCP/UDP) without scapy."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

ETH_IP = 0x0800
ETH_IP6 = 0x86DD
TCP, UDP, ICMP = 6, 17, 1
SYN, ACK, RST, PSH = 0x02, 0x10, 0x04, 0x08
DIRECTOR_MAC = bytes.fromhex("020000000001")
CLIENT_MAC = bytes.fromhex("020000000002")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(payload: bytes, dst: bytes = DIRECTOR_MAC, src: bytes = CLIENT_MAC, ethertype=ETH_IP):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    frag: int = 0,
    ttl: int = 64,
    ident: int = 0x1234,
    tos: int = 0,
    version: int = 4,
    ihl: int | None = None,
    tot_len: int | None = None,
) -> bytes:
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    length = tot_len if tot_len is not None else 20 + len(options) + len(payload)
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            (version << 4) | ihl,
            tos,
            length,
            ident,
            frag,
            ttl,
            proto,
            0,
            IPv4Address(src).packed,
            IPv4Address(dst).packed,
        )
        + options
    )
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ip_address(src).version == 6:  # RFC 8200 8.1
        return (
            IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!IxxxB", length, proto)
        )
    return IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, proto, length)


def ipv6(
    src: str,
    dst: str,
    nh: int,
    payload: bytes,
    *,
    hlim: int = 64,
    version: int = 6,
    payload_len: int | None = None,
    flow: int = 0,
) -> bytes:
    """An IPv6 header (next header ``nh``) and its payload."""
    length = len(payload) if payload_len is None else payload_len
    first = (version << 28) | flow
    return (
        struct.pack("!IHBB", first, length, nh, hlim)
        + IPv6Address(src).packed
        + IPv6Address(dst).packed
        + payload
    )


def tcp6_packet(src, dst, sport, dport, flags=SYN, payload=b"", hlim=64) -> bytes:
    l4 = tcp(src, dst, sport, dport, flags, payload)
    return eth(ipv6(src, dst, TCP, l4, hlim=hlim), ethertype=ETH_IP6)


def udp6_packet(src, dst, sport, dport, payload=b"ping") -> bytes:
    return eth(ipv6(src, dst, UDP, udp(src, dst, sport, dport, payload)), ethertype=ETH_IP6)


def tcp(src, dst, sport, dport, flags=SYN, payload=b"", seq=1000, doff=5) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, doff << 4, flags, 65535, 0, 0)
    c = csum(_pseudo(src, dst, TCP, len(hdr) + len(payload)) + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


def udp(src, dst, sport, dport, payload=b"ping") -> bytes:
    length = 8 + len(payload)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    c = csum(_pseudo(src, dst, UDP, length) + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", c) + payload


def tcp_packet(src, dst, sport, dport, flags=SYN, payload=b"") -> bytes:
    return eth(ipv4(src, dst, TCP, tcp(src, dst, sport, dport, flags, payload)))


def udp_packet(src, dst, sport, dport, payload=b"ping") -> bytes:
    return eth(ipv4(src, dst, UDP, udp(src, dst, sport, dport, payload)))


def check_ipv4(ip: bytes) -> None:
    """IP header checksum and the L4 checksum over the pseudo header are valid."""
    ihl = (ip[0] & 0xF) * 4
    assert csum(ip[:ihl]) == 0, "IPv4 header checksum"
    proto = ip[9]
    total = struct.unpack("!H", ip[2:4])[0]
    l4 = ip[ihl:total]
    src, dst = str(IPv4Address(ip[12:16])), str(IPv4Address(ip[16:20]))
    if proto in (TCP, UDP):
        assert csum(_pseudo(src, dst, proto, len(l4)) + l4) == 0, "L4 checksum"


ICMP6 = 58


def icmp6(src: str, dst: str, type_: int, code: int, rest: int, body: bytes) -> bytes:
    """An ICMPv6 message (RFC 4443) with its checksum over the IPv6 pseudo header."""
    msg = struct.pack("!BBHI", type_, code, 0, rest) + body
    c = csum(_pseudo(src, dst, ICMP6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def check_ipv6(ip: bytes) -> None:
    """The TCP, UDP or ICMPv6 checksum over the IPv6 pseudo header is valid (and a UDP
    checksum is not 0, which IPv6 does not allow)."""
    nh = ip[6]
    length = struct.unpack("!H", ip[4:6])[0]
    l4 = ip[40 : 40 + length]
    src, dst = str(IPv6Address(ip[8:24])), str(IPv6Address(ip[24:40]))
    if nh == UDP:
        assert l4[6:8] != b"\0\0", "UDP checksum 0 in IPv6"
    assert csum(_pseudo(src, dst, nh, len(l4)) + l4) == 0, "L4 checksum over the pseudo header"
