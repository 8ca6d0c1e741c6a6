"""``lvs-router run | reload | status``: the daemon's command line.

runtime/cli.py wires these in with :func:`add_parsers` and dispatches with
:func:`run_command`; ``python -m runtime.daemon_cli run ...`` runs them alone (the
tests do). Exit status: 0 done, 1 errors (bad config, reload refused, daemon not
reachable), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from .control import DEFAULT_SOCKET

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
COMMANDS = ("run", "reload", "status")
DEFAULT_CONFIG = "/etc/sysconfig/ha/lvs.cf"


def _metrics_address(text: str) -> tuple[str, int] | None:
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDRESS:PORT or off")
    return host.strip("[]") or "127.0.0.1", int(port)


def _mac_pair(text: str) -> tuple[IPv4Address | IPv6Address, bytes]:
    """``RIP=MAC``, the RIP IPv4 or IPv6 (``2001:db8::11=02:00:00:00:00:11``: the
    address ends at the first ``=``, which no address contains)."""
    from .neighbours import parse_mac

    rip, sep, mac = text.partition("=")
    try:
        if not sep:
            raise ValueError("expected RIP=MAC")
        return ip_address(rip.strip("[]")), parse_mac(mac)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``run``, ``reload`` and ``status`` to an ``add_subparsers()`` object."""
    r = sub.add_parser(
        "run",
        help="run the router daemon: health checks and the director, in the foreground",
        description="Compile lvs.cf, adopt what the dataplane holds (never a flush), check "
        "every active real server as piranha's nanny did, and keep the dataplane in line "
        "with the results. SIGHUP (or `lvs-router reload`) re-reads lvs.cf; SIGTERM stops.",
    )
    r.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, help=f"lvs.cf (default {DEFAULT_CONFIG})"
    )
    r.add_argument("--dataplane", choices=["ipvs", "xdp"], default="ipvs")
    r.add_argument("--dialect", choices=["piranha", "piranha-0.5", "extended"], default="extended")
    x = r.add_argument_group("XDP dataplane")
    x.add_argument("--interface", help="interface to attach the XDP program to")
    x.add_argument("--xdp-mode", choices=["native", "generic", "auto"], default="native")
    x.add_argument(
        "--nat-interface",
        metavar="IF",
        help="network = nat: the interface towards the real servers (gets the reply path)",
    )
    x.add_argument(
        "--pin-dir", help="bpffs directory of the pinned maps (default /sys/fs/bpf/lvs-router)"
    )
    x.add_argument(
        "--real-mac",
        action="append",
        default=[],
        type=_mac_pair,
        metavar="RIP=MAC",
        help="fixed next-hop MAC of a real server (default: the kernel's neighbour table)",
    )
    r.add_argument(
        "--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})"
    )
    r.add_argument(
        "--metrics",
        type=_metrics_address,
        default=("127.0.0.1", 9539),
        metavar="ADDRESS:PORT|off",
        help="Prometheus endpoint (default 127.0.0.1:9539)",
    )
    r.add_argument(
        "--on-stop",
        choices=["keep", "remove"],
        default="keep",
        help="on SIGTERM: keep the dataplane forwarding (default; the next start adopts it) "
        "or remove our services",
    )
    r.add_argument("--concurrency", type=int, default=512, help="checks in flight at most")
    r.add_argument(
        "--verify-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="IPVS: every SECONDS re-read the whole kernel table and repair what someone "
        "else changed (0, the default: never; a large table takes long to read)",
    )
    h = r.add_argument_group("pulse (configs with heartbeat = 1; see docs/pulse.md)")
    h.add_argument(
        "--no-heartbeat", action="store_true", help="run the director alone, without pulse"
    )
    h.add_argument("--forceactive", action="store_true", help="start active (pulse --forceactive)")
    h.add_argument(
        "--heartbeat-key",
        metavar="FILE",
        help="authenticated heartbeats with the key in FILE (extended dialect; both routers)",
    )
    h.add_argument(
        "--standby",
        choices=["hot", "cold"],
        default="hot",
        help="hot (default): the standby checks and keeps its dataplane in step; cold: "
        "the director starts on activation, as piranha's lvs",
    )
    h.add_argument("--garp-count", type=int, default=5, help="gratuitous ARPs per VIP (5)")
    h.add_argument("--garp-interval", type=float, default=1.0, help="seconds between them (1.0)")
    r.add_argument("-v", "--verbose", action="store_true", help="log every check event")

    for name, what in (
        ("reload", "make the running daemon re-read lvs.cf"),
        ("status", "show the running daemon's state"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument(
            "--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})"
        )
        if name == "status":
            p.add_argument("--json", action="store_true", help="the status as JSON, for scripts")


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.command`` (one of :data:`COMMANDS`); returns the exit status."""
    if args.command == "run":
        from compiler.model import Dialect

        from .daemon import Options
        from .router import PulseOptions, run

        if args.dataplane == "xdp" and not args.interface:
            print("lvs-router run: --dataplane xdp needs --interface IF", file=sys.stderr)
            return EXIT_USAGE
        opts = Options(
            config=args.config,
            dataplane=args.dataplane,
            dialect=Dialect(args.dialect),
            interface=args.interface,
            xdp_mode=args.xdp_mode,
            pin_dir=args.pin_dir,
            real_macs=dict(args.real_mac),
            nat_interface=args.nat_interface,
            socket=args.socket,
            metrics=args.metrics,
            on_stop=args.on_stop,
            concurrency=args.concurrency,
            verify_interval_s=args.verify_interval,
        )
        popts = PulseOptions(
            heartbeat=not args.no_heartbeat,
            forceactive=args.forceactive,
            key_file=args.heartbeat_key,
            standby=args.standby,
            garp_count=args.garp_count,
            garp_interval=args.garp_interval,
        )
        return run(opts, popts, verbose=args.verbose)

    from .control import ControlError, request

    try:
        answer = request(args.socket, args.command)
    except ControlError as err:
        print(f"lvs-router {args.command}: {err}", file=sys.stderr)
        return EXIT_ERRORS
    if not answer.get("ok"):
        print(f"lvs-router {args.command}: failed, the old config stays in force:", file=sys.stderr)
        print(answer.get("error", "(no detail)"), file=sys.stderr)
        return EXIT_ERRORS
    if args.command == "reload":
        print(
            f"reloaded: {answer['added']} virtual(s) added, {answer['removed']} removed, "
            f"{answer['changed']} changed; {len(answer['changes'])} dataplane change(s)"
        )
        for change in answer["changes"]:
            print(f"  {change}")
        return EXIT_OK
    if args.json:
        print(json.dumps(answer["status"], indent=2))
    else:
        from .status_view import render

        render(answer["status"])
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lvs-router")
    add_parsers(p.add_subparsers(dest="command", metavar="COMMAND", required=True))
    try:
        return run_command(p.parse_args(argv))
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
