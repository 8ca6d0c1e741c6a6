"""``python -m runtime.pulse CONFIG``: pulse on its own, without a director.

For tests and for trying failover by hand before the daemon runs it: compiles the
lvs.cf, runs :class:`~runtime.pulse.heartbeat.Pulse` and prints one line per event
on stdout (``ready ROLE``, ``active``, ``inactive``, ``exit REASON``), logs on
stderr. SIGTERM/SIGINT stop it cleanly (a STOPPED heartbeat, then the VIPs go);
SIGKILL is the crash case.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from compiler import compile_file
from compiler.diagnostics import render_text
from compiler.model import Dialect

from .heartbeat import Pulse, PulseExit
from .wire import Key


def _say(line: str) -> None:
    print(line, flush=True)


async def _main(args: argparse.Namespace) -> int:
    result = compile_file(args.config, Dialect(args.dialect))
    if not result.ok:
        sources = {result.source.name: result.source}
        print(render_text(result.errors, sources), file=sys.stderr)
        return 1

    async def on_activate() -> None:
        logging.getLogger("pulse").info("director start (VIPs up)")
        _say("active")

    async def on_deactivate() -> None:
        _say("inactive")

    pulse = Pulse(
        result.config,
        on_activate=on_activate,
        on_deactivate=on_deactivate,
        key=Key.from_file(args.key) if args.key else None,
        forceactive=args.forceactive,
        garp_count=args.garp_count,
        garp_interval=args.garp_interval,
        shutdown_heartbeat=not args.no_shutdown_heartbeat,
        arp_announce=args.arp_announce,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(pulse.stop()))
    task = asyncio.create_task(pulse.run())
    ready = asyncio.create_task(pulse.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if pulse.ready.is_set() and pulse.role is not None:
        _say(f"ready {pulse.role.value}")
    ready.cancel()
    try:
        await task
    except PulseExit as e:
        _say(f"exit {e}")
        return 1
    _say("stopped " + repr(pulse.status().packets))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.pulse", description=__doc__)
    p.add_argument("config")
    p.add_argument("--dialect", default="extended", choices=[d.value for d in Dialect])
    p.add_argument("--forceactive", action="store_true")
    p.add_argument("--key", metavar="FILE", help="authenticated heartbeats with this key")
    p.add_argument("--garp-count", type=int, default=5)
    p.add_argument("--garp-interval", type=float, default=1.0)
    p.add_argument("--no-shutdown-heartbeat", action="store_true")
    p.add_argument(
        "--arp-announce", action="store_true", help="also send RFC 5227 ARP announcements"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="pulse %(asctime)s.%(msecs)03d: %(message)s",
        datefmt="%H:%M:%S",
    )
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
