"""``lvs-router show --dataplane xdp`` and the XDP options of ``apply``/``show``,
kept out of runtime/cli.py so the CLI only has to dispatch.

``apply --dataplane xdp`` itself goes through the daemon's backend
(runtime/cli.py ``_apply_xdp``: the same plan, neighbour handling and adoption as
``lvs-router run``). ``show_xdp(args)`` needs ``args.config`` (the lvs.cf the running
program was built from, to find its maps), ``args.pin_dir`` (optional) and
``args.dialect`` (optional); it returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from compiler import compile_file
from compiler.diagnostics import Severity, render_text
from compiler.model import Dialect

from .plan import LC_KIND, REAL_F_FAILED, REAL_F_QUIESCED, Plan, PlanError, plan

EXIT_OK, EXIT_ERRORS = 0, 1


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
        return plan(result.config, ipv6=True)
    except PlanError as err:
        where = f"{err.span}: " if err.span else ""
        print(f"{where}error: {err.message}", file=sys.stderr)
        if err.help:
            print(f"  = help: {err.help}", file=sys.stderr)
        return None


def endpoint(address: IPv4Address | IPv6Address, port: int | str) -> str:
    """``address:port``, with an IPv6 address in brackets (RFC 3986) so the port
    cannot be read as part of it."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def show_xdp(args: Any) -> int:
    from rich.console import Console
    from rich.table import Table

    from .xdp import PIN_DIR, XdpDataplane

    p = _plan(args)
    if p is None:
        return EXIT_ERRORS
    # same program shape: bcc reuses the pinned maps; a reader never replaces them
    dp = XdpDataplane(p, pin_dir=getattr(args, "pin_dir", None) or PIN_DIR, replace_misfits=False)
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
            f"{endpoint(svc.vip, port)}/{proto[svc.proto]}",
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
