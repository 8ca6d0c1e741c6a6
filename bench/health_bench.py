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


def listeners(count: int, banner: bytes, bind: str) -> None:
    """``--listen``: one listening socket per port; accept and close (after writing
    ``banner``); on a line ``close PORT`` from stdin, close that listener and print
    ``closed PORT <CLOCK_MONOTONIC>``."""
    raise_nofile(count + 1000)
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    for i in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, BASE_PORT + i))
        s.listen(512)
        s.setblocking(False)
        socks[BASE_PORT + i] = s
        sel.register(s, selectors.EVENT_READ, BASE_PORT + i)
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
                    port = int(line.split()[1])
                    s = socks.pop(port)
                    sel.unregister(s)
                    s.close()
                    print(f"closed {port} {time.monotonic():.6f}", flush=True)
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


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def note(text: str) -> None:
    print(f"{time.monotonic():.3f} {text}", file=sys.stderr, flush=True)


async def inner(args: argparse.Namespace) -> dict:
    raise_nofile(args.concurrency * 2 + 1000)
    banner = b"220 bench\r\n" if args.expect else b""
    netns = ["ip", "netns", "exec", args.listener_netns] if args.listener_netns else []
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
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready.strip() == b"ready", "the listener process did not start"

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
    await asyncio.sleep(1.0)

    c0 = tcp_counters(COUNTERS)
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    window["on"] = True
    await asyncio.sleep(args.window)
    window["on"] = False
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    c1 = tcp_counters(COUNTERS)
    user = (r1.ru_utime - r0.ru_utime) / (w1 - w0)
    system = (r1.ru_stime - r0.ru_stime) / (w1 - w0)
    cpu = user + system
    checks_per_s = window["checks"] / (w1 - w0)

    note(f"window done ({window['checks']} checks); closing listeners")
    # failures: close listeners at random moments, one every 20-80 ms
    rng = random.Random(7)
    victims = rng.sample(range(args.servers), args.fail)
    closed: dict[str, float] = {}
    give_up = time.monotonic() + 60
    for i in victims:
        if time.monotonic() > give_up:
            note(f"listener too slow: {len(closed)} of {len(victims)} closed in 60 s")
            break
        await asyncio.sleep(rng.uniform(0.02, 0.08))
        proc.stdin.write(f"close {BASE_PORT + i}\n".encode())
        await proc.stdin.drain()
        reply = await asyncio.wait_for(proc.stdout.readline(), 10)
        if not reply:
            raise RuntimeError(f"the listener process died (exit {await proc.wait()})")
        _, port, at = reply.decode().split()
        closed[f"rs{int(port) - BASE_PORT}"] = float(at)
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
        else:
            ns.addr("lo", f"{ADDRESS}/32")
        pin = ["taskset", "-c", "0"] if args.veth else []
        cmd = [*pin, sys.executable, __file__, "--inner", *sys.argv[1:], *extra]
        try:
            out = ns.run(*cmd, timeout=args.window + 240)
        except subprocess.TimeoutExpired as err:
            sys.exit(f"the benchmark did not finish; its progress:\n{err.stderr}")
    result = json.loads(out.strip().splitlines()[-1])
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
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server-address", default=ADDRESS, help=argparse.SUPPRESS)
    p.add_argument("--listener-netns", default="", help=argparse.SUPPRESS)
    p.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    p.add_argument("--banner", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.listen is not None:
        listeners(args.listen, args.banner.encode(), args.server_address)
    elif args.inner:
        print(json.dumps(asyncio.run(inner(args))))
    else:
        outer(args)


if __name__ == "__main__":
    main()
