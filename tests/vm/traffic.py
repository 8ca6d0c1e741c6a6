"""Real connections through IPVS inside the VM: a client, the director, two real servers.

Network namespaces (198.18.0.0/15 only)::

    client 198.18.1.2 ──veth── 198.18.1.1 director (VIPs 198.18.1.100, .101)
                               198.19.1.1 ──veth── rs1 198.19.1.11
                               198.19.2.1 ──veth── rs2 198.19.2.11

Each real server runs a small TCP server (port 80) and UDP server (port 53) that answer
with their name. The director's table comes from lvs.cf text through
``desired_state``/``converge``, with ``wrr`` and weights 3:1, so the count of answers
per server is exact: 30 and 10 out of 40 new connections. NAT: TCP and UDP on
198.18.1.100; direct routing: TCP on 198.18.1.101, which the real servers hold on
their loopback and answer from directly (their default route is the director, which
only routes the replies back, with ``accept_local`` on its real-server links since their
source, the VIP, is one of its own addresses).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

SERVER = r"""
import socket, sys, threading
name, ready = sys.argv[1], sys.argv[2]
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80)); t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(name.encode(), peer)
threading.Thread(target=udp, daemon=True).start()
open(ready, "w").write("up")
while True:
    c, _ = t.accept()
    c.sendall(name.encode()); c.close()
"""

CLIENT = r"""
import json, socket, sys
vip, proto, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# source ports of our own, distinct per VIP (a TIME_WAIT from an earlier case must
# not block a bind) and below the ephemeral range
base = 2000 + int(vip.rsplit(".", 1)[1]) * 100
counts = {}
for i in range(n):
    if proto == "tcp":
        # a distinct source port per connection (see UDP below)
        s = socket.create_connection((vip, 80), timeout=10, source_address=("0.0.0.0", base + i))
        who = s.recv(100).decode(); s.close()
    else:
        # a distinct source port per request: an ephemeral port the kernel hands out
        # again would match the earlier IPVS UDP entry and go to the same real server
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10)
        s.bind(("0.0.0.0", base + i))
        s.sendto(b"who", (vip, 53)); who = s.recv(100).decode(); s.close()
    counts[who] = counts.get(who, 0) + 1
print(json.dumps(counts))
"""

HEAD = "primary = 198.18.1.1\nnetwork = {net}\nnat_router = 198.19.1.1 eth1:1\n"
SERVERS = """ server rs1 {
  address = 198.19.1.11
  active = 1
  weight = 3
 }
 server rs2 {
  address = 198.19.2.11
  active = 1
  weight = 1
 }
"""


def virtual(name: str, vip: str, extra: str = "") -> str:
    return (
        f"virtual {name} {{\n active = 1\n address = {vip} eth0:1\n port = 80\n"
        f" scheduler = wrr\n{extra}{SERVERS}}}\n"
    )


NAT = (
    HEAD.format(net="nat")
    + virtual("web", "198.18.1.100")
    + virtual("dns", "198.18.1.100", " protocol = udp\n port = 53\n").replace(" port = 80\n", "", 1)
)
DR = HEAD.format(net="direct") + virtual("web", "198.18.1.101")


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def ns(name: str, *cmd: str) -> str:
    return run("ip", "netns", "exec", name, *cmd)


class Topology:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def up(self) -> str:
        run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "netns", "add", "client")
        run("ip", "link", "add", "c1", "type", "veth", "peer", "name", "c0", "netns", "client")
        run("ip", "addr", "add", "198.18.1.1/24", "dev", "c1")
        for vip in ("198.18.1.100", "198.18.1.101"):
            run("ip", "addr", "add", f"{vip}/32", "dev", "c1")
        run("ip", "link", "set", "c1", "up")
        ns("client", "ip", "addr", "add", "198.18.1.2/24", "dev", "c0")
        ns("client", "ip", "link", "set", "c0", "up")
        ns("client", "ip", "link", "set", "lo", "up")
        ns("client", "ip", "route", "add", "default", "via", "198.18.1.1")
        for i in (1, 2):
            rs, here, there = f"rs{i}", f"r{i}a", f"r{i}b"
            run("ip", "netns", "add", rs)
            run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", rs)
            run("ip", "addr", "add", f"198.19.{i}.1/24", "dev", here)
            run("ip", "link", "set", here, "up")
            # direct-routing replies come back through the director with the VIP, one of
            # its own addresses, as source: forwarding them is "martian" unless allowed
            run("sysctl", "-qw", f"net.ipv4.conf.{here}.accept_local=1")
            ns(rs, "ip", "addr", "add", f"198.19.{i}.11/24", "dev", there)
            ns(rs, "ip", "link", "set", there, "up")
            ns(rs, "ip", "link", "set", "lo", "up")
            # direct routing: the real server holds the VIP itself
            ns(rs, "ip", "addr", "add", "198.18.1.101/32", "dev", "lo")
            ns(rs, "ip", "route", "add", "default", "via", f"198.19.{i}.1")
            ready = self.workdir / f"{rs}.ready"
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", rs, sys.executable, "-c", SERVER, rs, str(ready)]
                )
            )
        deadline = time.monotonic() + 120
        while not all((self.workdir / f"rs{i}.ready").exists() for i in (1, 2)):
            if time.monotonic() > deadline:
                raise RuntimeError("the real servers did not start in 120 s")
            time.sleep(0.2)
        return "client, director, rs1, rs2 up"

    def client(self, vip: str, proto: str, n: int = 40) -> dict[str, int]:
        return json.loads(ns("client", sys.executable, "-c", CLIENT, vip, proto, str(n)))

    def down(self) -> None:
        for p in self.procs:
            p.kill()


def check(topo: Topology, config, cases: list[tuple[str, str]]) -> str:
    """Apply the config (a compiled model) and count which server answers each connection."""
    from dataplane.ipvs import IPVSKernel, converge
    from dataplane.reconcile import desired_state

    with IPVSKernel() as k:
        converge(k, desired_state(config))
    out = []
    for vip, proto in cases:
        counts = topo.client(vip, proto)
        assert counts == {"rs1": 30, "rs2": 10}, f"{proto} to {vip}: {counts}"
        out.append(f"{proto} {vip}: {counts}")
    return "; ".join(out)


__all__ = ["DR", "NAT", "Topology", "check"]
