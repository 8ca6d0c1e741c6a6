"""What the live daemon tests share: the daemon run as its own process in the
director's namespace and driven as an operator would, and the NAT segment and configs
that the NAT tests (loader and daemon) both build.

:class:`DaemonLab` starts ``python -m runtime.daemon_cli run --dataplane xdp`` inside
the director's namespace (``nsenter``, not ``ip netns exec``: that one mounts a fresh
/sys, which would hide the host's bpffs and with it the pinned maps a restarted
daemon adopts), with its own pin directory, control socket and log; it answers
status through the control socket, waits for states with a generous deadline
(never asserting a duration), and starts and stops the real servers' TCP/UDP
services (tests/netns/servers.py) and the client's requests (tests/netns/client.py).

:func:`nat_segment` and :func:`nat_config` build the NAT lab::

    client (eth0) ---- (eth0) director (eth1) ---- bridge ---- rs1, rs2

the director's eth0 with its address and the VIP, eth1 with the nat_router address
(the real servers' default route), IP forwarding off (a reply that reaches the
client went through our program), and the XDP_PASS programs that frames redirected
into a veth need on the receiving side (the client's eth0, the bridge's director
port).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bcc import BPF

from dataplane.xdp import attach_xdp
from runtime.control import ControlError, request
from tests.netns.topo import Netns, Topology, ask, inside
from tests.netns.xdp_lab import PASS_PROGRAM, link_mac

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0

CHECK_SCRIPT = """#!/bin/sh
# send_program for the tests: prints what the state file of real server $1 says
cat "{dir}/$1" 2>/dev/null || echo missing
"""


def stop_process(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(10)


def server_states(status: dict, virtual: str) -> dict[str, str]:
    """Each server's state in ``virtual``; "?" while the dataplane has not caught up
    with a verdict yet (an up server not in it, a down one still in it)."""
    for vs in status["virtuals"]:
        if vs["name"] == virtual:
            return {
                rs["name"]: (
                    "?"
                    if (rs["state"] == "up") != rs["in_dataplane"] and rs["state"] in ("up", "down")
                    else rs["state"]
                )
                for rs in vs["servers"]
            }
    return {}


def write_check_script(work: Path) -> Path:
    """``work/check.sh SERVER``: prints the file ``work/state/SERVER`` (a test's
    ``send_program``, flipped with :meth:`DaemonLab.set_check`)."""
    (work / "state").mkdir(exist_ok=True)
    script = work / "check.sh"
    script.write_text(CHECK_SCRIPT.format(dir=work / "state"))
    script.chmod(0o755)
    return script


@dataclass
class DaemonLab:
    """A director namespace running the daemon, its real servers and a client.

    ``addresses``: each real server's address (name -> text), for ``set_check``;
    ``vip`` and ``src``: where the client's requests go and come from by default;
    ``bind``: what the real servers' services bind (``::`` serves IPv4 and IPv6);
    ``options``: ``run`` options every start passes (``--nat-interface eth1``)."""

    topo: Topology
    lb: Netns
    client_ns: Netns
    reals: dict[str, Netns]
    client: subprocess.Popen
    work: Path
    tag: str = "daemon-test"
    addresses: dict[str, str] = field(default_factory=dict)
    vip: str = ""
    src: str | None = None
    bind: str = "0.0.0.0"
    options: tuple[str, ...] = ()
    tcp: dict[str, subprocess.Popen] = field(default_factory=dict)
    udp: dict[str, subprocess.Popen] = field(default_factory=dict)
    daemon: subprocess.Popen | None = None
    n: int = 0

    # ---------------------------------------------------------------- client

    def ask(self, **command: object) -> object:
        return ask(self.client, **command)

    def names(
        self, port: int = 80, n: int = 20, dst: str | None = None, src: str | None = None
    ) -> set[str]:
        """The servers that answer ``n`` new TCP connections ("error" for a failed one:
        a server leaving shows as one)."""
        dst, src = dst or self.vip, src or self.src
        got = self.ask(op="names", src=src, dst=dst, port=port, n=n, timeout=2, tolerant=True)
        return set(got)

    def udp_names(
        self, port: int = 53, n: int = 10, dst: str | None = None, src: str | None = None
    ) -> set[str]:
        # 3 s per answer: servers.py can be that slow on a loaded machine, and a lost
        # answer would read as a server the dataplane does not send to
        dst, src = dst or self.vip, src or self.src
        got = self.ask(op="udp", src=src, dst=dst, port=port, n=n, timeout=3, tolerant=True)
        return set(got)

    # ---------------------------------------------------------------- real servers

    def start_tcp(self, name: str, ports: Sequence[int] = (80, 8080)) -> None:
        self.tcp[name] = self.topo.serve(self.reals[name], name=name, tcp=ports, bind=self.bind)

    def stop_tcp(self, name: str) -> None:
        stop_process(self.tcp.pop(name))

    def start_udp(self, name: str, ports: Sequence[int] = (53,)) -> None:
        self.udp[name] = self.topo.serve(self.reals[name], name=name, udp=ports, bind=self.bind)

    def stop_udp(self, name: str) -> None:
        stop_process(self.udp.pop(name))

    def set_check(self, name: str, answer: str) -> None:
        """What ``check.sh`` (:func:`write_check_script`) prints for server ``name``."""
        (self.work / "state" / self.addresses[name]).write_text(answer + "\n")

    # ---------------------------------------------------------------- daemon

    @property
    def config(self) -> Path:
        return self.work / "lvs.cf"

    @property
    def socket(self) -> str:
        return str(self.work / "control.sock")

    @property
    def pin_dir(self) -> str:
        return f"/sys/fs/bpf/lvsr-{self.tag}-{os.getpid()}"

    def write_config(self, text: str, network: str | None = "direct") -> None:
        self.config.write_text((f"network = {network}\n" if network else "") + text)

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start the daemon; returns once its control socket answers."""
        self.n += 1
        log = open(self.work / f"daemon-{self.n}.log", "w")  # noqa: SIM115 - the process owns it
        self.daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.lb.name}",
                sys.executable,
                "-m",
                "runtime.daemon_cli",
                "run",
                "-c",
                str(self.config),
                "--dataplane",
                "xdp",
                "--interface",
                "eth0",
                "--pin-dir",
                self.pin_dir,
                "--socket",
                self.socket,
                "--metrics",
                "off",
                *self.options,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env={**os.environ, **(env or {})},
        )
        self.lb.procs.append(self.daemon)
        self.wait(lambda s: True, what="the control socket answers")
        return self.daemon

    def log(self) -> str:
        return (self.work / f"daemon-{self.n}.log").read_text()

    def status(self) -> dict:
        answer = request(self.socket, "status", timeout=10)
        if not answer["ok"]:  # starting
            raise ControlError(answer["error"])
        return answer["status"]

    def wait(self, predicate: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        last: dict | str = "no answer"
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.log()}")
            try:
                last = self.status()
                if predicate(last):
                    return last
            except (ControlError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting until {what}; last status {last}\n{self.log()}")

    def wait_servers(self, virtual: str | None = None, /, **states: str) -> dict:
        """Wait until each named server of ``virtual`` (None: of every virtual) is in
        that state, with the dataplane caught up (see :func:`server_states`)."""

        def ok(s: dict) -> bool:
            names = [virtual] if virtual else [vs["name"] for vs in s["virtuals"]]
            for name in names:
                got = server_states(s, name)
                if any(got.get(k) != v for k, v in states.items()):
                    return False
            return True

        return self.wait(ok, f"{virtual or 'every virtual'}: {states}")

    def until(self, condition: Callable[[], bool], what: str, every_s: float = 0.2) -> None:
        """Poll ``condition`` until it holds (failing with the daemon's log after
        ``DEADLINE_S``)."""
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting until {what}\n{self.log()}"
            time.sleep(every_s)

    def replace_real(self, name: str, virtual: str) -> None:
        """Real server ``name`` becomes another machine at the same address (eth0 gets
        another MAC); returns once the daemon has learned the new MAC, the server is up
        in ``virtual`` again, and new connections reach every server of ``virtual``."""
        old = link_mac(self.reals[name]).hex(":")
        new_mac = next(m for m in ("02:00:5e:00:53:11", "02:00:5e:00:53:12") if m != old)
        self.reals[name].ip("link", "set", "eth0", "address", new_mac)
        learned = f"MAC of {self.addresses[name]} is now {new_mac}"
        self.until(lambda: learned in self.log(), learned)
        self.wait_servers(virtual, **{name: "up"})
        every = set(server_states(self.status(), virtual))  # its share reaches the new MAC
        self.until(lambda: self.names(n=30) == every, f"{every} answer", every_s=0.5)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(30)
        self.daemon = None
        return code

    def reload(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runtime.daemon_cli", "reload", "--socket", self.socket],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(ROOT),
        )

    def close(self) -> None:
        """Kill a daemon still running and remove our pin directory."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.daemon = None
        shutil.rmtree(self.pin_dir, ignore_errors=True)

    def reset(self) -> None:
        """Between tests of one lab: the daemon stopped, UDP services stopped, the
        pinned maps gone (each test starts from nothing to adopt)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.stop()
        for name in list(self.udp):
            self.stop_udp(name)
        shutil.rmtree(self.pin_dir, ignore_errors=True)


# --------------------------------------------------------------------------- NAT


def nat_virtual(
    name: str,
    *,
    vip: str,
    port: int,
    reals: Mapping[str, tuple[str, int]],
    real_port: int,
    protocol: str = "tcp",
    lines: Sequence[str] = (),
) -> str:
    """A ``network = nat`` virtual (wrr) whose servers (name -> (address, weight))
    listen on ``real_port``; ``lines``: more of its settings (checks, timing)."""
    settings = [
        "active = 1",
        f"address = {vip} {_device('eth0', vip)}",
        f"port = {port}",
        f"protocol = {protocol}",
        "scheduler = wrr",
        *lines,
    ]
    servers = "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n"
        f"        port = {real_port}\n        weight = {w}\n    }}\n"
        for n, (a, w) in reals.items()
    )
    return f"virtual {name} {{\n" + "".join(f"    {s}\n" for s in settings) + servers + "}\n"


def nat_config(nat_router: str, *virtuals: str) -> str:
    """lvs.cf for the NAT lab: the nat_router address on the director's eth1."""
    return f"network = nat\nnat_router = {nat_router} {_device('eth1', nat_router)}\n" + "".join(
        virtuals
    )


def _device(dev: str, address: str) -> str:
    """piranha's ``eth0:1`` alias for an IPv4 address; IPv6 addresses have none."""
    return dev if ":" in address else f"{dev}:1"


def _addr(ns: Netns, dev: str, address: str, host: bool = False) -> None:
    """address/24 (or /32 with host), IPv6 /64 (or /128), usable at once (no DAD)."""
    if ":" in address:
        ns.ip("-6", "addr", "add", f"{address}/{128 if host else 64}", "dev", dev, "nodad")
    else:
        ns.addr(dev, f"{address}/{32 if host else 24}")


@dataclass
class NatSegment:
    client: Netns
    director: Netns
    private: Netns  # the bridge between the director's eth1 and the real servers
    reals: dict[str, Netns]


@contextmanager
def nat_segment(
    t: Topology,
    *,
    client: str,
    director: str,
    vip: str,
    nat_router: str,
    reals: Mapping[str, str],
) -> Iterator[NatSegment]:
    """The NAT lab above inside ``t``, IPv4 or IPv6 by the addresses given; ``reals``
    maps each server's name to its address. Servers are not started."""
    passer = BPF(text=PASS_PROGRAM)
    try:
        pass_fn = passer.load_func(b"xdp_pass", BPF.XDP)
        client_ns, lb, sw = t.netns("client"), t.netns("director"), t.netns("private")
        t.veth(client_ns, "eth0", lb, "eth0")
        t.bridge(sw)
        t.veth(lb, "eth1", sw, "director")
        t.attach(sw, "director")
        _addr(client_ns, "eth0", client)
        client_ns.no_tx_offload("eth0")
        _addr(lb, "eth0", director)
        _addr(lb, "eth0", vip, host=True)
        _addr(lb, "eth1", nat_router)  # nat_router: the real servers' gateway
        # replies reach the client through XDP only
        lb.sysctl("net.ipv4.ip_forward", 0)
        lb.sysctl("net.ipv6.conf.all.forwarding", 0)
        family = "-6" if ":" in nat_router else "-4"
        spaces = {}
        for name, addr in reals.items():
            rs = spaces[name] = t.netns(name)
            t.veth(rs, "eth0", sw, name)
            t.attach(sw, name)
            _addr(rs, "eth0", addr)
            rs.ip(family, "route", "add", "default", "via", nat_router)
            rs.no_tx_offload("eth0")  # their replies cross XDP
        with inside(client_ns):  # redirected to the director's eth0: arrives here
            assert attach_xdp(pass_fn, "eth0") == "native"
        with inside(sw):  # redirected to the director's eth1: arrives here
            assert attach_xdp(pass_fn, "director") == "native"
        yield NatSegment(client_ns, lb, sw, spaces)
    finally:
        passer.cleanup()
