"""send_arp's frame (piranha-spec.md §6.2), IPv6 unsolicited NAs, and the VIPs a
config asks for (§3.5 activateLvs step 4)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address

import pytest

from compiler import compile_text
from runtime.pulse import garp
from runtime.pulse.vip import VipSpec, desired_vips

pytestmark = pytest.mark.unit

MAC = bytes.fromhex("0011223344aa")


def test_send_arp_frame_byte_for_byte() -> None:
    """§6.1's example ``send_arp -i eth0 172.16.11.211 0011223344AA 172.16.11.255
    ffffffffffff`` gives §6.2's frame: broadcast, ARP *reply*, VIP → our MAC, target
    the broadcast address, zero-padded to 60 bytes."""
    frame = garp.arp_frame(
        IPv4Address("172.16.11.211"),
        garp.parse_mac("0011223344AA"),
        IPv4Address("172.16.11.255"),
        garp.parse_mac("ffffffffffff"),
    )
    expected = bytes.fromhex(
        "ffffffffffff"  # 0-5 Ethernet destination
        "0011223344aa"  # 6-11 Ethernet source
        "0806"  # 12-13 EtherType ARP
        "0001"
        "0800"  # 14-17 htype Ethernet, ptype IPv4
        "06"
        "04"  # 18-19 hlen, plen
        "0002"  # 20-21 opcode 2 = reply
        "0011223344aa"
        "ac100bd3"  # 22-31 sender MAC, sender IP (the VIP)
        "ffffffffffff"
        "ac100bff"  # 32-41 target MAC, target IP (broadcast)
    ) + bytes(18)  # 42-59 padding
    assert frame == expected and len(frame) == 60


@pytest.mark.parametrize("text", ["0011223344AA", "00:11:22:33:44:aa", "00-11-22-33-44-AA"])
def test_parse_mac(text: str) -> None:
    """§6.1: 12 hex digits with optional ``:`` separators."""
    assert garp.parse_mac(text) == MAC


@pytest.mark.parametrize("text", ["0011223344", "00112233445566", "zz1122334455"])
def test_parse_mac_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        garp.parse_mac(text)


def _ones_sum(data: bytes) -> int:
    """An independent ones'-complement sum: add as one big integer, then fold."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    return total % 0xFFFF if total % 0xFFFF else (0xFFFF if total else 0)


def test_unsolicited_na_fields_and_checksum() -> None:
    """RFC 4861 §7.2.6: to ff02::1 (33:33:00:00:00:01), hop limit 255, ICMPv6 136
    code 0, Override set, Solicited clear, target = VIP, option 2 = our MAC; the
    checksum makes the pseudo-header sum 0xffff."""
    vip = IPv6Address("2001:db8::10")
    f = garp.na_frame(vip, MAC)
    assert f[0:6] == bytes.fromhex("333300000001") and f[6:12] == MAC
    assert f[12:14] == b"\x86\xdd"
    ip6, icmp = f[14:54], f[54:]
    assert ip6[0] >> 4 == 6 and int.from_bytes(ip6[4:6], "big") == len(icmp) == 32
    assert ip6[6] == 58 and ip6[7] == 255
    assert ip6[8:24] == vip.packed and ip6[24:40] == IPv6Address("ff02::1").packed
    assert icmp[0] == 136 and icmp[1] == 0
    assert icmp[4] == 0x20 and icmp[5:8] == b"\0\0\0"  # O=1, R=0, S=0
    assert icmp[8:24] == vip.packed
    assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC
    pseudo = vip.packed + IPv6Address("ff02::1").packed + len(icmp).to_bytes(4, "big")
    pseudo += b"\0\0\0\x3a"
    assert _ones_sum(pseudo + icmp) == 0xFFFF


def test_announce_frames_by_family() -> None:
    """IPv4: send_arp's reply (target = broadcast, 255.255.255.255 when the device has
    none), plus the RFC 5227 form on request; IPv6: one NA."""
    (reply,) = garp.announce_frames(IPv4Address("198.18.0.10"), MAC, None)
    assert reply[38:42] == bytes([255, 255, 255, 255])
    both = garp.announce_frames(IPv4Address("198.18.0.10"), MAC, None, rfc5227=True)
    assert both[0] == reply and both[1] == garp.announcement_frame(IPv4Address("198.18.0.10"), MAC)
    (na,) = garp.announce_frames(IPv6Address("2001:db8::1"), MAC, None, rfc5227=True)
    assert na[12:14] == b"\x86\xdd"


def test_rfc5227_announcement_bytes() -> None:
    """Extension: a broadcast ARP *request* with sender IP = target IP = VIP and a zero
    target MAC — the form Linux neighbours apply at once (no locktime)."""
    frame = garp.announcement_frame(IPv4Address("198.18.0.10"), MAC)
    expected = (
        bytes.fromhex("ffffffffffff0011223344aa08060001080006040001")
        + MAC
        + bytes([198, 18, 0, 10])
        + bytes(6)
        + bytes([198, 18, 0, 10])
        + bytes(18)
    )
    assert frame == expected and len(frame) == 60


def test_repeat_count_and_interval_zero() -> None:
    """§6.1: pulse sends each announcement 5 times; count is configurable, and a send
    that fails (device gone) ends the series."""
    sent: list[tuple[str, bytes]] = []
    n = asyncio.run(
        garp.repeat("eth0", b"x", count=3, interval=0, send=lambda d, f: sent.append((d, f)))
    )
    assert n == 3 and sent == [("eth0", b"x")] * 3
    sent.clear()
    n = asyncio.run(
        garp.repeat("eth0", (b"a", b"b"), count=2, interval=0, send=lambda d, f: sent.append(f))
    )
    assert n == 2 and sent == [b"a", b"b", b"a", b"b"]

    def failing(d: str, f: bytes) -> None:
        raise OSError(19, "No such device")

    assert asyncio.run(garp.repeat("gone0", b"x", count=5, interval=0, send=failing)) == 0


CF = """primary = 198.18.0.2
backup = 198.18.0.3
backup_active = 1
network = {network}
nat_router = 198.19.0.1 eth1:1
nat_nmask = 255.255.255.0
virtual a {{
  active = 1
  address = 198.18.0.10 eth0:1
  vip_nmask = 255.255.255.0
  port = 80
}}
virtual b {{
  active = 1
  address = 198.18.0.10 eth0:2
  port = 443
}}
virtual c {{
  active = 1
  address = 198.18.0.11 eth0
  port = 80
}}
virtual d {{
  active = 0
  address = 198.18.0.12 eth0:3
  port = 80
}}
"""


def test_desired_vips_distinct_active_with_labels_and_masks() -> None:
    """§3.5 step 4: every distinct VIP of an active virtual, with ``ifconfig``'s
    netmask and broadcast ``(ip & M) | ~M``; nat_router only in NAT mode."""
    cfg = compile_text("x.cf", CF.format(network="direct")).config
    assert desired_vips(cfg) == (
        VipSpec(IPv4Address("198.18.0.10"), 24, "eth0", "eth0:1", IPv4Address("198.18.0.255")),
        VipSpec(IPv4Address("198.18.0.11"), 32, "eth0", None, None),
    )
    nat = compile_text("x.cf", CF.format(network="nat")).config
    vips = desired_vips(nat, interface_for_vip=lambda d: {"eth0": "pub0"}.get(d, d))
    assert [str(v.address) for v in vips] == ["198.18.0.10", "198.18.0.11", "198.19.0.1"]
    assert vips[0].device == "pub0" and vips[0].label == "pub0:1"
    assert vips[2] == VipSpec(
        IPv4Address("198.19.0.1"), 24, "eth1", "eth1:1", IPv4Address("198.19.0.255")
    )


def test_desired_vips_ipv6() -> None:
    """An IPv6 VIP goes up as a /128 without a label (labels are IPv4-only)."""
    text = CF.format(network="direct").replace("198.18.0.11 eth0", "2001:db8::11 eth0:5")
    vips = desired_vips(compile_text("x.cf", text).config)
    assert VipSpec(IPv6Address("2001:db8::11"), 128, "eth0", None, None) in vips
