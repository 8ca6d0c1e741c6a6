"""Network-namespace topologies for live-traffic tests: demo/netns.py's Topology with the
tests' own prefix and real servers (servers.py), plus packet capture (tcpdump, pcap).

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

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from demo import netns as _base
from demo.netns import CLONE_NEWNET, Netns, inside, sh

PREFIX = "lvsr"  # every namespace the tests create starts with this
SERVER = Path(__file__).with_name("servers.py")

__all__ = [
    "CLONE_NEWNET",
    "PREFIX",
    "Capture",
    "Frame",
    "Netns",
    "Topology",
    "inside",
    "read_pcap",
    "sh",
    "sweep",
]


def sweep(prefix: str = PREFIX) -> None:
    """Delete namespaces a killed earlier test run left behind (ours only)."""
    _base.sweep(prefix)


class Topology(_base.Topology):
    """demo.netns.Topology with the tests' prefix and their real servers
    (tests/netns/servers.py: TCP greet-then-echo and UDP name answers)."""

    prefix = PREFIX

    def __init__(self, tag: str = "t") -> None:
        super().__init__()
        self.tag = tag

    def serve(  # type: ignore[override]
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
        return self.start_ready(ns, args, f"server {name}")


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


def ask(client: subprocess.Popen, **command: object) -> object:
    """One request to a JSON-line client process (a test's CLIENT script: one JSON
    command per stdin line, one ``{"ok": ...}`` or ``{"error": ...}`` line back), so a
    test can hold connections open across steps; an error answer fails the test."""
    assert client.stdin and client.stdout
    client.stdin.write(json.dumps(command) + "\n")
    client.stdin.flush()
    answer = json.loads(client.stdout.readline())
    assert "error" not in answer, answer["error"]
    return answer["ok"]


CLIENT = Path(__file__).with_name("client.py")


def start_client(ns: Netns) -> subprocess.Popen:
    """The tests' JSON-line client (tests/netns/client.py) running in ``ns``; talk to it
    with :func:`ask`. It stops when the topology closes."""
    return ns.popen(sys.executable, str(CLIENT), stdin=subprocess.PIPE, text=True)
