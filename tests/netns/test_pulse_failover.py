"""Two pulse processes on one L2 segment (a bridge) with a client: the VIP moves when
the active router is killed, frozen, stopped or loses its link, and the pair settles
the way piranha-spec.md §3.5 says (no failback; split brain heals to the master).

The client's neighbour table shows who answers for the VIP: the gratuitous ARPs of
the new active router (§6.2) must have moved it. Waits are bounded, never timed.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import test_pulse_wire
from tests.netns.test_pulse_wire import PulseProc, config, wait_until
from tests.netns.topo import Netns, Topology

pytestmark = pytest.mark.netns

NET = "198.18.61"
VIP = f"{NET}.10"
GARP = ("--garp-count", "5", "--garp-interval", "0.3")


@dataclass
class Segment:
    a: Netns  # primary, .2
    b: Netns  # backup, .3
    client: Netns  # .100


def segment(t: Topology) -> Segment:
    sw = t.netns("sw")
    t.bridge(sw)
    s = Segment(t.netns("ra"), t.netns("rb"), t.netns("client"))
    for ns, port, host in ((s.a, "pa", 2), (s.b, "pb", 3), (s.client, "pc", 100)):
        t.veth(ns, "eth0", sw, port)
        t.attach(sw, port)
        ns.addr("eth0", f"{NET}.{host}/24")
    t.serve(s.a, name="ra", udp=[53])
    t.serve(s.b, name="rb", udp=[53])
    return s


def has_vip(ns: Netns) -> bool:
    return test_pulse_wire.has_vip(ns, VIP)


def mac(ns: Netns) -> str:
    return ns.run("cat", "/sys/class/net/eth0/address").strip()


def client_sees(s: Segment, router: Netns) -> bool:
    """The client's neighbour entry for the VIP names ``router``'s MAC."""
    return f"lladdr {mac(router)}" in s.client.ip("neigh", "show", VIP, check=False)


ASK = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
for _ in range(3):  # a datagram or its answer can be late on a loaded machine
    try:
        u.sendto(b"x", (sys.argv[1], 53))
        print(u.recv(100).decode())
        break
    except OSError:
        pass
else:
    print("-")
"""


def answers(s: Segment) -> str:
    """Which router answers the client on the VIP (its UDP server's name), or "-"
    when three tries of a second each got nothing."""
    return s.client.python(ASK, VIP).strip()


def ping(s: Segment) -> bool:
    return answers(s) != "-"


def holds(ns: Netns, seconds: float, expect: bool) -> None:
    """``ns`` has (or has not) the VIP throughout ``seconds`` (sampled)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert has_vip(ns) is expect, f"{ns.role}: VIP {'lost' if expect else 'taken'}"
        time.sleep(0.1)


def start_pair(t: Topology, tmp_path: Path, **cf) -> tuple[Segment, PulseProc, PulseProc]:
    """A started, then B; A (the master) ends up active, B standing by."""
    s = segment(t)
    path = config(tmp_path / "lvs.cf", pub=NET, **cf)
    a = PulseProc(s.a, path, *GARP)
    assert a.expect("ready") == "ready master"
    b = PulseProc(s.b, path, *GARP)
    assert b.expect("ready") == "ready backup"
    a.expect("active")
    assert wait_until(lambda: has_vip(s.a))
    return s, a, b


def test_sigkill_of_the_active_router_moves_the_vip_and_there_is_no_failback(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.4: the backup declares a SIGKILLed primary dead after deadtime and takes
    the VIP, announcing it (§6.2) so the client's ARP entry moves; §3.5 "Failback":
    the restarted primary stays standby (and drops the VIP it was killed holding)."""
    s, a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=2.0)
    holds(s.b, 2.0, expect=False)
    assert answers(s) == "ra" and client_sees(s, s.a)
    a.kill()
    b.expect("active")
    assert wait_until(lambda: has_vip(s.b))
    assert wait_until(lambda: client_sees(s, s.b))
    path = tmp_path / "lvs.cf"
    a2 = PulseProc(s.a, path, *GARP)
    assert a2.expect("ready") == "ready master"
    assert wait_until(lambda: not has_vip(s.a))  # the stale VIP is gone
    holds(s.a, 2.0, expect=False)
    assert has_vip(s.b) and answers(s) == "rb" and client_sees(s, s.b)


def test_sigterm_hands_over_at_once(topology: Topology, tmp_path: Path) -> None:
    """§3.6 SIGTERM gives the VIP up; the clean-shutdown STOPPED heartbeat meets §3.5
    row 5 on the backup, which takes over without waiting for the dead timer (60 s
    here). Start-up shows "if neither is running, master starts": A activated on
    B's STOPPED and B never took the VIP."""
    s, a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=60)
    holds(s.b, 1.0, expect=False)
    assert answers(s) == "ra" and client_sees(s, s.a)
    a.proc.send_signal(signal.SIGTERM)
    a.expect("inactive")
    b.expect("active", timeout=20)
    assert wait_until(lambda: has_vip(s.b), timeout=10)
    assert wait_until(lambda: not has_vip(s.a), timeout=10)
    assert wait_until(lambda: client_sees(s, s.b))
    assert answers(s) == "rb"
    assert b.drain().count("active") == 1 and "inactive" not in b.seen


def test_frozen_router_then_split_brain_heals_to_the_master(
    topology: Topology, tmp_path: Path
) -> None:
    """SIGSTOP freezes the active primary: the backup takes over after deadtime. On
    SIGCONT both are active; "if both are running, backup stops and master rearps"
    (§3.5 rows 1 and 2): the VIP ends on the primary and the client follows it."""
    s, a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=2.0)
    assert answers(s) == "ra"  # the client has an ARP entry for the VIP: A's MAC
    a.proc.send_signal(signal.SIGSTOP)
    try:
        b.expect("active")
        assert wait_until(lambda: has_vip(s.b))
        assert wait_until(lambda: client_sees(s, s.b))
    finally:
        a.proc.send_signal(signal.SIGCONT)
    b.expect("inactive")
    assert wait_until(lambda: not has_vip(s.b))
    assert has_vip(s.a)
    assert wait_until(lambda: client_sees(s, s.a))
    holds(s.b, 1.5, expect=False)
    assert answers(s) == "ra"


def test_monitor_links_link_down_gives_up_and_stays_down_after_restore(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.7: with monitor_links, the active primary whose NIC loses its link gives
    the VIP up ("Local NIC link failure: Pulse disabled"); the backup, hearing
    nothing, takes over; when the link returns the primary sees RUNNING and stays
    standby (§3.5 row 3)."""
    s, a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=2.0, monitor_links=1)
    holds(s.b, 1.0, expect=False)
    assert answers(s) == "ra"
    s.a.ip("link", "set", "eth0", "down")
    a.expect("inactive")
    assert wait_until(lambda: not has_vip(s.a))
    b.expect("active")
    assert wait_until(lambda: has_vip(s.b))
    s.a.ip("link", "set", "eth0", "up")
    holds(s.a, 2.0, expect=False)
    assert has_vip(s.b)
    assert wait_until(lambda: answers(s) == "rb" and client_sees(s, s.b))


def test_private_heartbeat_path_keeps_the_pair_together(topology: Topology, tmp_path: Path) -> None:
    """§3.3 (0.8.x): with primary_private/backup_private the heartbeats go over both
    pairs, and either one is enough: cutting the public segment at the backup does
    not make it take over while the private link carries heartbeats; cutting both
    does."""
    s = segment(topology)
    topology.veth(s.a, "eth1", s.b, "eth1")
    s.a.addr("eth1", "198.19.61.2/24")
    s.b.addr("eth1", "198.19.61.3/24")
    path = config(
        tmp_path / "lvs.cf", pub=NET, priv="198.19.61", private=True, keepalive=0.2, deadtime=2.0
    )
    a = PulseProc(s.a, path, *GARP)
    a.expect("ready")
    b = PulseProc(s.b, path, *GARP)
    b.expect("ready")
    a.expect("active")
    # cut the public segment at the backup's bridge port: only the private link is left
    sw = next(ns for ns in topology.spaces if ns.role == "sw")
    sw.ip("link", "set", "pb", "down")
    holds(s.b, 3.0, expect=False)
    assert has_vip(s.a)
    # and the private link too: now the backup hears nothing and takes over
    s.b.ip("link", "set", "eth1", "down")
    b.expect("active")
    assert wait_until(lambda: has_vip(s.b))


def test_both_links_cut_then_restored_heals_to_the_master(
    topology: Topology, tmp_path: Path
) -> None:
    """Split brain by partition: with the segment cut on both routers' ports each
    hears nothing and the backup activates too (§3.4); restored, "if both are
    running, backup stops and master rearps" (§3.5) — the VIP ends on the primary."""
    s, _a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=2.0)
    sw = next(ns for ns in topology.spaces if ns.role == "sw")
    for port in ("pa", "pb"):
        sw.ip("link", "set", port, "down")
    b.expect("active")
    assert wait_until(lambda: has_vip(s.b))
    assert has_vip(s.a)  # both hold it now
    for port in ("pa", "pb"):
        sw.ip("link", "set", port, "up")
    b.expect("inactive")
    assert wait_until(lambda: not has_vip(s.b))
    assert has_vip(s.a)
    assert wait_until(lambda: answers(s) == "ra" and client_sees(s, s.a))
    holds(s.b, 1.0, expect=False)


def test_heartbeat_path_cut_one_way(topology: Topology, tmp_path: Path) -> None:
    """The primary's heartbeats dropped on their way out (a blackhole route to the
    backup on the primary), the backup's still arriving: the backup hears nothing
    and activates (§3.4); the primary, active, hears RUNNING and re-ARPs every time
    (§3.5 row 2) — both hold the VIP while the cut lasts, as the table implies. Once
    the path is whole the backup hears RUNNING and yields (row 1)."""
    s, a, b = start_pair(topology, tmp_path, keepalive=0.2, deadtime=2.0)
    s.a.ip("route", "add", "blackhole", f"{NET}.3/32")
    b.expect("active")
    assert wait_until(lambda: has_vip(s.b))
    holds(s.a, 1.0, expect=True)
    s.a.ip("route", "del", "blackhole", f"{NET}.3/32")
    b.expect("inactive")
    assert wait_until(lambda: not has_vip(s.b))
    assert has_vip(s.a)
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(10)
    assert a.proc.stderr is not None
    assert "partner active: resending arps" in a.proc.stderr.read()


def test_restarted_single_router_keeps_the_vips_it_finds(
    topology: Topology, tmp_path: Path
) -> None:
    """A single router (backup_active = 0, §3.4) activates deadtime after start. Its
    pulse killed and restarted, the VIP it finds up is kept while it decides, so the
    address never disappears: the dataplane keeps serving across the restart."""
    s = segment(topology)
    path = config(tmp_path / "lvs.cf", pub=NET, keepalive=0.2, deadtime=1.0, backup_active=0)
    a = PulseProc(s.a, path, *GARP)
    a.expect("active")
    assert wait_until(lambda: has_vip(s.a))
    a.kill()
    a2 = PulseProc(s.a, path, *GARP)
    assert a2.expect("ready") == "ready master"
    deadline = time.monotonic() + 20
    while "active" not in a2.drain():
        assert time.monotonic() < deadline, f"never activated: {a2.seen}"
        assert has_vip(s.a) and answers(s) == "ra"
    assert has_vip(s.a)
