"""``lvs-router run --dataplane xdp --nat-interface eth1`` live: NAT virtuals served by
the daemon, with the reply path on the private interface.

    client (eth0) ---- (eth0) director (eth1) ---- bridge ---- rs1, rs2

The director's eth0 holds its address and the VIP; eth1 holds the nat_router address,
which the real servers use as their default route. The daemon runs in the director's
namespace as its own process: it loads the program, attaches the requests' path to
eth0 and the replies' path to eth1, finds the real servers' MACs on the private side
in the neighbour table, checks them (from the director's own address, which the reply
path leaves to the kernel) and keeps the maps in line. IP forwarding stays off, so a
reply that reaches the client went through our program. The VIP's ports map to the
real servers' (80 -> 8080/tcp, 53 -> 5353/udp). Frames redirected into a veth arrive
only when the peer runs an XDP program: the client's eth0 and the bridge's director
port run an XDP_PASS one; senders turn checksum offload off."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bcc import BPF

from dataplane.xdp import attach_xdp
from runtime.control import ControlError, request
from tests.netns.topo import Netns, Topology, ask, inside, start_client
from tests.netns.xdp_lab import PASS_PROGRAM

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
VIP = "198.18.32.100"
CLIENT_ADDR = "198.18.32.2"
DIRECTOR = "198.18.32.1"
NAT_ROUTER = "198.18.33.254"
REALS = {"rs1": ("198.18.33.11", 1), "rs2": ("198.18.33.12", 2)}

DEADLINE_S = 30.0


def _servers(port: int) -> str:
    return "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n        port = {port}\n"
        f"        weight = {w}\n    }}\n"
        for n, (a, w) in REALS.items()
    )


CONFIG = f"""network = nat
nat_router = {NAT_ROUTER} eth1:1
virtual web {{
    active = 1
    address = {VIP} eth0:1
    port = 80
    scheduler = wrr
    timeout = 1
    reentry = 2
    expect = "rs"
{_servers(8080)}}}
virtual dns {{
    active = 1
    address = {VIP} eth0:1
    port = 53
    protocol = udp
    scheduler = wrr
    timeout = 1
    reentry = 2
    send = "q"
    expect = "rs"
{_servers(5353)}}}
"""


@dataclass
class Lab:
    topo: Topology
    lb: Netns
    reals: dict[str, Netns]
    client: subprocess.Popen
    work: Path
    servers: dict[str, subprocess.Popen] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.work / "control.sock")

    @property
    def pin_dir(self) -> str:
        return f"/sys/fs/bpf/lvsr-daemon-nat-test-{os.getpid()}"

    def serve(self, name: str) -> None:
        self.servers[name] = self.topo.serve(self.reals[name], name=name, tcp=[8080], udp=[5353])

    def stop_serving(self, name: str) -> None:
        p = self.servers.pop(name)
        p.send_signal(signal.SIGTERM)
        p.wait(10)

    def start(self) -> None:
        log = open(self.work / "daemon.log", "w")  # noqa: SIM115 - the process owns it
        # nsenter, not `ip netns exec` (which mounts a fresh /sys and hides bpffs)
        self.daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.lb.name}",
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
                "--nat-interface",
                "eth1",
                "--pin-dir",
                self.pin_dir,
                "--socket",
                self.socket,
                "--metrics",
                "off",
                "--on-stop",
                "remove",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        self.lb.procs.append(self.daemon)

    def log(self) -> str:
        return (self.work / "daemon.log").read_text()

    def wait(self, predicate: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        last: dict | str = "no answer"
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.log()}")
            try:
                answer = request(self.socket, "status", timeout=10)
                if answer["ok"]:
                    last = answer["status"]
                    if predicate(last):
                        return last
            except (ControlError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting until {what}; last status {last}\n{self.log()}")

    def wait_servers(self, **states: str) -> None:
        """Both virtuals: each named server in that state, and in the dataplane (up)
        or out of it (down)."""

        def ok(s: dict) -> bool:
            for vs in s["virtuals"]:
                got = {
                    rs["name"]: rs["state"] if rs["in_dataplane"] == (rs["state"] == "up") else "?"
                    for rs in vs["servers"]
                }
                if any(got.get(k) != v for k, v in states.items()):
                    return False
            return True

        self.wait(ok, f"web and dns: {states}")

    def names(self, n: int = 40) -> list[str]:
        return ask(self.client, op="names", src=CLIENT_ADDR, dst=VIP, port=80, n=n)

    def udp(self, n: int = 12) -> list[str]:
        return ask(self.client, op="udp", src=CLIENT_ADDR, dst=VIP, port=53, n=n)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    (tmp_path / "lvs.cf").write_text(CONFIG)
    passer = BPF(text=PASS_PROGRAM)
    pass_fn = passer.load_func(b"xdp_pass", BPF.XDP)
    with Topology("daemon-nat") as t:
        client, lb, sw = t.netns("client"), t.netns("director"), t.netns("private")
        t.veth(client, "eth0", lb, "eth0")
        t.bridge(sw)
        t.veth(lb, "eth1", sw, "director")
        t.attach(sw, "director")
        client.addr("eth0", f"{CLIENT_ADDR}/24")
        client.no_tx_offload("eth0")
        lb.addr("eth0", f"{DIRECTOR}/24")
        lb.addr("eth0", f"{VIP}/32")
        lb.addr("eth1", f"{NAT_ROUTER}/24")  # nat_router: the real servers' gateway
        lb.sysctl("net.ipv4.ip_forward", 0)  # replies reach the client through XDP only
        reals = {}
        for name, (addr, _w) in REALS.items():
            rs = reals[name] = t.netns(name)
            t.veth(rs, "eth0", sw, name)
            t.attach(sw, name)
            rs.addr("eth0", f"{addr}/24")
            rs.route("default", "via", NAT_ROUTER)
            rs.no_tx_offload("eth0")  # their replies cross XDP
        with inside(client):  # redirected to the director's eth0: arrives here
            assert attach_xdp(pass_fn, "eth0") == "native"
        with inside(sw):  # redirected to the director's eth1: arrives here
            assert attach_xdp(pass_fn, "director") == "native"
        lab = Lab(t, lb, reals, start_client(client), tmp_path)
        for name in REALS:
            lab.serve(name)
        try:
            yield lab
        finally:
            if lab.daemon is not None and lab.daemon.poll() is None:
                lab.daemon.kill()
                lab.daemon.wait()
            shutil.rmtree(lab.pin_dir, ignore_errors=True)
    passer.cleanup()


def test_nat_virtuals_through_the_daemon_with_port_mapping_and_health_checks(lab: Lab) -> None:
    lab.start()
    lab.wait_servers(rs1="up", rs2="up")
    log = lab.log()
    assert "XDP NAT reply path attached to eth1 (native)" in log, log
    # many TCP connections to VIP:80, answered by the servers on 8080
    assert set(lab.names(60)) == {"rs1", "rs2"}
    # UDP to VIP:53, answered from 5353 and translated back
    assert set(lab.udp(16)) == {"rs1", "rs2"}
    # rs2 stops serving: its checks fail and it is taken out of both virtuals
    lab.stop_serving("rs2")
    lab.wait_servers(rs1="up", rs2="down")
    assert set(lab.names(30)) == {"rs1"}
    assert set(lab.udp(12)) == {"rs1"}
    # back: in again after reentry
    lab.serve("rs2")
    lab.wait_servers(rs1="up", rs2="up")
    assert set(lab.names(40)) == {"rs1", "rs2"}
    # SIGTERM with --on-stop remove: both programs detached, our services gone
    assert lab.daemon is not None
    lab.daemon.send_signal(signal.SIGTERM)
    assert lab.daemon.wait(30) == 0, lab.log()
    links = lab.lb.ip("link", "show")
    assert "prog/xdp" not in links, links
