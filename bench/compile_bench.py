"""Compile benchmark: `lvs-compile` on a 10,000-service lvs.cf against `keepalived -t`.

One run does everything and prints; nothing here asserts a time (benchmarks print,
tests assert behaviour):

1. generates, into ``bench/out/`` (git-ignored), an lvs.cf of N virtual services with
   M real servers each in the piranha GUI's layout (one key per line, 5-space
   virtual indentation, 9-space server indentation, the keys the GUI writes), and
   the keepalived.conf that describes the same services: one ``virtual_server``
   block per virtual with the same VIP, port or fwmark, scheduler, persistence and
   real servers, each real server with an ``HTTP_GET`` check where the lvs.cf
   virtual has ``send``/``expect`` and a ``TCP_CHECK`` otherwise;
2. makes sure the baseline really parses the whole file: ``keepalived -t`` is run
   on a copy with a syntax error on the last line and must complain about it;
3. times ``lvs-compile check`` and ``lvs-compile emit --target ipvsadm`` (the
   console scripts of the project's virtualenv) and ``keepalived -t -f FILE`` as
   child processes, best wall time of ``--repeat`` runs; peak RSS is each child's
   own ``ru_maxrss`` from ``os.wait4`` (``getrusage(RUSAGE_CHILDREN)`` only keeps
   the maximum over all children ever waited for, so it cannot be split per run);
4. runs the stages in a fresh interpreter (imports, grammar, lex, lex+parse,
   lower, checks, emit) so the profile is visible without a profiler.

``keepalived -t`` only reads and checks the configuration and exits: it starts no
VRRP or checker process, touches no interface and loads nothing into IPVS, so it
runs unprivileged and has no side effects (the generated file has no
``vrrp_instance`` that would name an interface).

Usage: ``.venv/bin/python bench/compile_bench.py [--services 10000] [--servers 10]
[--repeat 3] [--cprofile]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
OUT = ROOT / "bench" / "out"

V = " " * 5  # the GUI's indentation of virtual keys
S = " " * 9  # and of server keys
SCHEDULERS = ("wlc", "rr", "wrr", "lc")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True, slots=True)
class Service:
    """One generated virtual service; both generators render the same list."""

    index: int
    vip: str
    port: int
    fwmark: int
    protocol: str
    scheduler: str
    persistent: int
    http: bool  # send/expect (HTTP_GET) rather than send_program (TCP_CHECK)
    timeout: int
    servers: tuple[str, ...]


def _ip(base: int, n: int) -> str:
    v = base + n
    return f"{v >> 24 & 255}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def services(n_services: int, n_servers: int) -> list[Service]:
    """A mix like real files: mostly HTTP(S), some persistent, every 10th an fwmark UDP."""
    out = []
    vip_base = 172 << 24 | 16 << 16  # 172.16.0.0/12 for VIPs
    rip_base = 10 << 24  # 10.0.0.0/8 for real servers
    for i in range(n_services):
        fw = i % 10 == 9
        out.append(
            Service(
                index=i,
                vip=_ip(vip_base, 1 + i),
                port=(443 if i % 2 else 80) if not fw else 5060,
                fwmark=i + 1 if fw else 0,
                protocol="udp" if fw else "tcp",
                scheduler=SCHEDULERS[i % len(SCHEDULERS)],
                persistent=300 if i % 4 == 1 else 0,
                http=not fw,
                timeout=6,
                servers=tuple(_ip(rip_base, 1 + i * n_servers + j) for j in range(n_servers)),
            )
        )
    return out


def lvs_cf(svcs: list[Service]) -> str:
    """The piranha GUI's layout: globals at column 1, virtual keys at 5, server keys at 9."""
    out = [
        "serial_no = 42",
        "primary = 192.0.2.1",
        "service = lvs",
        "backup_active = 1",
        "backup = 192.0.2.2",
        "heartbeat = 1",
        "heartbeat_port = 539",
        "keepalive = 6",
        "deadtime = 18",
        "network = direct",
        "debug_level = NONE",
        "monitor_links = 0",
        "syncdaemon = 0",
    ]
    add = out.append
    for s in svcs:
        add(f"virtual vs{s.index:05d} {{")
        add(f"{V}active = 1")
        add(f"{V}address = {s.vip} eth0:{s.index % 4096 + 1}")
        add(f"{V}vip_nmask = 255.255.255.0")
        if s.fwmark:
            add(f"{V}fwmark = {s.fwmark}")
        add(f"{V}port = {s.port}")
        if s.persistent:
            add(f"{V}persistent = {s.persistent}")
            add(f"{V}pmask = 255.255.255.0")
        if s.http:
            add(f'{V}send = "GET / HTTP/1.0\\r\\n\\r\\n"')
            add(f'{V}expect = "HTTP"')
        else:
            add(f'{V}send_program = "/usr/local/bin/check-sip %h"')
            add(f'{V}expect = "OK"')
        add(f"{V}use_regex = 0")
        add(f"{V}load_monitor = none")
        add(f"{V}scheduler = {s.scheduler}")
        add(f"{V}protocol = {s.protocol}")
        add(f"{V}timeout = {s.timeout}")
        add(f"{V}reentry = 15")
        add(f"{V}quiesce_server = 0")
        for j, rip in enumerate(s.servers):
            add(f"{V}server rs{j:02d} {{")
            add(f"{S}address = {rip}")
            add(f"{S}active = 1")
            add(f"{S}weight = 1")
            add(f"{V}}}")
        add("}")
    out.append("")
    return "\n".join(out)


def keepalived_conf(svcs: list[Service]) -> str:
    """The same services as keepalived.conf(5) ``virtual_server`` blocks."""
    out = ["global_defs {", "    router_id lvs_bench", "}"]
    add = out.append
    for s in svcs:
        head = f"fwmark {s.fwmark}" if s.fwmark else f"{s.vip} {s.port}"
        add(f"virtual_server {head} {{")
        add(f"    delay_loop {s.timeout}")
        add(f"    lvs_sched {s.scheduler}")
        add("    lvs_method DR")
        if not s.fwmark:  # keepalived ignores (and warns about) a protocol on fwmark
            add(f"    protocol {s.protocol.upper()}")
        if s.persistent:
            add(f"    persistence_timeout {s.persistent}")
            add("    persistence_granularity 255.255.255.0")
        for rip in s.servers:
            # a real server of an fwmark service has no port of its own in keepalived
            add(f"    real_server {rip} {{" if s.fwmark else f"    real_server {rip} {s.port} {{")
            add("        weight 1")
            if s.http:
                add("        HTTP_GET {")
                add("            url {")
                add("                path /")
                add("                status_code 200")
                add("            }")
            else:
                add("        TCP_CHECK {")
                if s.fwmark:
                    add(f"            connect_port {s.port}")
            add(f"            connect_timeout {s.timeout}")
            add("        }")
            add("    }")
        add("}")
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- children


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float  # wall time
    cpu: float  # user + system time of the child
    maxrss_mb: float
    status: int
    stderr: str


def run_child(
    argv: list[str], stdout: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run one child: its wall time, CPU time and its own peak RSS (``os.wait4``).

    With ``env`` (``--compiler-root``) the child runs in the other checkout, so that
    its ``compiler`` package is the one imported.
    """
    err_path = OUT / ".stderr"
    with (
        open(stdout or os.devnull, "wb") as out,
        open(err_path, "wb") as err,
    ):
        t0 = time.perf_counter()
        cwd = env["PYTHONPATH"] if env else None
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Run(
        dt,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        p.returncode,
        err_path.read_text(errors="replace"),
    )


def best_of(
    argv: list[str], repeat: int, stdout: Path | None = None, env: dict[str, str] | None = None
) -> tuple[Run, float]:
    """The run with the best wall time of ``repeat``, and the highest peak RSS seen."""
    runs = [run_child(argv, stdout, env) for _ in range(repeat)]
    return min(runs, key=lambda r: r.seconds), max(r.maxrss_mb for r in runs)


def keepalived_reads_everything(keepalived: str, conf: Path) -> tuple[bool, str]:
    """``keepalived -t`` on a copy with mistakes after the last line must report them.

    Seen with keepalived 2.2.7: an unknown keyword is reported on stderr with its
    line number. We append a ``virtual_server`` with an unknown keyword and an
    unknown top-level keyword, and require that the run names one of them.
    """
    bad = OUT / "keepalived-bad.conf"
    text = conf.read_text()
    bad.write_text(
        text + "virtual_server 203.0.113.1 80 {\n    no_such_keyword_at_end 1\n}\nbench_bogus_end\n"
    )
    r = run_child([keepalived, "-t", "-f", str(bad)])
    seen = "no_such_keyword_at_end" in r.stderr or "bench_bogus_end" in r.stderr
    bad.unlink()
    lines = r.stderr.strip().splitlines()
    return seen, lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- stages


def stages(path: str, repeat: int, target: str) -> dict[str, float]:
    """In-process timings of each compiler stage (run in a fresh interpreter)."""
    t0 = time.perf_counter()
    import compiler
    from compiler import checks, lexer, lower, parser
    from compiler.emit import TARGETS, _load
    from compiler.lexer import LexInput, LineLexer
    from compiler.model import Dialect
    from compiler.source import Source

    _load()
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    getattr(parser, "_automaton", parser._lark)()  # the grammar's LALR table
    t_grammar = time.perf_counter() - t0
    best: dict[str, float] = {}

    def keep(name: str, dt: float) -> None:
        best[name] = min(best.get(name, dt), dt)

    for _ in range(repeat):
        t0 = time.perf_counter()
        src = Source.read(path)
        keep("read + decode", time.perf_counter() - t0)
        t0 = time.perf_counter()
        if hasattr(lexer, "scan"):
            with parser.gc_paused():  # as parse_syntax runs it
                n = len(lexer.scan(LexInput(path, src.text))[0])
        else:  # an older checkout: the lark token stream
            n = sum(1 for _ in LineLexer(None).lex(LexInput(path, src.text)))
        keep("  lex alone (a separate pass)", time.perf_counter() - t0)
        t0 = time.perf_counter()
        syntax, _ = parser.parse_syntax(path, src.text)
        keep("lex + parse", time.perf_counter() - t0)
        t0 = time.perf_counter()
        config, _ = lower.lower(syntax, path, Dialect.EXTENDED)
        keep("lower", time.perf_counter() - t0)
        del syntax
        t0 = time.perf_counter()
        diags = list(checks.check(config, Dialect.EXTENDED))
        keep("checks", time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = TARGETS[target](config)
        keep(f"emit {target}", time.perf_counter() - t0)
        del config, out, diags
        t0 = time.perf_counter()
        result = compiler.compile_source(src, Dialect.EXTENDED)
        keep("compile_source (all but emit)", time.perf_counter() - t0)
        t0 = time.perf_counter()
        del result
        keep("freeing the model", time.perf_counter() - t0)
    return {"imports": t_import, "grammar (LALR table)": t_grammar, "tokens": n, **best}


def cprofile(path: str, target: str, top: int = 25) -> None:
    """Print the hottest functions of one check + emit, by own time."""
    import cProfile
    import pstats

    from compiler import compile_file
    from compiler.emit import TARGETS, _load

    _load()
    prof = cProfile.Profile()
    prof.enable()
    result = compile_file(path)
    TARGETS[target](result.config)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


# --------------------------------------------------------------------------- main


def _emit_target() -> str:
    """``ipvsadm`` when the emitter exists; else the first target there is (said in the table)."""
    from compiler.emit import TARGETS, _load

    _load()
    return "ipvsadm" if "ipvsadm" in TARGETS else sorted(TARGETS)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    ap.add_argument("--cprofile", action="store_true", help="also print a cProfile of check+emit")
    ap.add_argument(
        "--compiler-root",
        metavar="DIR",
        help="time the compiler package in DIR (another checkout) instead of the installed "
        "console script, e.g. to compare before/after a change",
    )
    ap.add_argument("--stages-of", metavar="FILE", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--target", default="ipvsadm", help=argparse.SUPPRESS)
    ap.add_argument("--profile-of", metavar="FILE", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.stages_of:
        print(json.dumps(stages(args.stages_of, args.repeat, args.target)))
        return 0
    if args.profile_of:
        cprofile(args.profile_of, args.target)
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 118))
    python = str(VENV_BIN / "python")
    env = None
    if args.compiler_root:
        root = str(Path(args.compiler_root).resolve())
        env = {**os.environ, "PYTHONPATH": root}
        lvs_compile = [python, "-c", "import sys; from compiler.cli import main; sys.exit(main())"]
        console.print(f"timing the compiler in {root}")
    else:
        lvs_compile = [str(VENV_BIN / "lvs-compile")]
    keepalived = shutil.which("keepalived")
    target = _emit_target()

    OUT.mkdir(parents=True, exist_ok=True)
    svcs = services(args.services, args.servers)
    cf, kc = OUT / "bench-lvs.cf", OUT / "bench-keepalived.conf"
    cf.write_text(lvs_cf(svcs))
    kc.write_text(keepalived_conf(svcs))
    del svcs
    cf_lines = cf.read_text().count("\n")
    kc_lines = kc.read_text().count("\n")
    console.print(
        f"{args.services:,} virtual services x {args.servers} real servers: "
        f"{cf.name} {cf_lines:,} lines ({cf.stat().st_size / 1e6:.1f} MB), "
        f"{kc.name} {kc_lines:,} lines ({kc.stat().st_size / 1e6:.1f} MB), in {OUT}"
    )

    table = Table(title=f"compile time, best of {args.repeat} (wall); CPU = user + system")
    for col in ("command", "lines", "seconds", "CPU s", "lines/s", "peak MB", "x keepalived -t"):
        table.add_column(col, justify="left" if col == "command" else "right", no_wrap=True)

    base_s = None
    if keepalived:
        ok, last = keepalived_reads_everything(keepalived, kc)
        console.print(
            f"keepalived -t on the same file plus mistakes at the end: "
            f"{'reports them' if ok else '[red]DOES NOT report them[/red]'} ({last})"
        )
        ka, ka_rss = best_of([keepalived, "-t", "-f", str(kc)], args.repeat)
        base_s = ka.seconds
        table.add_row(
            f"keepalived -t -f {kc.name}",
            f"{kc_lines:,}",
            f"{ka.seconds:.2f}",
            f"{ka.cpu:.2f}",
            f"{kc_lines / ka.seconds:,.0f}",
            f"{ka_rss:.0f}",
            "1.00",
        )
        if ka.status:
            console.print(f"[red]keepalived -t exit status {ka.status}[/red]: {ka.stderr[-500:]}")
    else:
        console.print("keepalived not found: `apt-get install -y keepalived` (or `make apt`)")

    emitted = OUT / f"bench.{target}"
    ck, ck_rss = best_of([*lvs_compile, "check", str(cf)], args.repeat, env=env)
    em, em_rss = best_of(
        [*lvs_compile, "emit", "--target", target, str(cf)], args.repeat, emitted, env
    )
    for name, r, rss in (
        (f"lvs-compile check {cf.name}", ck, ck_rss),
        (f"lvs-compile emit --target {target}", em, em_rss),
    ):
        table.add_row(
            name,
            f"{cf_lines:,}",
            f"{r.seconds:.2f}",
            f"{r.cpu:.2f}",
            f"{cf_lines / r.seconds:,.0f}",
            f"{rss:.0f}",
            f"{r.seconds / base_s:.2f}" if base_s else "-",
        )
    both = ck.seconds + em.seconds
    table.add_row(
        "check + emit (the file is compiled twice)",
        "",
        f"{both:.2f}",
        f"{ck.cpu + em.cpu:.2f}",
        "",
        f"{max(ck_rss, em_rss):.0f}",
        f"{both / base_s:.2f}" if base_s else "-",
        style="bold",
    )
    console.print(table)
    for name, r in (("check", ck), ("emit", em)):
        # check exits 1 only for errors; the generated file has none (notes are expected)
        if r.status:
            console.print(f"[red]lvs-compile {name} exit status {r.status}[/red]")
            console.print(r.stderr[-2000:])
    emitted_lines = emitted.read_text().count("\n") if emitted.exists() else 0
    console.print(f"emit --target {target} wrote {emitted_lines:,} lines ({emitted.name})")

    child = subprocess.run(
        [
            python,
            __file__,
            "--stages-of",
            str(cf),
            "--repeat",
            str(args.repeat),
            "--target",
            target,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    st = json.loads(child.stdout)
    tokens = st.pop("tokens")
    t2 = Table(title=f"in-process stages of one compile ({tokens:,} line tokens; best of N)")
    t2.add_column("stage", no_wrap=True)
    t2.add_column("seconds", justify="right")
    t2.add_column("lines/s", justify="right")
    for name, s in st.items():
        rate = f"{cf_lines / s:,.0f}" if name.strip()[0] in "lcr" and s > 0 else ""
        t2.add_row(name, f"{s:.3f}", rate)
    console.print(t2)

    if args.cprofile:
        subprocess.run(
            [python, __file__, "--profile-of", str(cf), "--target", target], check=True, env=env
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
