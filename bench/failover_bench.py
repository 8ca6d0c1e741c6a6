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

The client opens a new connection every 2 ms (``--every``; each given 0.9 s, under the
kernel's 1 s SYN retransmission, so a lost SYN is a lost request). The cadence adds
the same absolute time to both contenders (on average half of it: the wait for the
next SYN once the ARP has landed), which pushes every ratio towards 1; 2 ms (2.7 ms
between SYNs in practice) costs the client under a fifth of a CPU. Measured: the
time from the fault to the end of the first successful connection started after it;
the attempts started after the fault that failed before then (requests lost); and
how many of 6 TCP connections opened before the fault still echo after it
(established kept). The keepalived rows also run with priorities 254/204
(``keepalived-0.1-prio254/204``, only when named): the least VRRP skew keepalived's
documentation allows (its master 50 above the backup), 20 ms instead of 61 ms.

    .venv/bin/python bench/failover_bench.py [--only pulse-0.1] [--repeat N] [--json FILE]
                                             [--timeline [--keep-pcaps DIR]] [--every S]

``--repeat N`` runs every setup and fault N times (interleaved: each round runs every
setup once, so a burst of load from elsewhere hits them alike) and prints each run,
then the median and range of every row and the ratio of the medians.

``--timeline`` captures on the bridge (rb's port and the client's) and prints, per
run, in ms from the fault: the last heartbeat (or VRRP advert) from ra, pulse's own
timeline of the takeover (dead timer due, decided, first ARP sent, VIPs up, director
ready: its "takeover timeline" log line) or keepalived's "Entering MASTER STATE"
line as read, rb's first ARP on the wire and at the client (``announce_client``: the
first one Linux applies at once), the client's first SYN to rb and its SYN-ACK.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.lab import GREET_CHECK, REALS, ROUTERS, VIP, Lab, first_success_after, lvs_cf
from demo.netns import Topology
from tests.netns.topo import Capture, Frame

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
    every_ms: float = 10.0
    # --timeline: ms from the fault (negative: before it) of what happened in between
    timeline: dict[str, float] | None = None


@dataclass(frozen=True)
class Setup:
    name: str
    kind: str  # pulse | keepalived
    interval: float  # keepalive or advert_int
    deadtime: float = 0.0
    priorities: tuple[int, int] = (150, 100)  # keepalived: ra (master), rb (backup)


SETUPS = (
    Setup("pulse-2/5", "pulse", 2.0, 5.0),
    Setup("pulse-1/3", "pulse", 1.0, 3.0),  # keepalived's advert_int 1 and its ~3 s
    Setup("pulse-0.1/0.3", "pulse", 0.1, 0.3),
    Setup("keepalived-1", "keepalived", 1.0),
    Setup("keepalived-0.1", "keepalived", 0.1),
    # the least skew keepalived's documentation allows (master 50 above the backup):
    # (256 - 204) / 256 x 0.1 s = 20 ms instead of 61 ms — not in the default set
    Setup("keepalived-0.1-prio254/204", "keepalived", 0.1, priorities=(254, 204)),
)
DEFAULT = ("pulse-2/5", "pulse-1/3", "pulse-0.1/0.3", "keepalived-1", "keepalived-0.1")


def keepalived_conf(name: str, advert: float, priorities: tuple[int, int] = (150, 100)) -> str:
    """VRRP v3, unicast, keepalived's defaults otherwise: on becoming master it sends
    ``vrrp_garp_master_repeat`` = 5 gratuitous ARPs at once (``vrrp_garp_interval``
    0), the second set ``vrrp_garp_master_delay`` = 5 s later (irrelevant here).
    Priorities: the master 50 above the backup, as keepalived.conf(5) recommends;
    the backup's priority sets VRRP's skew, (256 - priority) / 256 x advert_int."""
    me, peer = ROUTERS[name], ROUTERS["rb" if name == "ra" else "ra"]
    prio = priorities[0] if name == "ra" else priorities[1]
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


class LineStamps:
    """Every line a process prints, with the CLOCK_MONOTONIC time it was read (for
    keepalived's "Entering MASTER STATE": its log has no monotonic stamps)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def first(self, needle: str, after: float) -> float | None:
        return next((t for t, line in list(self.lines) if t >= after and needle in line), None)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ipv4(f: Frame) -> tuple[int, bytes, bytes, bytes] | None:
    """(protocol, source, destination, payload) of an IPv4 frame."""
    d = f.data
    if len(d) < 34 or d[12:14] != b"\x08\x00":
        return None
    ihl = (d[14] & 0x0F) * 4
    return d[23], d[26:30], d[30:34], d[14 + ihl :]


TIMELINE_RE = re.compile(
    r"takeover timeline: (?:dead timer due|decided) at ([0-9.]+) \(monotonic\); (.*)"
)


def pulse_timeline(log: str) -> dict[str, float]:
    """Absolute monotonic times from the router's "takeover timeline" log line."""
    found = TIMELINE_RE.findall(log)
    if not found:
        return {}
    origin_s, rest = found[-1]
    origin = float(origin_s)
    out = {"due": origin} if "due" in log else {}
    for part in rest.split(", "):
        name, _, ms = part.partition(" +")
        out[name.strip()] = origin + float(ms.split()[0]) / 1000
    return out


def _applied_at_once(frame: bytes) -> bool:
    """An ARP frame a Linux neighbour applies without waiting out its locktime
    (``is_garp`` in the kernel's arp_process): sender IP = target IP, and for a reply
    also target MAC = sender MAC. send_arp's reply to the broadcast address is not
    one; the RFC 5227 announcement and keepalived's gratuitous requests are."""
    op, sha, spa, tha, tpa = frame[20:22], frame[22:28], frame[28:32], frame[32:38], frame[38:42]
    return spa == tpa and (op == b"\x00\x01" or tha == sha)


def wire_timeline(
    rb_port: list[Frame],
    client: list[Frame],
    ra_ip: bytes,
    rb_mac: bytes,
    t_fault: float,
    offset: float,
) -> dict[str, float]:
    """From the captures on rb's bridge port and on the client's: the last heartbeat
    (or VRRP advert) from ra before the fault, rb's first ARP after it (leaving rb,
    reaching the client; ``announce_client``: the first the client applies at once),
    the client's first SYN to rb's MAC after that ARP and the SYN-ACK answering it.
    Monotonic seconds (``offset`` = realtime - monotonic)."""
    out: dict[str, float] = {}
    t = lambda f: f.time - offset  # noqa: E731
    for f in rb_port:
        ip = _ipv4(f)
        if ip and ip[1] == ra_ip and t(f) <= t_fault + 0.001:
            proto, payload = ip[0], ip[3]
            if proto == 112 or (proto == 17 and payload[2:4] == (539).to_bytes(2, "big")):
                out["last_heartbeat"] = t(f)
        if f.data[12:14] == b"\x08\x06" and f.data[6:12] == rb_mac and t(f) > t_fault:
            out.setdefault("arp_wire", t(f))
    syn_ports: int | None = None
    for f in client:
        if f.data[12:14] == b"\x08\x06" and f.data[6:12] == rb_mac and t(f) > t_fault:
            out.setdefault("arp_client", t(f))
            if _applied_at_once(f.data):
                out.setdefault("announce_client", t(f))
        ip = _ipv4(f)
        if not ip or ip[0] != 6 or "arp_client" not in out or t(f) < out["arp_client"]:
            continue
        tcp = ip[3]
        flags = tcp[13]
        if syn_ports is None and flags & 0x12 == 0x02 and f.data[0:6] == rb_mac:
            syn_ports = int.from_bytes(tcp[0:2], "big")
            out["syn"] = t(f)
        elif (
            syn_ports is not None
            and flags & 0x12 == 0x12
            and int.from_bytes(tcp[2:4], "big") == syn_ports
        ):
            out["synack"] = t(f)
            break
    return out


class Bench:
    def __init__(
        self,
        lab: Lab,
        work: Path,
        every: float = 0.002,
        timeline: bool = False,
        keep_pcaps: Path | None = None,
    ) -> None:
        self.lab = lab
        self.keep_pcaps = keep_pcaps
        self.runs = 0
        self.work = work
        self.every = every
        self.timeline = timeline
        self.vrrp: dict[str, subprocess.Popen] = {}
        self.vrrp_lines: dict[str, LineStamps] = {}

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
                conf.write_text(keepalived_conf(name, s.interval, s.priorities))
                self.vrrp[name] = lab.routers[name].ns.popen(
                    KEEPALIVED, "-n", "-l", "-P", "-f", str(conf),
                    "-p", str(self.work / f"k-{name}.pid"),
                    "-r", str(self.work / f"v-{name}.pid"),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )  # fmt: skip
                self.vrrp_lines[name] = LineStamps(self.vrrp[name])
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
        self.vrrp_lines.clear()
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
            caps: list[Capture] = []
            if self.timeline:
                caps = [
                    Capture(lab.sw, "prb", self.work / "prb.pcap", 1_000_000,
                            "arp or udp port 539 or ip proto 112"),
                    Capture(lab.sw, "pc", self.work / "pc.pcap", 1_000_000,
                            "arp or (tcp port 80 and tcp[tcpflags] & tcp-syn != 0)"),
                ]  # fmt: skip
            lab.send(op="stream", dst=VIP, port=80, seconds=wait_s + 0.5, every=self.every,
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
            timeline = None
            if caps:
                offset = time.time() - time.monotonic()
                frames = [c.frames(timeout=0.2) for c in caps]
                self.runs += 1
                if self.keep_pcaps is not None:
                    self.keep_pcaps.mkdir(parents=True, exist_ok=True)
                    tag = f"{self.runs:02d}-{s.name.replace('/', '_')}-{fault}"
                    for c in caps:
                        shutil.copy(c.path, self.keep_pcaps / f"{tag}-{c.path.name}")
                abs_t = wire_timeline(
                    frames[0], frames[1], bytes(map(int, ROUTERS["ra"].split("."))),
                    _mac(lab.router_mac("rb")), t_fault, offset,
                )  # fmt: skip
                if s.kind == "pulse":
                    abs_t.update(pulse_timeline(lab.routers["rb"].log()))
                elif "rb" in self.vrrp_lines:
                    master = self.vrrp_lines["rb"].first("Entering MASTER STATE", t_fault)
                    if master is not None:
                        abs_t["master"] = master
                if gap is not None:
                    abs_t["gap"] = t_fault + gap
                timeline = {k: round((v - t_fault) * 1000, 2) for k, v in abs_t.items()}
            return Result(
                s.name, fault, s.interval, None if gap is None else gap * 1000, lost, after, kept,
                every_ms=self.every * 1000, timeline=timeline,
            )  # fmt: skip
        finally:
            self.stop()


def select(only: list[str] | None) -> list[Setup]:
    """``--only``: a setup's exact name, else every setup whose name contains it;
    without it the default set (not the extra keepalived priority row)."""
    if not only:
        return [s for s in SETUPS if s.name in DEFAULT]
    chosen = []
    for o in only:
        exact = [s for s in SETUPS if s.name == o]
        chosen += exact or [s for s in SETUPS if o in s.name]
    return [s for s in SETUPS if s in chosen]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="setups whose name contains this")
    ap.add_argument("--faults", default="dead,link")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--repeat", type=int, default=1, help="runs of every setup and fault")
    ap.add_argument("--every", type=float, default=0.002, help="seconds between new connections")
    ap.add_argument(
        "--timeline", action="store_true", help="capture on the bridge: where each run's time went"
    )
    ap.add_argument("--keep-pcaps", type=Path, help="with --timeline: keep the captures here")
    args = ap.parse_args()
    setups = select(args.only)
    work = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    results: list[Result] = []
    with Topology() as topo:
        lab = Lab(topo, work, http=False)
        bench = Bench(lab, work, args.every, args.timeline, args.keep_pcaps)
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
                        if r.timeline:
                            tl = "  ".join(
                                f"{k} {v:+.1f}"
                                for k, v in sorted(r.timeline.items(), key=lambda kv: kv[1])
                            )
                            print(f"     timeline (ms from the fault): {tl}", flush=True)
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
    timelines: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in results:
        for k, v in (r.timeline or {}).items():
            timelines.setdefault((r.setup, r.fault), {}).setdefault(k, []).append(v)
    if timelines:
        print("\nmedian timeline (ms from the fault; of the runs that have the step):")
        for (setup, fault), steps in timelines.items():
            order = sorted(steps.items(), key=lambda kv: statistics.median(kv[1]))
            line = "  ".join(f"{k} {statistics.median(v):+.1f}" for k, v in order)
            print(f"  {setup:15} {fault:5} {line}")
    print("\nratios of the gaps (pulse / keepalived; medians):")
    for fault in args.faults.split(","):
        for p, k in (
            ("pulse-2/5", "keepalived-1"),
            ("pulse-1/3", "keepalived-1"),
            ("pulse-0.1/0.3", "keepalived-0.1"),
            ("pulse-0.1/0.3", "keepalived-0.1-prio254/204"),
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
