"""``lvs-router``: the router daemon's command line.

The daemon itself (``run``), dataplane ``apply``/``show`` and ``send-arp`` are being
built issue by issue; until a command exists it is listed here as not available yet
rather than pretending to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PLANNED = {
    "run": "run the router daemon (heartbeat, health checks, director)",
    "apply": "apply a config's steady state to the IPVS or XDP dataplane once",
    "show": "show the dataplane's table and counters",
    "reload": "make a running daemon re-read lvs.cf",
    "status": "show a running daemon's state",
    "send-arp": "send piranha-style gratuitous ARP for an address",
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lvs-router",
        description="The lvs-router daemon and dataplane tools. Not available yet in this "
        "release: the commands below arrive with the runtime and dataplane work. "
        "Use lvs-compile to check and compile lvs.cf today.",
        epilog="planned commands: " + "; ".join(f"{k}: {v}" for k, v in PLANNED.items()),
    )
    p.add_argument("command", nargs="?", choices=sorted(PLANNED), metavar="COMMAND")
    args, _ = p.parse_known_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    print(
        f"lvs-router {args.command}: not available yet in this release "
        f"({PLANNED[args.command]}); see lvs-compile for config checking",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
