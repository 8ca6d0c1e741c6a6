"""Network namespaces for the demo and the failover bench: a small cousin of the tests'
tests/netns/topo.py (the demo must not depend on the test tree), with the same
interface, so demo/lab.py builds its topology on either.

Every namespace carries the prefix ``lvsd-<pid>-`` and every host-side object is
removed by :meth:`Topology.close`, which the demo calls on every way out (Ctrl-C
included); a start sweeps what a killed earlier run left.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "lvsd"
WEBSERVER = Path(__file__).with_name("webserver.py")
_seq = itertools.count()


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def sweep() -> None:
    """Delete our namespaces whose creating process is gone."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        ours = name.startswith(PREFIX + "-") and len(parts) > 1 and parts[1].isdigit()
        if ours and int(parts[1]) != os.getpid() and not Path(f"/proc/{parts[1]}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Netns:
    name: str
    role: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        return sh("ip", "-n", self.name, *args, check=check)

    def addr(self, dev: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", dev)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def no_tx_offload(self, dev: str) -> None:
        """Checksums in software: a frame crossing XDP loses the veth's offload."""
        self.run("ethtool", "-K", dev, "tx", "off")

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.procs.append(p)
        return p


class Topology:
    """Namespaces, veths, bridges and processes; ``close()`` removes them all."""

    def __init__(self) -> None:
        sweep()
        self.spaces: list[Netns] = []

    def netns(self, role: str) -> Netns:
        name = f"{PREFIX}-{os.getpid()}-{next(_seq)}-{role}"[:48]
        sh("ip", "netns", "add", name)
        ns = Netns(name, role)
        self.spaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns, a_dev: str, b: Netns, b_dev: str) -> None:
        ta, tb = f"ld{os.getpid() % 10000}a{next(_seq)}", f"ld{os.getpid() % 10000}b{next(_seq)}"
        sh("ip", "link", "add", ta, "type", "veth", "peer", "name", tb)
        for tmp, ns, dev in ((ta, a, a_dev), (tb, b, b_dev)):
            sh("ip", "link", "set", tmp, "netns", ns.name)
            ns.ip("link", "set", tmp, "name", dev)
            ns.ip("link", "set", dev, "up")

    def bridge(self, ns: Netns, dev: str = "br0") -> str:
        ns.ip("link", "add", dev, "type", "bridge")
        ns.ip("link", "set", dev, "up")
        return dev

    def attach(self, ns: Netns, port: str, bridge: str = "br0") -> None:
        ns.ip("link", "set", port, "master", bridge)

    def serve(
        self, ns: Netns, *, name: str, tcp: tuple[int, ...] | list[int] = (), greet: bool = False
    ) -> subprocess.Popen:
        """demo/webserver.py in ``ns``: HTTP on each port, answering with ``name``
        (``greet``: the name on accept, then echo)."""
        args = [sys.executable, str(WEBSERVER), "--name", name, *(["--greet"] if greet else [])]
        for p in tcp:
            args += ["--port", str(p)]
        proc = ns.popen(*args, text=True)
        if (proc.stdout.readline() if proc.stdout else "").strip() != "ready":
            proc.kill()
            raise RuntimeError(f"web server {name} did not start")
        return proc

    def close(self) -> None:
        for ns in self.spaces:
            for p in ns.procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGCONT)  # a frozen router too
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3
            for p in ns.procs:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in reversed(self.spaces):
            sh("ip", "netns", "del", ns.name, check=False)
        self.spaces.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """The calling thread in ``ns``'s network namespace for the body (setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(target, 0x40000000):
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        try:
            yield
        finally:
            if libc.setns(home, 0x40000000):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)
