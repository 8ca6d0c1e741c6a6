"""``lvs-router``: the router daemon's command line.

``run`` (the daemon: health checks and the director, handlers in runtime/daemon_cli.py),
``reload`` and ``status`` (talk to a running daemon over its control socket),
``apply`` and ``show`` for ``--dataplane ipvs`` (make the kernel's IPVS table what a
config's steady state asks for, by diff, never a flush; print the table) and
``--dataplane xdp`` (compile, load, pin and fill the XDP program's maps, IPv4 and
IPv6 virtuals, through the daemon's own XDP backend; print its counters, handler in
dataplane/xdp_cli.py), and ``send-arp`` (piranha's send_arp, runtime/send_arp_cli.py).

Exit status: 0 done, 1 the config has errors or the kernel refused, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import cmp_to_key

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
DAEMON_COMMANDS = ("run", "reload", "status")

# Commands still being built; each is listed as not available rather than pretending.
NOT_YET: dict[str, str] = {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lvs-router",
        description="The lvs-router daemon and its tools: `run` the daemon (health checks "
        "and the director on the IPVS or XDP dataplane), `reload` and `status` a running "
        "one, `apply` and `show` a dataplane's table once, `send-arp` as piranha's send_arp.",
        epilog=(
            "not available yet: " + "; ".join(f"{k}: {v}" for k, v in NOT_YET.items())
            if NOT_YET
            else None
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from runtime.daemon_cli import add_parsers as add_daemon_parsers
    from runtime.send_arp_cli import add_parser as add_send_arp_parser

    add_daemon_parsers(sub)
    add_send_arp_parser(sub)

    a = sub.add_parser(
        "apply",
        help="make the dataplane hold a config's steady state (a diff, never a flush)",
        description="Compile CONFIG with lvs-compile's rules, read the kernel's IPVS table, "
        "and apply only the operations that differ (like ipvsadm-restore, without its "
        "flush); then read back and verify.",
    )
    a.add_argument("--dataplane", choices=["ipvs", "xdp"], required=True)
    a.add_argument(
        "--dry-run",
        action="store_true",
        help="print the operations, one per line in ipvsadm syntax, and change nothing "
        "(without IPVS in this kernel, diff against an empty table)",
    )
    a.add_argument(
        "--role",
        choices=["master", "backup"],
        default="master",
        help="the sync daemon's role when the config has `syncdaemon = 1`: master on the "
        "active router (default), backup on the standby",
    )
    a.add_argument(
        "--dialect",
        choices=["piranha", "piranha-0.5", "extended"],
        default="extended",
        help="the lvs.cf dialect to compile with (as lvs-compile --dialect)",
    )
    a.add_argument("config", metavar="CONFIG")

    s = sub.add_parser("show", help="print the dataplane's table and counters")
    s.add_argument("--dataplane", choices=["ipvs", "xdp"], required=True)
    s.add_argument(
        "--format",
        choices=["table", "ipvsadm"],
        default="table",
        help="table (default): services, real servers and counters; ipvsadm: the "
        "`ipvsadm-save -n` text",
    )
    s.add_argument(
        "config",
        metavar="CONFIG",
        nargs="?",
        help="XDP only: the lvs.cf the running program was built from (to find its maps)",
    )
    from dataplane.xdp_cli import add_arguments as add_xdp_arguments

    for parser in (a, s):
        group = parser.add_argument_group("XDP dataplane")
        add_xdp_arguments(group)
        group.add_argument(
            "--pin-dir",
            help="bpffs directory of the pinned maps (default /sys/fs/bpf/lvs-router)",
        )

    for name, what in NOT_YET.items():
        sub.add_parser(name, help=f"(not available yet) {what}")
    return p


# --------------------------------------------------------------------------- apply


def _apply(args: argparse.Namespace) -> int:
    from compiler import Dialect, compile_file
    from compiler.diagnostics import Severity, render_text
    from compiler.emit import EmitError
    from dataplane.reconcile import IPVSState, SyncState, desired_state, reconcile

    try:
        result = compile_file(args.config, Dialect(args.dialect))
    except OSError as err:
        print(f"lvs-router: cannot read {args.config}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    if not result.ok:
        shown = [d for d in result.diagnostics if d.severity is not Severity.NOTE]
        sys.stderr.write(render_text(shown, {result.source.name: result.source}))
        print(f"lvs-router: {args.config} has errors; nothing applied", file=sys.stderr)
        return EXIT_ERRORS
    role = SyncState.MASTER if args.role == "master" else SyncState.BACKUP
    try:
        desired = desired_state(result.config, role=role)
    except EmitError as err:
        sys.stderr.write(err.render().replace("cannot emit ipvsadm", "cannot apply to IPVS"))
        print(f"lvs-router: {args.config}: nothing applied", file=sys.stderr)
        return EXIT_ERRORS

    from dataplane.ipvs import IPVSError, IPVSKernel, IPVSUnavailable, converge

    try:
        kernel = IPVSKernel()
    except IPVSUnavailable as err:
        if not args.dry_run:
            print(f"lvs-router: {err}", file=sys.stderr)
            return EXIT_ERRORS
        print(f"lvs-router: {err}; dry run against an empty IPVS table", file=sys.stderr)
        for op in reconcile(desired, IPVSState()):
            print(op)
        return EXIT_OK
    except IPVSError as err:
        print(f"lvs-router: {err}", file=sys.stderr)
        return EXIT_ERRORS
    with kernel:
        if args.dry_run:
            for op in reconcile(desired, kernel.read().state):
                print(op)
            return EXIT_OK
        try:
            ops = converge(kernel, desired)
        except IPVSError as err:
            applied = getattr(err, "applied", ())
            for op in applied:
                print(op)
            print(f"lvs-router: {err}", file=sys.stderr)
            return EXIT_ERRORS
    for op in ops:
        print(op)
    print(
        f"lvs-router: {args.config}: {len(ops)} operation(s) applied, table verified"
        if ops
        else f"lvs-router: {args.config}: the kernel already holds this state",
        file=sys.stderr,
    )
    return EXIT_OK


# --------------------------------------------------------------------------- show


def _ordered(services):
    # the order ipvsadm-save prints, as the ipvsadm emitter sorts (libipvs's comparators)
    from compiler.emit.ipvsadm import _cmp_dests, _cmp_services

    out = []
    for svc in sorted(services, key=cmp_to_key(_cmp_services)):
        dests = tuple(sorted(svc.destinations, key=cmp_to_key(_cmp_dests)))
        out.append(
            svc.__class__(**{**{f: getattr(svc, f) for f in svc.__slots__}, "destinations": dests})
        )
    return out


def _show(args: argparse.Namespace) -> int:
    from dataplane.ipvs import IPVSError, IPVSKernel

    try:
        with IPVSKernel() as kernel:
            seen = kernel.read()
    except IPVSError as err:
        print(f"lvs-router: {err}", file=sys.stderr)
        return EXIT_ERRORS
    services = _ordered(seen.state.services)
    if args.format == "ipvsadm":
        from compiler.emit.ipvsadm import lines

        sys.stdout.write("".join(line + "\n" for svc in services for line in lines(svc)))
        return EXIT_OK
    _rich_table(seen, services)
    return EXIT_OK


def _rich_table(seen, services) -> None:
    from rich.console import Console
    from rich.table import Table

    from compiler.emit.ipvsadm import addrport
    from dataplane.ipvs import Stats
    from dataplane.reconcile import dest_key, service_key

    t = Table(title="IPVS (kernel)", show_lines=False)
    for col in ("service", "scheduler", "real server", "forward", "weight"):
        t.add_column(col)
    for col in ("active", "inactive", "conns", "in pkts", "out pkts"):
        t.add_column(col, justify="right")
    fwd = {"nat": "Masq", "direct": "Route", "tunnel": "Tunnel"}
    for svc in services:
        key = service_key(svc)
        st = seen.stats.get(key, Stats())
        sched = svc.scheduler
        if svc.persistent:
            sched += f" persistent {svc.persistent}"
            if svc.pmask is not None:
                sched += f" mask {svc.pmask}"
        t.add_row(
            svc.key, sched, "", "", "", "", "", str(st.conns), str(st.inpkts), str(st.outpkts)
        )
        for d in svc.destinations:
            ds = seen.stats.get((key, dest_key(d)), Stats())
            t.add_row(
                "",
                "",
                addrport(d.address, d.port),
                fwd[d.forwarding.value],
                str(d.weight),
                str(ds.active_conns),
                str(ds.inactive_conns),
                str(ds.conns),
                str(ds.inpkts),
                str(ds.outpkts),
            )
    # piped output is not cut to 80 columns: addresses must stay whole for grep
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(t)
    tm = seen.state.timeouts
    if tm is not None:
        console.print(f"timeouts (tcp tcpfin udp): {tm.tcp} {tm.tcpfin} {tm.udp}")
    for d in seen.state.daemons or ():
        console.print(f"{d.state.word} sync daemon (mcast-interface {d.iface}, syncid {d.syncid})")
    for note in seen.unmanaged:
        console.print(f"not managed: {note}")


# --------------------------------------------------------------------------- xdp

MAC_WAIT_S = 3.0  # apply --dataplane xdp: how long the kernel may take to resolve MACs


def _apply_xdp(args: argparse.Namespace) -> int:
    """``apply --dataplane xdp``: the config's steady state (every active server in at
    its configured weight) through :class:`runtime.backends.XdpBackend`, the daemon's
    own path: the same plan (IPv6 virtuals included), neighbour handling (ARP or
    neighbour solicitation for a MAC the kernel does not know yet, through the route's
    gateway for tunnels), pinned maps reused and the program replaced atomically."""
    import time

    from compiler import Dialect, compile_file
    from compiler.diagnostics import Severity, render_text
    from dataplane.reconcile import SORRY_SERVER

    from .backends import BackendError, XdpBackend
    from .daemon_cli import _mac_pair
    from .director import Director
    from .neighbours import address_order

    try:
        result = compile_file(args.config, Dialect(args.dialect))
    except OSError as err:
        print(f"lvs-router: cannot read {args.config}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    if errors:
        sys.stderr.write(render_text(errors, {result.source.name: result.source}))
        print(f"lvs-router: {args.config} has errors; nothing applied", file=sys.stderr)
        return EXIT_ERRORS
    try:
        macs = dict(_mac_pair(pair) for pair in args.real_mac)
    except argparse.ArgumentTypeError as err:
        print(f"lvs-router: --real-mac {err}", file=sys.stderr)
        return EXIT_USAGE
    config = result.config
    backend = XdpBackend(
        args.interface,
        pin_dir=args.pin_dir,
        mode=args.xdp_mode,
        static_macs=macs,
        nat_interface=args.nat_interface,
    )
    try:
        plan = backend.plan(config)
        # every real server but the sorry servers (out in the steady state) needs a MAC
        # before anything is loaded: probe, and give the kernel a moment to answer
        wanted = {r.address for r in plan.reals if r.name != SORRY_SERVER}
        deadline = time.monotonic() + MAC_WAIT_S
        while (missing := wanted - backend.neighbours.refresh(wanted).keys()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        if missing:
            shown = ", ".join(map(str, sorted(missing, key=address_order)))
            print(f"lvs-router: no MAC address for real server(s) {shown}", file=sys.stderr)
            print(
                "  = help: pass --real-mac RIP=MAC, or make them reachable from here",
                file=sys.stderr,
            )
            return EXIT_ERRORS
        for note in plan.notes:
            print(note.render(), file=sys.stderr)
        backend.load(config)
        director = Director(config)
        for virtual, server in director.managed():
            director.server_event(virtual, server, True, None, "apply", 0.0)
        for change in backend.apply(director.desired()):
            print(change)
    except BackendError as err:
        sys.stderr.write(err.render().rstrip() + "\n")
        print(f"lvs-router: {args.config}: nothing applied", file=sys.stderr)
        return EXIT_ERRORS
    finally:
        backend.close()  # the attached program and the pinned maps stay
    print(
        f"lvs-router: {args.config}: {len(plan.services)} virtual service(s), "
        f"{len(plan.reals)} real server(s) in the XDP program on {args.interface}",
        file=sys.stderr,
    )
    return EXIT_OK


def _xdp(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from dataplane.xdp_cli import show_xdp

    if args.command == "apply":
        if args.dry_run:
            p.error(
                "--dry-run is for --dataplane ipvs; `lvs-compile emit --target xdp-maps` "
                "shows what the XDP maps would hold"
            )
        if not args.interface:
            p.error("--dataplane xdp needs --interface IF")
        return _apply_xdp(args)
    if not args.config:
        p.error("show --dataplane xdp needs the CONFIG the program was built from")
    return show_xdp(args)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return EXIT_USAGE
    if args.command in NOT_YET:
        print(
            f"lvs-router {args.command}: not available yet in this release "
            f"({NOT_YET[args.command]})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.command in DAEMON_COMMANDS:
        from runtime.daemon_cli import run_command

        return run_command(args)
    if args.command == "send-arp":
        from runtime.send_arp_cli import run as send_arp

        return send_arp(args)
    try:
        if args.dataplane == "xdp":
            return _xdp(p, args)
        return _apply(args) if args.command == "apply" else _show(args)
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
