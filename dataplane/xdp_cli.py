"""``lvs-router apply/show --dataplane xdp``: the command handlers, kept out of
runtime/cli.py so the CLI only has to dispatch to them.

``apply_xdp(args)`` needs ``args.config`` (lvs.cf path), ``args.interface``,
``args.real_mac`` (list of ``RIP=MAC``, may be empty), ``args.xdp_mode``
(``native``/``generic``/``auto``), ``args.dialect`` (optional) and, for
``network = nat``, ``args.nat_interface`` (the interface towards the real servers);
``show_xdp(args)`` needs ``args.config``. Both return an exit status.
"""

from __future__ import annotations

import argparse
import socket
import sys
from ipaddress import IPv4Address
from typing import Any

from compiler import compile_file
from compiler.diagnostics import Severity, render_text
from compiler.model import Dialect

from .plan import LC_KIND, REAL_F_FAILED, REAL_F_QUIESCED, Plan, PlanError, plan

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The XDP options, for a parser that wants them."""
    p.add_argument("--interface", help="interface to attach the XDP program to")
    p.add_argument(
        "--real-mac",
        action="append",
        default=[],
        metavar="RIP=MAC",
        help="next-hop MAC of a real server (default: the neighbour table)",
    )
    p.add_argument("--xdp-mode", choices=["native", "generic", "auto"], default="native")
    p.add_argument(
        "--nat-interface",
        metavar="IF",
        help="network = nat: the interface towards the real servers (gets the reply path)",
    )


def _plan(args: Any) -> Plan | None:
    dialect = Dialect(getattr(args, "dialect", None) or Dialect.EXTENDED.value)
    try:
        result = compile_file(args.config, dialect)
    except OSError as err:
        print(f"lvs-router: cannot read {args.config}: {err.strerror or err}", file=sys.stderr)
        return None
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    if errors:
        sys.stderr.write(render_text(errors, {result.source.name: result.source}))
        return None
    try:
        return plan(result.config)
    except PlanError as err:
        where = f"{err.span}: " if err.span else ""
        print(f"{where}error: {err.message}", file=sys.stderr)
        if err.help:
            print(f"  = help: {err.help}", file=sys.stderr)
        return None


def parse_macs(pairs: list[str]) -> dict[IPv4Address, bytes]:
    macs = {}
    for pair in pairs:
        rip, _, mac = pair.partition("=")
        octets = bytes.fromhex(mac.replace(":", "").replace("-", ""))
        if len(octets) != 6:
            raise ValueError(f"--real-mac {pair}: not a MAC address")
        macs[IPv4Address(rip)] = octets
    return macs


def neighbour_macs(addresses: list[IPv4Address]) -> dict[IPv4Address, bytes]:
    """MACs the kernel's neighbour table knows for ``addresses``."""
    from pyroute2 import IPRoute

    found = {}
    with IPRoute() as ipr:
        for addr in addresses:
            for n in ipr.get_neighbours(dst=str(addr)):
                lladdr = n.get_attr("NDA_LLADDR")
                if lladdr:
                    found[addr] = bytes.fromhex(lladdr.replace(":", ""))
    return found


def interface_mac(ifname: str) -> bytes:
    """The interface's own MAC address (the source of frames we send from it)."""
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def apply_xdp(args: Any) -> int:
    from .xdp import XdpDataplane

    p = _plan(args)
    if p is None:
        return EXIT_ERRORS
    if not args.interface:
        print("lvs-router: --dataplane xdp needs --interface", file=sys.stderr)
        return EXIT_USAGE
    nat_if = getattr(args, "nat_interface", None)
    if "nat" in p.features and not nat_if:
        print(
            "lvs-router: network = nat needs --nat-interface (the interface towards the "
            "real servers)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        macs = parse_macs(args.real_mac)
    except ValueError as err:
        print(f"lvs-router: {err}", file=sys.stderr)
        return EXIT_USAGE
    wanted = sorted({r.address for r in p.reals} - set(macs))
    if wanted:
        macs.update(neighbour_macs(wanted))
    missing = sorted({r.address for r in p.reals} - set(macs))
    if missing:
        print(
            "lvs-router: no MAC address for real server(s) " + ", ".join(map(str, missing)),
            file=sys.stderr,
        )
        print("  = help: pass --real-mac RIP=MAC, or ping them so the neighbour table knows them")
        return EXIT_ERRORS
    for note in p.notes:
        print(note.render(), file=sys.stderr)
    dp = XdpDataplane(p, source=args.config)
    dp.sync(macs)
    if nat_if:
        dp.configure_nat(
            private_ifindex=socket.if_nametoindex(nat_if),
            public_ifindex=socket.if_nametoindex(args.interface),
            private_mac=interface_mac(nat_if),
            public_mac=interface_mac(args.interface),
        )
        # the reply path first: a request redirected before it runs would lose its reply
        nat_mode = dp.attach_nat(nat_if, args.xdp_mode)
    mode = dp.attach(args.interface, args.xdp_mode)
    pinned = dp.pin_program()
    print(
        f"XDP program attached to {args.interface} ({mode} mode), pinned at {pinned}: "
        f"{len(p.services)} virtual service(s), {len(p.reals)} real server(s)"
    )
    if nat_if:
        print(f"NAT reply path attached to {nat_if} ({nat_mode} mode)")
    return EXIT_OK


def show_xdp(args: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from .xdp import XdpDataplane

    p = _plan(args)
    if p is None:
        return EXIT_ERRORS
    # same program shape: bcc reuses the pinned maps; a reader never replaces them
    dp = XdpDataplane(p, replace_misfits=False)
    m = dp.maps
    table = Table(title="XDP dataplane counters")
    for col in ("virtual / server", "address", "state", "packets", "bytes", "new flows"):
        table.add_column(
            col, justify="right" if col in ("packets", "bytes", "new flows") else "left"
        )
    proto = {6: "tcp", 17: "udp"}
    conns = m.real_conns()  # open flows per real, for the least-connection family
    for svc in p.services:
        c = m.service_counters(svc.index)
        port = svc.port or "*"
        table.add_row(
            svc.name,
            f"{svc.vip}:{port}/{proto[svc.proto]}",
            f"{svc.method.value} {svc.scheduler.value}",
            str(c.packets),
            str(c.bytes),
            str(c.new_flows),
        )
        for r in svc.reals:
            entry = m.real(r.index)
            state = (
                "failed"
                if entry.flags & REAL_F_FAILED
                else "quiesced"
                if entry.flags & REAL_F_QUIESCED
                else "up"
            )
            if svc.scheduler in LC_KIND:
                state += f", {conns.get(r.index, 0)} open"
            rc = m.real_counters(r.index)
            table.add_row(
                f"  {r.name}",
                str(r.address),
                state,
                str(rc.packets),
                str(rc.bytes),
                str(rc.new_flows),
            )
    console = Console()
    console.print(table)
    nonzero = {k: v for k, v in m.global_counters().items() if v}
    console.print("global: " + (", ".join(f"{k}={v}" for k, v in nonzero.items()) or "no packets"))
    return EXIT_OK
