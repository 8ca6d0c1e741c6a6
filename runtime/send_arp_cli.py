"""``lvs-router send-arp [-i DEV] SRC_IP SRC_MAC TARGET_IP TARGET_MAC``: piranha's
send_arp as a subcommand (spec §6).

Same arguments as send_arp(8): exactly four positionals, ``-i`` defaulting to
``eth0``, hardware addresses as 12 hex digits with optional ``:``, IPs or host
names. One frame per invocation, as the original sent; ``--count``/``--interval``
repeat it the way pulse did (5 × 1 s). The frame is §6.2's: Ethernet to TARGET_MAC,
an ARP *reply* saying SRC_IP is at SRC_MAC, addressed to TARGET_IP/TARGET_MAC.
With an IPv6 SRC_IP an unsolicited neighbour advertisement for it goes out instead
(TARGET_IP and TARGET_MAC are then unused: NAs go to all nodes).

runtime/cli.py wires it in with :func:`add_parser` and :func:`run`; ``python -m
runtime.send_arp_cli`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from runtime.pulse import garp

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", dest="device", default="eth0", metavar="DEV", help="default: eth0")
    p.add_argument("src_ip", metavar="SRC_IP", help="the address being announced (VIP)")
    p.add_argument("src_mac", metavar="SRC_MAC", help="the MAC it is at, e.g. 0011223344AA")
    p.add_argument("target_ip", metavar="TARGET_IP", help="pulse passed the broadcast address")
    p.add_argument("target_mac", metavar="TARGET_MAC", help="pulse passed ffffffffffff")
    p.add_argument("--count", type=int, default=1, help="frames to send (pulse: 5; default 1)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``send-arp`` subcommand; :func:`run` handles its arguments."""
    p = subparsers.add_parser(
        "send-arp",
        help="send piranha-style gratuitous ARP for an address",
        description=__doc__.split("\n\n")[1],
    )
    _configure(p)


def _host(text: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(text)
    except ValueError:
        return ip_address(socket.getaddrinfo(text, None, socket.AF_INET)[0][4][0])


def frame_for(args: argparse.Namespace) -> bytes:
    """The frame the arguments describe (pure apart from host-name look-ups)."""
    src = _host(args.src_ip)
    src_mac = garp.parse_mac(args.src_mac)
    if isinstance(src, IPv6Address):
        return garp.na_frame(src, src_mac)
    target = _host(args.target_ip)
    if not isinstance(target, IPv4Address):
        raise ValueError(f"TARGET_IP {args.target_ip} is not IPv4 but SRC_IP is")
    return garp.arp_frame(src, src_mac, target, garp.parse_mac(args.target_mac))


def run(args: argparse.Namespace) -> int:
    """Send; 0 when every frame went out, 1 on a send failure, 2 on bad arguments."""
    try:
        frame = frame_for(args)
    except (ValueError, OSError) as e:
        print(f"send-arp: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.count < 1 or args.interval < 0:
        print("send-arp: --count must be >= 1 and --interval >= 0", file=sys.stderr)
        return EXIT_USAGE
    errors: list[OSError] = []
    # one socket for the whole series: closing an AF_PACKET socket waits for an RCU
    # grace period (~8 ms), which a socket per frame would pay every time
    try:
        sock = garp.packet_socket(args.device)
    except OSError as e:
        print(f"send-arp: {args.device}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED

    def send(device: str, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError as e:
            errors.append(e)
            raise

    with sock:
        sent = asyncio.run(
            garp.repeat(args.device, frame, count=args.count, interval=args.interval, send=send)
        )
    if errors:
        print(f"send-arp: {args.device}: {errors[0].strerror or errors[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if sent == args.count else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="send-arp", description=__doc__.split("\n\n")[1])
    _configure(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
