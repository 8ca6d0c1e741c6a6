"""The failover lab: a client, two lvs-routers and three real servers on one L2 segment.

Used by ``make demo`` (demo/run.py), bench/failover_bench.py and the failover tests
(tests/netns/test_failover_*.py), each with its own topology object (demo/netns.py or
the tests' tests/netns/topo.py: same interface) and its own real servers (HTTP web
servers or the tests' name-and-echo servers).

::

    client .2 ─┐
    ra .11 ────┤  bridge  (198.18.70.0/24; VIP .100 held by the active router)
    rb .12 ────┤
    rs1-3 .21-.23  (VIP on lo, arp_ignore/arp_announce: direct routing)

Each router runs ``lvs-router run --dataplane xdp`` (XDP on its eth0, direct routing,
pulse from ``heartbeat = 1``) as its own process in its namespace; the bridge ports of
the routers run an XDP_PASS program so that XDP_TX'd frames arrive (docs/xdp.md); the
client sends checksums in software (its frames cross XDP).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import inside

ROOT = Path(__file__).resolve().parents[1]
NET = "198.18.70"
VIP = f"{NET}.100"
CLIENT = f"{NET}.2"
ROUTERS = {"ra": f"{NET}.11", "rb": f"{NET}.12"}
REALS = {"rs1": f"{NET}.21", "rs2": f"{NET}.22", "rs3": f"{NET}.23"}
PASS_PROGRAM = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"
HTTP_CHECK = '    send = "GET / HTTP/1.0\\r\\n\\r\\n"\n    expect = "HTTP/1.0 200"\n'
GREET_CHECK = '    expect = "rs"\n'  # tests/netns/servers.py greets with its name


def lvs_cf(
    *,
    keepalive: float,
    deadtime: float,
    check: str = HTTP_CHECK,
    monitor_links: bool = False,
    port: int = 80,
) -> str:
    """The pair's lvs.cf (extended dialect when keepalive/deadtime are fractional)."""
    servers = "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n"
        "        weight = 1\n    }\n"
        for n, a in REALS.items()
    )
    return (
        f"primary = {ROUTERS['ra']}\nbackup = {ROUTERS['rb']}\nbackup_active = 1\n"
        f"service = lvs\nheartbeat = 1\nheartbeat_port = 539\n"
        f"keepalive = {keepalive:g}\ndeadtime = {deadtime:g}\n"
        f"monitor_links = {int(monitor_links)}\nnetwork = direct\n\n"
        f"virtual web {{\n    active = 1\n    address = {VIP} eth0:1\n    port = {port}\n"
        f"    protocol = tcp\n    scheduler = wrr\n    timeout = 1\n    reentry = 1\n"
        f"{check}{servers}}}\n"
    )


@dataclass
class Router:
    name: str
    ns: Any
    work: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def socket(self) -> str:
        return str(self.work / f"{self.name}.sock")

    @property
    def pin_dir(self) -> str:
        return f"/sys/fs/bpf/lvsd-failover-{os.getpid()}-{self.name}"

    @property
    def logfile(self) -> Path:
        return self.work / f"{self.name}-{self.starts}.log"

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""


@dataclass
class Lab:
    topo: Any  # demo.netns.Topology or tests.netns.topo.Topology
    work: Path
    http: bool = True
    routers: dict[str, Router] = field(default_factory=dict)
    reals: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    client_ns: Any = None
    client: subprocess.Popen | None = None
    sw: Any = None
    _bpf: Any = None

    # ---------------------------------------------------------------- building

    def build(self) -> Lab:
        from bcc import BPF

        from dataplane.xdp import attach_xdp

        t = self.topo
        self.sw = sw = t.netns("sw")
        t.bridge(sw)
        self.client_ns = c = t.netns("client")
        t.veth(c, "eth0", sw, "pc")
        t.attach(sw, "pc")
        c.addr("eth0", f"{CLIENT}/24")
        c.no_tx_offload("eth0")
        self._bpf = BPF(text=PASS_PROGRAM)
        fn = self._bpf.load_func(b"xdp_pass", BPF.XDP)
        for name, addr in ROUTERS.items():
            ns = t.netns(name)
            port = f"p{name}"
            t.veth(ns, "eth0", sw, port)
            t.attach(sw, port)
            # no unknown-unicast flooding to a router: a veth hands XDP every frame,
            # whatever its destination MAC (a NIC filters them), so a flooded frame
            # meant for a dead router would be forwarded by the live one's program
            sw.run("bridge", "link", "set", "dev", port, "flood", "off")
            ns.addr("eth0", f"{addr}/24")
            with inside(sw):  # XDP_TX from the router's eth0 arrives here
                attach_xdp(fn, port)
            self.routers[name] = Router(name, ns, self.work)
        for name, addr in REALS.items():
            rs = self.reals[name] = t.netns(name)
            t.veth(rs, "eth0", sw, name)
            t.attach(sw, name)
            for key, value in (("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)):
                for dev in ("all", "eth0"):
                    rs.sysctl(f"net.ipv4.conf.{dev}.{key}", value)
            rs.addr("eth0", f"{addr}/24")
            rs.addr("lo", f"{VIP}/32")
        self.client = c.popen(
            sys.executable, "-m", "demo.client", stdin=subprocess.PIPE, text=True, cwd=str(ROOT)
        )
        return self

    def serve(self, name: str, serve: Callable[..., subprocess.Popen] | None = None) -> None:
        """Start real server ``name`` (the topology's serve(): port 80)."""
        self.servers[name] = (serve or self.topo.serve)(self.reals[name], name=name, tcp=[80])

    def stop_server(self, name: str) -> None:
        p = self.servers.pop(name)
        p.send_signal(signal.SIGTERM)
        p.wait(10)

    def write_config(self, text: str) -> Path:
        path = self.work / "lvs.cf"
        path.write_text(text)
        return path

    # ---------------------------------------------------------------- routers

    def start_router(self, name: str, *extra: str) -> Router:
        r = self.routers[name]
        r.starts += 1
        out = open(r.logfile, "w")  # noqa: SIM115 - the process owns it
        # nsenter, not `ip netns exec` (that mounts a fresh /sys, hiding the bpffs pins)
        r.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{r.ns.name}",
                sys.executable,
                "-m",
                "runtime.daemon_cli",
                "run",
                "-c",
                str(self.work / "lvs.cf"),
                "--dataplane",
                "xdp",
                "--interface",
                "eth0",
                "--pin-dir",
                r.pin_dir,
                "--socket",
                r.socket,
                "--metrics",
                "off",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        r.ns.procs.append(r.proc)
        return r

    def status(self, name: str) -> dict | None:
        from runtime.control import ControlError, request

        try:
            answer = request(self.routers[name].socket, "status", timeout=5)
        except (ControlError, OSError):
            return None
        return answer["status"] if answer.get("ok") else None

    def pulse_state(self, name: str) -> str | None:
        s = self.status(name)
        return s["pulse"]["state"] if s and "pulse" in s else None

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {r.name}\n{r.log()[-3000:]}" for r in self.routers.values())
        raise AssertionError(f"timed out waiting until {what}\n{logs}")

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> None:
        self.wait(f"{name} is {state}", lambda: self.pulse_state(name) == state, timeout)

    def servers_up(self, name: str) -> set[str]:
        s = self.status(name)
        if not s or not s["virtuals"]:
            return set()
        return {
            rs["name"]
            for rs in s["virtuals"][0]["servers"]
            if rs["state"] == "up" and rs["in_dataplane"]
        }

    def has_vip(self, name: str) -> bool:
        out = self.routers[name].ns.ip("-o", "addr", "show", "dev", "eth0", check=False)
        return f" {VIP}/" in out

    def signal(self, name: str, sig: int) -> None:
        p = self.routers[name].proc
        assert p is not None
        p.send_signal(sig)
        if sig == signal.SIGKILL:
            p.wait(10)

    def stop_router(self, name: str) -> None:
        r = self.routers[name]
        if r.proc is not None and r.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.proc.pid, signal.SIGCONT)
            r.proc.send_signal(signal.SIGTERM)
            try:
                r.proc.wait(20)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
        r.proc = None

    def kill_machine(self, name: str) -> float:
        """The router dies as a machine does: its NIC goes (nothing it sends or
        forwards, its XDP program included, reaches anyone), then its process is
        SIGKILLed. Returns the fault's time (CLOCK_MONOTONIC) once the NIC is down."""
        self.link(name, up=False)
        t = time.monotonic()
        self.signal(name, signal.SIGKILL)
        return t

    def link(self, name: str, up: bool) -> None:
        self.routers[name].ns.ip("link", "set", "eth0", "up" if up else "down")

    def cut_heartbeats(self, src: str, dst: str, cut: bool = True) -> None:
        """Heartbeats from ``src`` to ``dst`` fail (a prohibit route on ``src``): the
        path is cut in that direction only."""
        ip = ROUTERS[dst]
        verb = "add" if cut else "del"
        self.routers[src].ns.ip("route", verb, "prohibit", f"{ip}/32", check=cut)

    # ---------------------------------------------------------------- client

    def ask(self, **command: object) -> Any:
        assert self.client and self.client.stdin and self.client.stdout
        self.client.stdin.write(json.dumps(command) + "\n")
        self.client.stdin.flush()
        answer = json.loads(self.client.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"client: {answer['error']}")
        return answer["ok"]

    def send(self, **command: object) -> None:
        """A command whose answer is read later with :meth:`answer`."""
        assert self.client and self.client.stdin
        self.client.stdin.write(json.dumps(command) + "\n")
        self.client.stdin.flush()

    def answer(self) -> Any:
        assert self.client and self.client.stdout
        got = json.loads(self.client.stdout.readline())
        if "error" in got:
            raise AssertionError(f"client: {got['error']}")
        return got["ok"]

    def names(self, n: int = 12) -> list[str]:
        return self.ask(op="get", dst=VIP, port=80, n=n, http=self.http)

    def hold(self) -> tuple[int, str]:
        cid, name = self.ask(op="hold", dst=VIP, port=80)
        return cid, name

    def echo(self, cid: int, data: str) -> str:
        return self.ask(op="echo", id=cid, data=data)

    def client_neigh(self) -> str:
        return self.client_ns.ip("neigh", "show", VIP, check=False)

    def router_mac(self, name: str) -> str:
        return self.routers[name].ns.run("cat", "/sys/class/net/eth0/address").strip()

    # ---------------------------------------------------------------- cleanup

    def close(self) -> None:
        """Routers and pins (the topology removes namespaces and other processes)."""
        for name in self.routers:
            with contextlib.suppress(Exception):
                self.stop_router(name)
        for r in self.routers.values():
            shutil.rmtree(r.pin_dir, ignore_errors=True)
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def first_success_after(attempts: list, t_fault: float) -> tuple[float | None, int]:
    """From a client stream: seconds from the fault to the first connection that
    succeeded having *started* after it, and the number of connections started after
    the fault that failed before then (requests lost)."""
    after = [a for a in attempts if a[0] >= t_fault]
    ok = [a for a in after if a[2]]
    if not ok:
        return None, sum(1 for a in after if not a[2])
    first = min(ok, key=lambda a: a[1])
    lost = sum(1 for a in after if not a[2] and a[0] <= first[1])
    return first[1] - t_fault, lost
