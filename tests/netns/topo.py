"""Network-namespace topologies for live-traffic tests: namespaces, veths, bridges, servers.

Every namespace and host-side link a :class:`Topology` creates carries the run's
unique prefix and is removed when the topology closes, also when a test fails; a
sweep at start-up removes what a killed earlier run left behind. Addresses come from
198.18.0.0/15 only, and nothing is sent outside the namespaces we create.

Tests use it as a context manager (or through the ``topology`` fixture in
tests/netns/conftest.py)::

    with Topology("dr") as t:
        client, lb = t.netns("client"), t.netns("lb")
        t.veth(client, "eth0", lb, "eth0")
        client.addr("eth0", "198.18.0.2/24"); lb.addr("eth0", "198.18.0.1/24")
        srv = t.serve(lb, name="rs1", tcp=[80], udp=[53])
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

PREFIX = "lvsr"  # every namespace we create starts with this
SERVER = Path(__file__).with_name("servers.py")
_seq = itertools.count()


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    """Run a command on the host; raise with its stderr when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def sweep(prefix: str = PREFIX) -> None:
    """Delete namespaces a killed earlier run left behind (ours only: by prefix and a
    pid that no longer exists)."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix + "-"):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            sh("ip", "netns", "del", name, check=False)


@dataclass
class Netns:
    """One network namespace; ``name`` is the kernel's name, ``role`` the test's."""

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
        """Checksums in software: a veth leaves them to offload, and a frame that
        crosses XDP loses that, so the receiver would drop it."""
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
    """Owns namespaces, host-side links and processes; ``close()`` removes them all."""

    def __init__(self, tag: str = "t") -> None:
        sweep()
        self.tag = tag
        self.spaces: list[Netns] = []
        self.host_links: list[str] = []

    def netns(self, role: str) -> Netns:
        name = f"{PREFIX}-{os.getpid()}-{next(_seq)}-{role}"[:48]
        sh("ip", "netns", "add", name)
        ns = Netns(name, role)
        self.spaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a: Netns | None, a_dev: str, b: Netns | None, b_dev: str) -> None:
        """A veth pair with one end in each namespace (``None`` = the host), both up."""
        tmp_a, tmp_b = (
            f"lv{os.getpid() % 10000}a{next(_seq)}",
            f"lv{os.getpid() % 10000}b{next(_seq)}",
        )
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, ns, dev in ((tmp_a, a, a_dev), (tmp_b, b, b_dev)):
            if ns is None:
                sh("ip", "link", "set", tmp, "name", dev)
                sh("ip", "link", "set", dev, "up")
                self.host_links.append(dev)
            else:
                sh("ip", "link", "set", tmp, "netns", ns.name)
                ns.ip("link", "set", tmp, "name", dev)
                ns.ip("link", "set", dev, "up")

    def bridge(self, ns: Netns, dev: str = "br0") -> str:
        """A bridge inside ``ns`` (an L2 segment); attach ports with :meth:`attach`."""
        ns.ip("link", "add", dev, "type", "bridge")
        ns.ip("link", "set", dev, "up")
        return dev

    def attach(self, ns: Netns, port: str, bridge: str = "br0") -> None:
        ns.ip("link", "set", port, "master", bridge)

    def serve(
        self,
        ns: Netns,
        *,
        name: str,
        tcp: tuple[int, ...] | list[int] = (),
        udp: tuple[int, ...] | list[int] = (),
        bind: str = "0.0.0.0",
    ) -> subprocess.Popen:
        """Start tests/netns/servers.py in ``ns``: TCP and UDP servers that answer with
        ``name``; returns once every socket is listening."""
        args = [sys.executable, str(SERVER), "--name", name, "--bind", bind]
        for p in tcp:
            args += ["--tcp", str(p)]
        for p in udp:
            args += ["--udp", str(p)]
        proc = ns.popen(*args, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"server {name} in {ns.role} did not start: {proc.stderr.read()}")
        return proc

    def close(self) -> None:
        for ns in self.spaces:
            for p in ns.procs:
                if p.poll() is None:
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
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
    finally:
        os.close(target)
        os.close(home)


@dataclass(frozen=True)
class Frame:
    """One captured link-layer frame and its capture time (seconds)."""

    time: float
    data: bytes


def read_pcap(path: str | Path) -> list[Frame]:
    """The frames of a classic pcap file (as tcpdump -w writes), either byte order."""
    import struct

    raw = Path(path).read_bytes()
    if len(raw) < 24:
        return []
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    frames, off = [], 24
    while off + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack(order + "IIII", raw[off : off + 16])
        off += 16
        frames.append(Frame(sec + frac / (1e9 if nano else 1e6), raw[off : off + incl]))
        off += incl
    return frames


class Capture:
    """``tcpdump -i DEV -w FILE -c COUNT FILTER`` inside ``ns``, started and ready to
    capture when the constructor returns; :meth:`frames` waits for it to finish."""

    def __init__(
        self, ns: Netns, dev: str, path: str | Path, count: int, bpf_filter: str = ""
    ) -> None:
        self.path = Path(path)
        args = ["tcpdump", "-i", dev, "-U", "-n", "-w", str(self.path), "-c", str(count)]
        self.proc = ns.popen(*args, *bpf_filter.split(), text=True)
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump on {ns.role}/{dev} did not start: {line}")

    def frames(self, timeout: float = 20) -> list[Frame]:
        """Wait until COUNT frames were captured (or ``timeout``), then read them."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        return read_pcap(self.path)
