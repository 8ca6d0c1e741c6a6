"""Health-check benchmark: 10,000 real servers checked every second by one HealthMonitor.

A fresh network namespace holds everything: 198.18.0.1 on its loopback, a listener
process with one TCP listening socket per real server (ports 20000 and up; it accepts
and closes), and the monitor process (this script with ``--inner``), which checks
every listener with ``timeout = 1`` (interval and connect timeout 1 s).

It prints, for the monitor process only (getrusage of itself, not of the listeners):
* CPU: user + system seconds per wall second over a steady window, as % of one core;
* jitter: actual minus planned start of every check in that window (p50 / p99 / max);
* detection: the listener process closes ``--fail`` listeners one by one at random
  moments and reports when; the time from each close to the monitor's down event
  (p50 / p99 / max). Target: p99 <= interval + timeout + 50 ms = 2.05 s.

Run (root): .venv/bin/python bench/health_bench.py [--servers 10000] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compiler.model import Config, Network, RealServer, VirtualService  # noqa: E402
from runtime.health.monitor import HealthMonitor, ServerEvent  # noqa: E402
from runtime.health.probes import ProbeResult  # noqa: E402

ADDRESS = "198.18.0.1"
VETH_SERVER = "198.18.0.2"
DAEMON_REALS = "198.18.2."  # --daemon: real server addresses 198.18.2.1-100
DAEMON_VIP = "198.18.1.1"
BASE_PORT = 20000
PER_VIRTUAL = 100


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    target = max(need, soft)
    if hard < target:
        hard = target  # root may raise the hard limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --------------------------------------------------------------------------- listeners


def targets(count: int, address: str, daemon: bool) -> list[tuple[str, int]]:
    """(address, port) of every real server, in order (server ``rs{i}``). With
    ``--daemon`` the 100 servers of a virtual have 100 different addresses
    (``DAEMON_REALS``): in direct routing the dataplane forwards to the virtual's port,
    so servers differing only in port would be one real to XDP."""
    if daemon:
        return [(f"{DAEMON_REALS}{i % PER_VIRTUAL + 1}", BASE_PORT + i) for i in range(count)]
    return [(address, BASE_PORT + i) for i in range(count)]


def listeners(addrs: list[tuple[str, int]], banner: bytes) -> None:
    """``--listen``: one listening socket per (address, port); accept and close (after
    writing ``banner``); on a line ``close I`` from stdin, close listener ``I`` and print
    ``closed I <CLOCK_MONOTONIC>``."""
    raise_nofile(len(addrs) + 1000)
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    for i, where in enumerate(addrs):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(where)
        s.listen(512)
        s.setblocking(False)
        socks[i] = s
        sel.register(s, selectors.EVENT_READ, i)
    os.set_blocking(sys.stdin.fileno(), False)
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    print("ready", flush=True)
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.data is None:
                data = os.read(sys.stdin.fileno(), 4096)
                if not data:
                    return
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    index = int(line.split()[1])
                    s = socks.pop(index)
                    sel.unregister(s)
                    s.close()
                    print(f"closed {index} {time.monotonic():.6f}", flush=True)
                continue
            lst = key.fileobj
            while True:
                try:
                    conn, _ = lst.accept()  # type: ignore[union-attr]
                except OSError:  # EAGAIN: drained; or a connection reset before accept
                    break
                if banner:
                    with contextlib.suppress(OSError):
                        conn.send(banner)
                conn.close()


# --------------------------------------------------------------------------- monitor


def model(count: int, expect: bool, address: str) -> Config:
    virtuals = []
    for v in range(0, count, PER_VIRTUAL):
        servers = tuple(
            RealServer(
                name=f"rs{i}",
                address=IPv4Address(address),
                active=True,
                port=BASE_PORT + i,
            )
            for i in range(v, min(v + PER_VIRTUAL, count))
        )
        virtuals.append(
            VirtualService(
                name=f"v{v // PER_VIRTUAL}",
                active=True,
                address=IPv4Address("198.18.1.1"),
                port=10000 + v // PER_VIRTUAL,  # not 80: connect-only unless --expect
                timeout=1,
                reentry=1,
                expect="220" if expect else None,
                servers=servers,
            )
        )
    return Config(network=Network.NAT, virtuals=tuple(virtuals))


def tcp_counters(names: tuple[str, ...]) -> dict[str, int]:
    """TcpExt counters of this network namespace (/proc/net/netstat)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            out = {n: int(table.get(n, 0)) for n in names}
    return out


COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


class GcClock:
    """Time spent in the cyclic garbage collector while ``on``, per generation: the
    monitor allocates per check, and a full collection walks every tracked object,
    so its cost grows with what the process holds (a daemon holds its config, plan
    and director state)."""

    def __init__(self) -> None:
        import gc

        self.on = False
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            gen = info["generation"]
            self.runs[gen] += 1
            self.seconds[gen] += time.perf_counter() - self._started

    def report(self) -> dict:
        return {
            "runs": list(self.runs),
            "ms": [round(1000 * t, 1) for t in self.seconds],
        }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def note(text: str) -> None:
    print(f"{time.monotonic():.3f} {text}", file=sys.stderr, flush=True)


async def start_listeners(
    args: argparse.Namespace, netns: list[str], banner: bytes
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *netns,
        sys.executable,
        __file__,
        "--listen",
        str(args.servers),
        "--banner",
        banner.decode(),
        "--server-address",
        args.server_address,
        *(["--daemon"] if args.daemon else []),
        *(["--listener-batch"] if args.listener_batch else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready.strip() == b"ready", "the listener process did not start"
    return proc


async def close_listeners(
    proc: asyncio.subprocess.Process, victims: list[int], rng: random.Random, on_close
) -> dict[int, float]:
    """Close the ``victims``' listeners one at a time, 20-80 ms apart; returns index ->
    CLOCK_MONOTONIC of each close (as the listener process saw it); ``on_close(i)`` is
    called just before asking for each."""
    assert proc.stdout is not None and proc.stdin is not None
    closed: dict[int, float] = {}
    give_up = time.monotonic() + 60
    for i in victims:
        if time.monotonic() > give_up:
            note(f"listener too slow: {len(closed)} of {len(victims)} closed in 60 s")
            break
        await asyncio.sleep(rng.uniform(0.02, 0.08))
        on_close(i)
        proc.stdin.write(f"close {i}\n".encode())
        await proc.stdin.drain()
        reply = await asyncio.wait_for(proc.stdout.readline(), 10)
        if not reply:
            raise RuntimeError(f"the listener process died (exit {await proc.wait()})")
        _, index, at = reply.decode().split()
        closed[int(index)] = float(at)
    return closed


async def inner(args: argparse.Namespace) -> dict:
    raise_nofile(args.concurrency * 2 + 1000)
    banner = b"220 bench\r\n" if args.expect else b""
    netns = ["ip", "netns", "exec", args.listener_netns] if args.listener_netns else []
    proc = await start_listeners(args, netns, banner)

    ups: set[str] = set()
    downs: dict[str, float] = {}
    jitter: list[float] = []
    latency: list[float] = []
    window = {"on": False, "checks": 0, "failed": 0}

    def on_event(e: ServerEvent) -> None:
        if e.up:
            ups.add(e.server)
        else:
            downs.setdefault(e.server, time.monotonic())

    def observer(_v: str, _s: str, planned: float, started: float, r: ProbeResult) -> None:
        if window["on"]:
            jitter.append(started - planned)
            latency.append(r.latency)
            window["checks"] += 1
            if not r.ok:
                window["failed"] += 1

    mon = HealthMonitor(
        model(args.servers, args.expect, args.server_address),
        on_event,
        concurrency=args.concurrency,
        observer=observer,
    )
    t0 = time.monotonic()
    note("listener ready; starting the monitor")
    await mon.start()
    # warm-up: every server up (the first interval spreads the first checks)
    while len(ups) < args.servers and time.monotonic() - t0 < 30:
        await asyncio.sleep(0.1)
    all_up = time.monotonic() - t0
    note(f"{len(ups)} servers up after {all_up:.3f} s; measuring")
    if not args.default_gc:
        # the collector as the daemon sets it after start-up (runtime/daemon.py): with
        # the default thresholds a run may or may not fall into collections that walk
        # every live check object a few times a second (seen: 0 or 929 in 20 s)
        from runtime.daemon import collect_rarely

        collect_rarely()
    await asyncio.sleep(1.0)

    c0 = tcp_counters(COUNTERS)
    gc_clock = GcClock()
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    window["on"] = gc_clock.on = True
    profile = None
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    await asyncio.sleep(args.window)
    if profile is not None:
        profile.disable()
    window["on"] = gc_clock.on = False
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    c1 = tcp_counters(COUNTERS)
    if profile is not None:
        profile.dump_stats(args.profile)
    user = (r1.ru_utime - r0.ru_utime) / (w1 - w0)
    system = (r1.ru_stime - r0.ru_stime) / (w1 - w0)
    cpu = user + system
    checks_per_s = window["checks"] / (w1 - w0)

    note(f"window done ({window['checks']} checks); closing listeners")
    # failures: close listeners at random moments, one every 20-80 ms
    rng = random.Random(7)
    victims = rng.sample(range(args.servers), args.fail)
    closed = {
        f"rs{i}": at
        for i, at in (await close_listeners(proc, victims, rng, lambda _i: None)).items()
    }
    deadline = time.monotonic() + 5
    while any(s not in downs for s in closed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    detection = [downs[s] - t for s, t in closed.items() if s in downs]
    missed = [s for s in closed if s not in downs]
    unexpected = sorted(set(downs) - set(closed))

    note("stopping")
    await mon.stop()
    proc.stdin.close()
    await asyncio.wait_for(proc.wait(), 30)
    note("done")
    return {
        "servers": args.servers,
        "check": "connect + read '220'" if args.expect else "TCP connect",
        "all_up_s": round(all_up, 3),
        "window_s": round(w1 - w0, 2),
        "checks_per_s": round(checks_per_s, 1),
        "cpu_pct_one_core": round(100 * cpu, 1),
        "user_pct": round(100 * user, 1),
        "system_pct": round(100 * system, 1),
        "cpu_us_per_check": round(1e6 * cpu / checks_per_s, 1) if checks_per_s else None,
        "failed_checks": window["failed"],
        "tcp_counters_in_window": {k: c1[k] - c0[k] for k in COUNTERS},
        "gc_in_window": gc_clock.report(),
        "latency_ms": {
            "p50": round(1000 * pct(latency, 0.50), 2),
            "p99": round(1000 * pct(latency, 0.99), 2),
        },
        "jitter_ms": {
            "p50": round(1000 * pct(jitter, 0.50), 2),
            "p99": round(1000 * pct(jitter, 0.99), 2),
            "max": round(1000 * max(jitter), 2) if jitter else None,
        },
        "detection_ms": {
            "n": len(detection),
            "p50": round(1000 * pct(detection, 0.50), 1),
            "p99": round(1000 * pct(detection, 0.99), 1),
            "max": round(1000 * max(detection), 1) if detection else None,
            "mean": round(1000 * statistics.fmean(detection), 1) if detection else None,
        },
        "missed": missed,
        "unexpected_downs": unexpected[:10],
    }


# --------------------------------------------------------------------------- --daemon


def lvs_cf(count: int, expect: bool) -> str:
    """lvs.cf for ``--daemon``: direct routing, virtuals of ``PER_VIRTUAL`` servers on
    one VIP (ports 10000 and up; not 80: connect-only unless ``expect``), ``timeout = 1``."""
    out = ["network = direct\n"]
    addrs = targets(count, "", True)
    for v in range(0, count, PER_VIRTUAL):
        out.append(
            f"virtual v{v // PER_VIRTUAL} {{\n    active = 1\n    address = {DAEMON_VIP} eth0:1\n"
            f"    port = {10000 + v // PER_VIRTUAL}\n    protocol = tcp\n    scheduler = wrr\n"
            "    timeout = 1\n    reentry = 1\n" + ('    expect = "220"\n' if expect else "")
        )
        for i in range(v, min(v + PER_VIRTUAL, count)):
            address, port = addrs[i]
            out.append(
                f"    server rs{i} {{\n        address = {address}\n        port = {port}\n"
                "        active = 1\n        weight = 1\n    }\n"
            )
        out.append("}\n")
    return "".join(out)


async def inner_daemon(args: argparse.Namespace) -> dict:
    """The daemon in this process (this network namespace, eth0 a veth) checking
    ``args.servers`` listeners; see ``--daemon``."""
    import shutil
    import tempfile

    from dataplane.plan import REAL_F_FAILED
    from runtime.daemon import Daemon, Options
    from runtime.director import Health, xdp_index

    raise_nofile(args.concurrency * 2 + 1000)
    banner = b"220 bench\r\n" if args.expect else b""
    proc = await start_listeners(args, [], banner)
    assert proc.stdin is not None
    work = Path(tempfile.mkdtemp(prefix="health-bench-"))
    (work / "lvs.cf").write_text(lvs_cf(args.servers, args.expect))
    pin_dir = f"/sys/fs/bpf/lvsr-health-bench-{os.getpid()}"
    macs = {
        IPv4Address(f"{DAEMON_REALS}{k + 1}"): bytes([2, 0, 0, 0, 0, k + 1])
        for k in range(PER_VIRTUAL)
    }

    downs: dict[tuple[str, str], float] = {}
    removed: dict[tuple[str, str], float] = {}
    watched: dict[tuple[str, str], int] = {}  # closed, not yet seen failed: real index
    applies: list[tuple[float, float]] = []  # (completed, took) of every apply
    apply_cpu: list[float] = []  # CPU time of the dataplane thread in each apply
    jitter: list[float] = []
    window = {"on": False, "checks": 0, "failed": 0, "failing": False, "warm": False}
    profiles = {}
    if args.profile_apply:
        import cProfile

        profiles = {"warm-up": cProfile.Profile(), "failing": cProfile.Profile()}

    class TimedDaemon(Daemon):
        """The daemon, timing its health events and its backend's applies."""

        def _on_event(self, ev) -> None:
            if not ev.up:
                downs.setdefault((ev.virtual, ev.server), time.monotonic())
            super()._on_event(ev)

        def _on_check(self, virtual, server, due, start, result) -> None:
            if window["on"]:
                jitter.append(start - due)
                window["checks"] += 1
                window["failed"] += not result.ok
            super()._on_check(virtual, server, due, start, result)

        async def open_dataplane(self, config) -> None:
            await super().open_dataplane(config)
            backend = self.backend
            apply = backend.apply

            def timed_apply(desired):
                t0, c0 = time.monotonic(), time.thread_time()
                prof = profiles.get("failing" if window["failing"] else "warm-up")
                if prof is not None and (window["failing"] or not window["warm"]):
                    prof.enable()
                    try:
                        changes = apply(desired)
                    finally:
                        prof.disable()
                else:
                    changes = apply(desired)
                done = time.monotonic()
                applies.append((done, done - t0))
                apply_cpu.append(time.thread_time() - c0)
                # what the program now sees: the closed servers' entries in the map
                maps = backend._dp.maps
                for key, index in list(watched.items()):
                    if maps.real(index).flags & REAL_F_FAILED:
                        removed.setdefault(key, done)
                        watched.pop(key, None)
                return changes

            backend.apply = timed_apply

    opts = Options(
        config=str(work / "lvs.cf"),
        dataplane="xdp",
        interface="eth0",
        pin_dir=pin_dir,
        real_macs=macs,
        socket=None,
        metrics=("127.0.0.1", 9539) if args.metrics else None,
        on_stop="remove",
        concurrency=args.concurrency,
    )
    daemon = TimedDaemon(opts)
    t0 = time.monotonic()
    try:
        note("listeners ready; starting the daemon (XDP compile and attach)")
        await daemon.start()
        started = time.monotonic() - t0
        note(f"daemon ready after {started:.3f} s")
        backend, director = daemon.backend, daemon.director
        dp = backend._dp
        index = xdp_index(daemon.config, dp.plan)
        keys = list(index)
        # warm-up: every server up and in the maps (not failed)
        while time.monotonic() - t0 < 120:
            up = sum(director.states[k].health is Health.UP for k in keys)
            if up == len(keys) and not daemon._dirty.is_set() and not daemon._lock.locked():
                break
            await asyncio.sleep(0.2)
        in_maps = sum(not dp.maps.real(index[k]).flags & REAL_F_FAILED for k in keys)
        all_up = time.monotonic() - t0
        note(f"{up} servers up, {in_maps} in the maps after {all_up:.3f} s; measuring")
        warm_applies = len(applies)
        window["warm"] = True
        show_profile(profiles.get("warm-up"), "applies until every server was up")
        await asyncio.sleep(1.0)

        gc_clock = GcClock()
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        window["on"] = gc_clock.on = True
        await asyncio.sleep(args.window)
        window["on"] = gc_clock.on = False
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        user = (r1.ru_utime - r0.ru_utime) / (w1 - w0)
        system = (r1.ru_stime - r0.ru_stime) / (w1 - w0)
        checks_per_s = window["checks"] / (w1 - w0)
        note(f"window done ({window['checks']} checks); closing listeners")

        rng = random.Random(7)
        victims = rng.sample(range(args.servers), args.fail)
        by_i = {i: k for k in keys for i in [int(k[1][2:])]}
        first_apply = len(applies)
        window["failing"] = True
        r2, w2 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()

        def watch(i: int) -> None:
            watched[by_i[i]] = index[by_i[i]]

        closed = {
            by_i[i]: at for i, at in (await close_listeners(proc, victims, rng, watch)).items()
        }
        deadline = time.monotonic() + 10
        while any(k not in removed for k in closed) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        r3, w3 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        window["failing"] = False
        show_profile(profiles.get("failing"), "applies in the failure phase")
        fail_cpu = (r3.ru_utime - r2.ru_utime + r3.ru_stime - r2.ru_stime) / (w3 - w2)
        detection = [downs[k] - t for k, t in closed.items() if k in downs]
        removal = [removed[k] - t for k, t in closed.items() if k in removed]
        missed = [f"{k[0]}/{k[1]}" for k in closed if k not in removed]
        unexpected = sorted(f"{k[0]}/{k[1]}" for k in set(downs) - set(closed))
        fail_applies = applies[first_apply:]

        # out of the Maglev table too: the whole ring of a few victims' services
        ring_checked, ring_holding = 0, 0
        by_name = {s.name: s for s in dp.plan.services}
        for key in list(closed)[:3]:
            svc = by_name.get(key[0])
            if svc is None:
                continue
            ring = [dp.maps.ring_slot(svc.index, j) for j in range(dp.plan.sizes.ring_size)]
            ring_checked += 1
            ring_holding += index[key] in ring
        total_failed = sum(bool(dp.maps.real(index[k]).flags & REAL_F_FAILED) for k in keys)
    finally:
        note("stopping")
        await daemon.stop()
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
        shutil.rmtree(pin_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    note("done")
    took = [t for _, t in fail_applies]
    took_cpu = apply_cpu[first_apply : first_apply + len(fail_applies)]
    return {
        "mode": "daemon",
        "servers": args.servers,
        "reals_in_plan": len(dp.plan.reals),
        "services_in_plan": len(dp.plan.services),
        "check": "connect + read '220'" if args.expect else "TCP connect",
        "daemon_ready_s": round(started, 3),
        "all_up_s": round(all_up, 3),
        "in_maps_at_start": in_maps,
        "warm_up_applies": warm_applies,
        "warm_up_apply_ms": [round(1000 * t, 1) for _, t in applies[:warm_applies]],
        "warm_up_apply_cpu_ms": [round(1000 * t, 1) for t in apply_cpu[:warm_applies]],
        "window_s": round(w1 - w0, 2),
        "checks_per_s": round(checks_per_s, 1),
        "cpu_pct_one_core": round(100 * (user + system), 1),
        "user_pct": round(100 * user, 1),
        "system_pct": round(100 * system, 1),
        "cpu_us_per_check": round(1e6 * (user + system) / checks_per_s, 1)
        if checks_per_s
        else None,
        "failed_checks": window["failed"],
        "gc_in_window": gc_clock.report(),
        "jitter_ms": {
            "p50": round(1000 * pct(jitter, 0.50), 2),
            "p99": round(1000 * pct(jitter, 0.99), 2),
            "max": round(1000 * max(jitter), 2) if jitter else None,
        },
        "failure_phase_cpu_pct": round(100 * fail_cpu, 1),
        "applies_in_failure_phase": len(fail_applies),
        "apply_ms": {
            "p50": round(1000 * pct(took, 0.50), 1),
            "p99": round(1000 * pct(took, 0.99), 1),
            "max": round(1000 * max(took), 1) if took else None,
        },
        "apply_cpu_ms": {
            "p50": round(1000 * pct(took_cpu, 0.50), 2),
            "p99": round(1000 * pct(took_cpu, 0.99), 2),
            "max": round(1000 * max(took_cpu), 2) if took_cpu else None,
        },
        "detection_ms": summary(detection),
        "removal_ms": summary(removal),
        "missed": missed,
        "unexpected_downs": unexpected[:10],
        "failed_in_maps_at_end": total_failed,
        "rings_checked": ring_checked,
        "rings_still_holding_victim": ring_holding,
    }


def show_profile(profile, what: str) -> None:
    if profile is None:
        return
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(24)
    note(f"{what}, by own time:\n{text.getvalue()}")


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(1000 * pct(values, 0.50), 1),
        "p99": round(1000 * pct(values, 0.99), 1),
        "max": round(1000 * max(values), 1) if values else None,
        "mean": round(1000 * statistics.fmean(values), 1) if values else None,
    }


def report_daemon(result: dict) -> None:
    target = 2050.0
    print(
        f"health checks end to end (daemon, XDP backend): {result['servers']} real servers "
        f"({result['services_in_plan']} services, {result['reals_in_plan']} XDP reals), "
        f"{result['check']}, timeout 1 s"
    )
    print(f"  machine load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(
        f"  daemon ready (XDP compiled, attached) after {result['daemon_ready_s']} s; all up "
        f"and applied after {result['all_up_s']} s ({result['warm_up_applies']} applies); "
        f"in the maps then: {result['in_maps_at_start']}; those applies took "
        f"{result['warm_up_apply_ms']} ms (CPU of the dataplane thread "
        f"{result['warm_up_apply_cpu_ms']} ms)"
    )
    print(
        f"  CPU of the daemon process, steady: {result['cpu_pct_one_core']}% of one core "
        f"(user {result['user_pct']}%, system {result['system_pct']}%; "
        f"{result['checks_per_s']} checks/s, {result['cpu_us_per_check']} us/check) "
        f"(target <= 50%)"
    )
    j = result["jitter_ms"]
    print(
        f"  check start jitter: p50 {j['p50']} ms, p99 {j['p99']} ms, max {j['max']} ms; "
        f"failed checks in the window: {result['failed_checks']}"
    )
    g = result["gc_in_window"]
    print(f"  garbage collections in the window, gen 0/1/2: {g['runs']}, {g['ms']} ms")
    a, c = result["apply_ms"], result["apply_cpu_ms"]
    print(
        f"  failure phase: CPU {result['failure_phase_cpu_pct']}% of one core, "
        f"{result['applies_in_failure_phase']} applies, each p50 {a['p50']} / p99 {a['p99']} / "
        f"max {a['max']} ms (CPU of the dataplane thread p50 {c['p50']} / p99 {c['p99']} / "
        f"max {c['max']} ms)"
    )
    for what, key in (("down event", "detection_ms"), ("flagged failed in the map", "removal_ms")):
        d = result[key]
        print(
            f"  failure -> {what} ({d['n']} servers): p50 {d['p50']} ms, p99 {d['p99']} ms, "
            f"max {d['max']} ms; p99 / target {d['p99'] / target:.2f}   (target p99 <= 2050 ms)"
        )
    print(
        f"  Maglev rings read back: {result['rings_checked']}, still holding the failed "
        f"real: {result['rings_still_holding_victim']}; reals failed in the map at the end: "
        f"{result['failed_in_maps_at_end']}"
    )
    if result["missed"] or result["unexpected_downs"]:
        print(f"  missed: {result['missed']}  unexpected downs: {result['unexpected_downs']}")


# --------------------------------------------------------------------------- outer


def outer(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "netns"))
    from tests.netns.topo import Topology

    with Topology("hb") as topo:
        ns = topo.netns("health")
        ns.sysctl("net.core.somaxconn", 4096)
        extra = ["--server-address", ADDRESS]
        if args.veth:
            # real servers in their own namespace behind a veth; their receive path
            # steered to CPU 1 (RPS) and the monitor's to CPU 0, the monitor pinned to
            # CPU 0: the kernel work of the servers' side of each handshake is then
            # done on the other CPU instead of being charged to the monitor
            servers = topo.netns("servers")
            servers.sysctl("net.core.somaxconn", 4096)
            topo.veth(ns, "eth0", servers, "eth0")
            ns.addr("eth0", f"{ADDRESS}/24")
            servers.addr("eth0", f"{VETH_SERVER}/24")
            servers.run("sh", "-c", "echo 2 > /sys/class/net/eth0/queues/rx-0/rps_cpus")
            ns.run("sh", "-c", "echo 1 > /sys/class/net/eth0/queues/rx-0/rps_cpus")
            extra = ["--server-address", VETH_SERVER, "--listener-netns", servers.name]
        elif args.daemon:
            # the real servers' addresses on the loopback; the XDP program on eth0, a
            # veth to an otherwise empty namespace (no traffic: the maps are the result)
            peer = topo.netns("peer")
            topo.veth(ns, "eth0", peer, "eth0")
            ns.addr("eth0", "198.18.0.1/24")
            for k in range(PER_VIRTUAL):
                ns.addr("lo", f"{DAEMON_REALS}{k + 1}/32")
        else:
            ns.addr("lo", f"{ADDRESS}/32")
        pin = ["taskset", "-c", "0"] if args.veth else []
        cmd = [*pin, sys.executable, __file__, "--inner", *sys.argv[1:], *extra]
        try:
            if args.daemon:
                # nsenter, not `ip netns exec`, which mounts a fresh /sys without bpffs
                out = subprocess.run(  # its progress notes go straight to stderr
                    ["nsenter", f"--net=/run/netns/{ns.name}", *cmd],
                    stdout=subprocess.PIPE,
                    text=True,
                    timeout=args.window + 300,
                    check=True,
                ).stdout
            else:
                out = ns.run(*cmd, timeout=args.window + 240)
        except subprocess.TimeoutExpired as err:
            sys.exit(f"the benchmark did not finish; its progress:\n{err.stderr}")
        except subprocess.CalledProcessError as err:
            sys.exit(f"the benchmark failed (exit {err.returncode}; its notes are above)")
    result = json.loads(out.strip().splitlines()[-1])
    if args.daemon:
        report_daemon(result)
        return
    load = os.getloadavg()[0]
    where = "veth + RPS, monitor on CPU 0" if args.veth else "loopback"
    print(
        f"health checks: {result['servers']} real servers, {result['check']}, timeout 1 s, {where}"
    )
    print(f"  machine load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
    print(f"  all servers up after {result['all_up_s']} s")
    print(
        f"  CPU of the monitor: {result['cpu_pct_one_core']}% of one core "
        f"({result['checks_per_s']} checks/s, {result['cpu_us_per_check']} us/check) "
        f"over {result['window_s']} s   (target <= 50%)"
    )
    print(f"    of which user {result['user_pct']}%, system {result['system_pct']}%")
    lat = result["latency_ms"]
    print(
        f"  check latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms; "
        f"failed checks in the window: {result['failed_checks']}"
    )
    print(f"  kernel TCP counters in the window: {result['tcp_counters_in_window']}")
    g = result["gc_in_window"]
    print(f"  garbage collections in the window, gen 0/1/2: {g['runs']}, {g['ms']} ms")
    j = result["jitter_ms"]
    print(f"  check start jitter: p50 {j['p50']} ms, p99 {j['p99']} ms, max {j['max']} ms")
    d = result["detection_ms"]
    print(
        f"  failure -> down event ({d['n']} servers): p50 {d['p50']} ms, p99 {d['p99']} ms, "
        f"max {d['max']} ms   (target p99 <= 2050 ms)"
    )
    if result["missed"] or result["unexpected_downs"]:
        print(f"  missed: {result['missed']}  unexpected downs: {result['unexpected_downs']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", type=int, default=10000)
    p.add_argument("--window", type=float, default=20.0, help="steady-state seconds measured")
    p.add_argument("--fail", type=int, default=100, help="listeners closed to time detection")
    p.add_argument("--concurrency", type=int, default=512)
    p.add_argument("--expect", action="store_true", help="read a '220' banner, not just connect")
    p.add_argument(
        "--veth",
        action="store_true",
        help="listeners in a second namespace behind a veth, their receive path on the\n"
        "other CPU (RPS), the monitor pinned to CPU 0",
    )
    p.add_argument(
        "--daemon",
        action="store_true",
        help="end to end: the daemon (runtime/daemon.py: monitor, director, XdpBackend)\n"
        "with the XDP program on a veth; failure -> real flagged failed in the BPF maps",
    )
    p.add_argument(
        "--profile-apply",
        action="store_true",
        help="--daemon: cProfile the backend's applies in the failure phase (stderr)",
    )
    p.add_argument(
        "--listener-batch",
        action="store_true",
        help="run the listener process SCHED_BATCH, so that the connections of the\n"
        "checks wake it without preempting the monitor (not the default: for comparison)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="monitor alone: cProfile the steady window into FILE (pstats; inflates the\n"
        "CPU figures)",
    )
    p.add_argument(
        "--metrics",
        action="store_true",
        help="--daemon: with the Prometheus endpoint on (the daemon's default), so that\n"
        "its status refresh every 5 s and counter reads every 30 s are in the bill",
    )
    p.add_argument(
        "--default-gc",
        action="store_true",
        help="monitor alone: keep Python's default collector thresholds (the daemon\n"
        "freezes its start-up state and collects rarely: runtime/daemon.py collect_rarely)",
    )
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server-address", default=ADDRESS, help=argparse.SUPPRESS)
    p.add_argument("--listener-netns", default="", help=argparse.SUPPRESS)
    p.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    p.add_argument("--banner", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.listen is not None:
        if args.listener_batch:
            # SCHED_BATCH: woken by a check, the listener no longer preempts the
            # monitor on its CPU (a loopback artefact: real servers are elsewhere)
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        listeners(targets(args.listen, args.server_address, args.daemon), args.banner.encode())
    elif args.inner:
        print(json.dumps(asyncio.run(inner_daemon(args) if args.daemon else inner(args))))
    else:
        outer(args)


if __name__ == "__main__":
    main()
