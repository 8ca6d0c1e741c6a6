"""Network namespaces: the one implementation behind the demo, the failover bench and
the tests (tests/netns/topo.py extends it with the test servers and packet capture).

Every namespace carries a prefix (``lvsd-<pid>-`` here, the tests use their own) and
everything a :class:`Topology` creates — namespaces, host-side veth ends, processes — is
removed by :meth:`Topology.close`, which the demo calls on every way out (Ctrl-C
included); a start sweeps what a killed earlier run with the same prefix left.
Addresses come from 198.18.0.0/15 only.
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


def sweep(prefix: str = PREFIX) -> None:
    """Delete our namespaces (by prefix) whose creating process is gone."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        ours = name.startswith(prefix + "-") and len(parts) > 1 and parts[1].isdigit()
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

    def route(self, *args: str) -> None:
        self.ip("route", "add", *args)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def no_tx_offload(self, dev: str) -> None:
        """Checksums in software: a frame crossing XDP loses the veth's offload."""
        self.run("ethtool", "-K", dev, "tx", "off")

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        """Start a long-running process in the namespace; stopped when the topology closes."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)
        self.procs.append(p)
        return p

    def python(self, code: str, *args: str, timeout: float = 60) -> str:
        """Run a Python snippet in the namespace and return its stdout."""
        return self.run(sys.executable, "-c", code, *args, timeout=timeout)


class Topology:
    """Namespaces, veths, bridges and processes; ``close()`` removes them all."""

    prefix = PREFIX

    def __init__(self) -> None:
        sweep(self.prefix)
        self.spaces: list[Netns] = []
        self.host_links: list[str] = []

    def netns(self, role: str) -> Netns:
        name = f"{self.prefix}-{os.getpid()}-{next(_seq)}-{role}"[:48]
        sh("ip", "netns", "add", name)
        ns = Netns(name, role)
        self.spaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns | None, a_dev: str, b: Netns | None, b_dev: str) -> None:
        """A veth pair with one end in each namespace (``None`` = the host), both up."""
        tag = f"{self.prefix[:2]}{os.getpid() % 10000}"
        ta, tb = f"{tag}a{next(_seq)}", f"{tag}b{next(_seq)}"
        sh("ip", "link", "add", ta, "type", "veth", "peer", "name", tb)
        for tmp, ns, dev in ((ta, a, a_dev), (tb, b, b_dev)):
            if ns is None:
                sh("ip", "link", "set", tmp, "name", dev)
                sh("ip", "link", "set", dev, "up")
                self.host_links.append(dev)
            else:
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
        return self.start_ready(ns, args, f"web server {name}")

    def start_ready(self, ns: Netns, args: list[str], what: str) -> subprocess.Popen:
        """Start ``args`` in ``ns`` and wait for the ``ready`` line it prints once it
        listens (every server here does)."""
        proc = ns.popen(*args, text=True)
        if (proc.stdout.readline() if proc.stdout else "").strip() != "ready":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{what} in {ns.role} did not start: {err}")
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
        for dev in self.host_links:
            sh("ip", "link", "del", dev, check=False)
        for ns in reversed(self.spaces):
            sh("ip", "netns", "del", ns.name, check=False)
        self.spaces.clear()
        self.host_links.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run the body with the calling thread in ``ns``'s network namespace (setns), and
    come back afterwards: for in-process work such as attaching an XDP program by
    interface name or opening a netlink socket there. Sockets opened inside stay in
    ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)
