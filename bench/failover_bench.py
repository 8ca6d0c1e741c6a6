"""Failover benchmark: from a dead active router to service through the backup.

The lab of ``make demo`` (demo/lab.py: a client, two routers, three real servers on a
bridge in network namespaces; XDP dataplane, direct routing) under four control
planes, one run each:

* ``pulse 2/5``:     lvs-router's pulse with piranha's defaults (keepalive 2, deadtime 5);
* ``pulse 1/3``:     keepalive 1, deadtime 3 (keepalived's interval and about its
  3 × advert_int);
* ``pulse 0.1/0.3``: keepalive 0.1, deadtime 0.3 (extended dialect);
* ``keepalived 1`` and ``keepalived 0.1``: Debian's keepalived doing VRRP (version 3,
  unicast peers, gratuitous ARP on: its defaults) for the same VIP, ``advert_int`` 1 and
  0.1, with both routers' dataplanes run by ``lvs-router run --no-heartbeat``, so only
  the failover mechanism differs.

Faults on the active router (ra):

* ``dead``: its NIC goes down, then the process is SIGKILLed — a dead machine (a
  SIGKILLed daemon alone would leave its XDP program forwarding);
* ``link``: its NIC goes down, the process lives (pulse: monitor_links gives up).

The client opens a new connection every 10 ms (each given 0.9 s, under the kernel's
1 s SYN retransmission, so a lost SYN is a lost request). Measured: the time from the
fault to the end of the first successful connection started after it; the attempts
started after the fault that failed before then (requests lost); and how many of 6
TCP connections opened before the fault still echo after it (established kept).

    .venv/bin/python bench/failover_bench.py [--only pulse-0.1] [--repeat N] [--json FILE]

``--repeat N`` runs every setup and fault N times (interleaved: each round runs every
setup once, so a burst of load from elsewhere hits them alike) and prints each run,
then the median and range of every row and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.lab import GREET_CHECK, REALS, ROUTERS, VIP, Lab, first_success_after, lvs_cf
from demo.netns import Topology

KEEPALIVED = "/usr/sbin/keepalived"
HELD = 6


@dataclass
class Result:
    setup: str
    fault: str
    interval_s: float
    gap_ms: float | None
    lost: int
    attempts: int
    established_kept: int
    established: int = HELD


@dataclass(frozen=True)
class Setup:
    name: str
    kind: str  # pulse | keepalived
    interval: float  # keepalive or advert_int
    deadtime: float = 0.0


SETUPS = (
    Setup("pulse-2/5", "pulse", 2.0, 5.0),
    Setup("pulse-1/3", "pulse", 1.0, 3.0),  # keepalived's advert_int 1 and its ~3 s
    Setup("pulse-0.1/0.3", "pulse", 0.1, 0.3),
    Setup("keepalived-1", "keepalived", 1.0),
    Setup("keepalived-0.1", "keepalived", 0.1),
)


def keepalived_conf(name: str, advert: float) -> str:
    me, peer = ROUTERS[name], ROUTERS["rb" if name == "ra" else "ra"]
    prio = 150 if name == "ra" else 100
    return f"""global_defs {{
    router_id {name}
    vrrp_version 3
    enable_script_security
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {prio}
    advert_int {advert:g}
    unicast_src_ip {me}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {VIP}/32 dev eth0
    }}
}}
"""


class Bench:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.work = work
        self.vrrp: dict[str, subprocess.Popen] = {}

    # ---------------------------------------------------------------- control planes

    def start(self, s: Setup) -> None:
        lab = self.lab
        cf = lvs_cf(
            keepalive=s.interval if s.kind == "pulse" else 1,
            deadtime=s.deadtime if s.kind == "pulse" else 3,
            check=GREET_CHECK,
            monitor_links=True,
        )
        lab.write_config(cf)
        extra = ("--garp-count", "5", "--garp-interval", "1.0")
        if s.kind == "keepalived":
            extra = ("--no-heartbeat",)
        lab.start_router("ra", *extra)
        if s.kind == "pulse":
            lab.wait_state("ra", "active", timeout=120)
        lab.start_router("rb", *extra)
        lab.wait(
            "both routers see all servers",
            lambda: lab.servers_up("ra") == set(REALS) == lab.servers_up("rb"),
            timeout=120,
        )
        if s.kind == "pulse":
            lab.wait_state("rb", "inactive")
        else:
            for name in ("ra", "rb"):
                conf = self.work / f"keepalived-{name}.conf"
                conf.write_text(keepalived_conf(name, s.interval))
                self.vrrp[name] = lab.routers[name].ns.popen(
                    KEEPALIVED, "-n", "-l", "-P", "-f", str(conf),
                    "-p", str(self.work / f"k-{name}.pid"),
                    "-r", str(self.work / f"v-{name}.pid"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            lab.wait("keepalived: ra holds the VIP", lambda: lab.has_vip("ra"), timeout=60)
            time.sleep(3 * s.interval + 1)  # rb settles as backup
            assert not lab.has_vip("rb"), "keepalived: both routers hold the VIP"
        lab.wait(
            "the client reaches the VIP through ra",
            lambda: (
                lab.names(1) != ["error"] and f"lladdr {lab.router_mac('ra')}" in lab.client_neigh()
            ),
        )

    def stop(self) -> None:
        lab = self.lab
        for p in self.vrrp.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            p.wait(10)
        self.vrrp.clear()
        for name in ("ra", "rb"):
            lab.stop_router(name)
            lab.link(name, up=True)
            ns = lab.routers[name].ns
            for line in ns.ip("-o", "addr", "show", "dev", "eth0").splitlines():
                cidr = line.split()[3]
                if cidr.startswith(VIP + "/"):
                    ns.ip("addr", "del", cidr, "dev", "eth0", check=False)

    # ---------------------------------------------------------------- one run

    def run(self, s: Setup, fault: str) -> Result:
        lab = self.lab
        self.start(s)
        try:
            held = [lab.hold()[0] for _ in range(HELD)]
            for cid in held:
                assert lab.echo(cid, "x") == "x"
            wait_s = (s.deadtime if s.kind == "pulse" else 4 * s.interval) + 3
            lab.send(op="stream", dst=VIP, port=80, seconds=wait_s + 0.5, every=0.01,
                     timeout=0.9, http=False)  # fmt: skip
            time.sleep(0.5)
            if fault == "dead":
                t_fault = lab.kill_machine("ra")  # NIC down, then lvs-router SIGKILLed
                if "ra" in self.vrrp:
                    self.vrrp["ra"].kill()
            else:
                lab.link("ra", up=False)
                t_fault = time.monotonic()
            attempts = lab.answer()
            gap, lost = first_success_after(attempts, t_fault)
            kept = 0
            for cid in held:
                with contextlib.suppress(AssertionError):
                    kept += lab.echo(cid, "after") == "after"
            for cid in held:
                with contextlib.suppress(AssertionError):
                    lab.ask(op="close", id=cid)
            after = sum(1 for a in attempts if a[0] >= t_fault)
            return Result(
                s.name, fault, s.interval, None if gap is None else gap * 1000, lost, after, kept
            )
        finally:
            self.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="setups whose name contains this")
    ap.add_argument("--faults", default="dead,link")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every setup and fault")
    args = ap.parse_args()
    setups = [s for s in SETUPS if not args.only or any(o in s.name for o in args.only)]
    work = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    results: list[Result] = []
    with Topology() as topo:
        lab = Lab(topo, work, http=False)
        bench = Bench(lab, work)
        try:
            lab.build()
            for name in REALS:
                lab.serve(name, functools.partial(topo.serve, greet=True))
            for i in range(args.repeat):
                for s in setups:
                    for fault in args.faults.split(","):
                        r = bench.run(s, fault)
                        results.append(r)
                        gap = "none" if r.gap_ms is None else f"{r.gap_ms:.0f} ms"
                        print(f"#{i + 1} {r.setup:15} {fault:5} gap {gap:>8}  lost {r.lost:3} "
                              f"of {r.attempts}  established kept {r.established_kept}/{HELD}",
                              flush=True)  # fmt: skip
        finally:
            lab.close()
            shutil.rmtree(work, ignore_errors=True)
    gaps: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r.gap_ms is not None:
            gaps.setdefault((r.setup, r.fault), []).append(r.gap_ms)
    if args.repeat > 1:
        print("\nmedian [min-max] of the gaps:")
        for (setup, fault), g in gaps.items():
            print(f"  {setup:15} {fault:5} {statistics.median(g):.0f} ms "
                  f"[{min(g):.0f}-{max(g):.0f}] of {len(g)}")  # fmt: skip
    print("\nratios of the gaps (pulse / keepalived; medians):")
    for fault in args.faults.split(","):
        for p, k in (
            ("pulse-2/5", "keepalived-1"),
            ("pulse-1/3", "keepalived-1"),
            ("pulse-0.1/0.3", "keepalived-0.1"),
        ):
            a, b = gaps.get((p, fault)), gaps.get((k, fault))
            if a and b:
                ratio = statistics.median(a) / statistics.median(b)
                print(f"  {fault:5} {p} / {k}: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
