"""``lvs-router status``: the daemon's status (plain data from the control socket) as a
rich table, one row per virtual service and one per real server."""

from __future__ import annotations

import sys
from typing import Any

STYLE = {"up": "green", "down": "red", "quiesced": "yellow", "unknown": "dim"}


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def hostport(address: str, port: int | str) -> str:
    """``ADDRESS:PORT``, an IPv6 address in brackets (``[2001:db8::11]:80``) so that
    the port cannot be read as part of it."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def render(status: dict[str, Any], *, width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    caption = (
        f"pid {status['pid']}, up {status['uptime_s']} s, reloads "
        f"{status['reloads']['ok']} ok / {status['reloads']['failed']} failed"
    )
    if p := status.get("pulse"):  # runtime/router.py: heartbeat = 1
        caption += (
            f"\npulse: {p['role']} {p['state']}, peer {p['peer']}, "
            f"VIPs {', '.join(p['vips']) or 'none'}"
            + (", link down" if p["link_fail"] else "")
            + (", director failed" if p["child_fail"] else "")
        )
    t = Table(title=f"lvs-router ({status['dataplane']}) {status['config']}", caption=caption)
    for col in ("virtual / server", "address", "state", "weight", "last check", "latency"):
        t.add_column(col)
    for col in ("packets", "bytes", "conns"):
        t.add_column(col, justify="right")
    for vs in status["virtuals"]:
        where = f"fwmark {vs['fwmark']}" if vs["fwmark"] else hostport(vs["address"], vs["port"])
        state = f"{vs['forwarding']} {vs['scheduler']}"
        if vs["sorry_server"]:
            state += f", sorry {vs['sorry_server']}" + (" IN" if vs["sorry_active"] else "")
        c = vs["counters"] or {}
        t.add_row(
            f"[bold]{vs['name']}[/]",
            f"{where}/{vs['protocol']}",
            state,
            "",
            "",
            "",
            _num(c.get("packets")),
            _num(c.get("bytes")),
            _num(c.get("connections")),
        )
        for rs in vs["servers"]:
            c = rs["counters"] or {}
            weight = "out" if not rs["in_dataplane"] else str(rs["weight"])
            if rs["in_dataplane"] and rs["weight"] != rs["configured_weight"]:
                weight += f" (of {rs['configured_weight']})"
            detail = rs["last_detail"] or rs["reason"] or ""
            if rs["last_ok"] is not None:
                detail = ("ok" if rs["last_ok"] else "failed") + (f": {detail}" if detail else "")
            latency = rs["last_latency_s"]
            state = rs["state"] + (" (checker died)" if rs["crashed"] else "")
            t.add_row(
                f"  {rs['name']}",
                hostport(rs["address"], rs["port"]),
                f"[{STYLE.get(rs['state'], '')}]{state}[/]",
                weight,
                detail,
                "" if latency is None else f"{latency * 1000:.1f} ms",
                _num(c.get("packets")),
                _num(c.get("bytes")),
                _num(c.get("connections")),
            )
    console = Console(width=width or (None if sys.stdout.isatty() else 200))
    console.print(t)
    if status.get("last_reload_error"):
        console.print("[red]last reload failed (old config in force):[/]")
        console.print(status["last_reload_error"], markup=False, highlight=False)
