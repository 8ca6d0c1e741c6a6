"""Failover of the whole router (pulse + director + XDP dataplane) in namespaces.

Two ``lvs-router run`` processes (runtime/router.py: ``heartbeat = 1``) on one L2
segment with a client and three real servers (tests/netns/servers.py: greet with
their name, then echo), direct routing through XDP on each router's eth0
(demo/lab.py builds it on the tests' Topology). Faults on the active router:
SIGKILL, SIGSTOP, its link down (``monitor_links = 1``), heartbeats cut one way, and
both ways (split brain) then restored. After each: the VIP is on the new active
router, the client's neighbour entry names it, new connections succeed through it,
and a TCP connection opened before the fault still echoes — the new router never
saw that flow, its Maglev table (identical inputs, hot standby) sends it to the same
real server. Waits are bounded polls of the routers' status; no duration is asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from demo.lab import GREET_CHECK, REALS, ROOT, Lab, lvs_cf
from tests.netns.topo import Topology

pytestmark = pytest.mark.netns

# sub-second failover (extended dialect) with room for a loaded 2-core machine
CONFIG = lvs_cf(keepalive=0.2, deadtime=1.5, check=GREET_CHECK, monitor_links=True)
ROUTER_ARGS = ("--garp-count", "3", "--garp-interval", "0.3")


def start(lab: Lab, name: str, state: str) -> None:
    lab.start_router(name, *ROUTER_ARGS)
    lab.wait_state(name, state, timeout=90)  # includes the XDP compile


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("failover")
    with Topology("failover") as t:
        lab = Lab(t, work, http=False).build()
        try:
            for name in REALS:
                lab.serve(name)
            lab.write_config(CONFIG)
            start(lab, "ra", "active")  # alone: the dead timer makes it active
            start(lab, "rb", "inactive")
            yield lab
        finally:
            lab.close()


@pytest.fixture
def lab(built: Lab) -> Lab:
    """Every test starts from: ra (master) active, rb (backup) standing by, both
    running and seeing all three real servers up, heartbeats flowing both ways."""
    lab = built
    for src, dst in (("ra", "rb"), ("rb", "ra")):
        lab.cut_heartbeats(src, dst, cut=False)
    for name in ("ra", "rb"):
        lab.link(name, up=True)
        p = lab.routers[name].proc
        if p is None or p.poll() is not None:
            start(lab, name, "inactive")
    if not (lab.pulse_state("ra") == "active" and lab.pulse_state("rb") == "inactive"):
        lab.stop_router("rb")  # its STOPPED heartbeat: ra takes over at once
        lab.wait_state("ra", "active")
        start(lab, "rb", "inactive")
    lab.wait(
        "both routers see all real servers",
        lambda: lab.servers_up("ra") == set(REALS) == lab.servers_up("rb"),
    )
    lab.wait(
        "the client reaches the VIP through ra",
        lambda: lab.names(1) != ["error"] and goes_to(lab, "ra"),
    )
    return lab


def goes_to(lab: Lab, router: str) -> bool:
    return f"lladdr {lab.router_mac(router)}" in lab.client_neigh()


def served(lab: Lab) -> set[str]:
    """New connections through the VIP: every one answered, by which servers."""
    names = lab.names(12)
    assert "error" not in names, names
    return set(names)


def held(lab: Lab) -> int:
    cid, name = lab.hold()
    assert name in REALS
    assert lab.echo(cid, "before") == "before"
    return cid


def active_with_vip(lab: Lab, name: str) -> None:
    """``name`` is active and holds the VIP. Two waits: pulse's status says active
    from the decision on, while the address is added a little later by its worker
    (and, with the XDP dataplane, after the first ARPs), longer under load."""
    lab.wait_state(name, "active")
    lab.wait(f"{name} holds the VIP", lambda: lab.has_vip(name))


def taken_over(lab: Lab, new: str) -> None:
    """``new`` is active, holds the VIP, the client's ARP entry names it and new
    connections are served (by more than one real server)."""
    active_with_vip(lab, new)
    lab.wait(f"the client's neighbour entry names {new}", lambda: goes_to(lab, new))
    assert len(served(lab)) > 1


def test_sigkill_of_the_active_router(lab: Lab) -> None:
    cid = held(lab)
    lab.signal("ra", signal.SIGKILL)
    taken_over(lab, "rb")
    assert lab.echo(cid, "after the takeover") == "after the takeover"
    # the primary comes back and does not fail back (§3.5); its stale VIP goes
    start(lab, "ra", "inactive")
    lab.wait("the restarted primary drops the VIP", lambda: not lab.has_vip("ra"))
    assert lab.pulse_state("rb") == "active" and goes_to(lab, "rb")
    assert lab.echo(cid, "still") == "still"
    lab.ask(op="close", id=cid)


def test_frozen_active_router_and_its_return(lab: Lab) -> None:
    cid = held(lab)
    lab.signal("ra", signal.SIGSTOP)
    taken_over(lab, "rb")
    assert lab.echo(cid, "while frozen") == "while frozen"
    # thawed, both are active: the backup yields, the master re-ARPs (§3.5)
    lab.signal("ra", signal.SIGCONT)
    lab.wait_state("rb", "inactive")
    lab.wait("the VIP is back on the master alone", lambda: not lab.has_vip("rb"))
    assert lab.pulse_state("ra") == "active"
    lab.wait("the client goes to ra again", lambda: goes_to(lab, "ra"))
    assert len(served(lab)) > 1
    assert lab.echo(cid, "thawed") == "thawed"
    lab.ask(op="close", id=cid)


def test_link_down_on_the_active_router(lab: Lab) -> None:
    cid = held(lab)
    lab.link("ra", up=False)
    lab.wait_state("ra", "inactive")  # monitor_links: it gives up
    assert lab.status("ra")["pulse"]["link_fail"]
    taken_over(lab, "rb")
    assert lab.echo(cid, "after link loss") == "after link loss"
    lab.link("ra", up=True)
    lab.wait("ra's link is back", lambda: not lab.status("ra")["pulse"]["link_fail"])
    assert lab.pulse_state("ra") == "inactive" and lab.pulse_state("rb") == "active"
    lab.ask(op="close", id=cid)


def test_heartbeats_cut_one_way(lab: Lab) -> None:
    """ra's heartbeats no longer reach rb: rb activates; ra, hearing rb RUNNING,
    keeps the VIP and re-ARPs (the status quo of §3.5). Both forward to the same real
    servers, so clients are served whichever MAC they hold; the path healed, rb yields."""
    cid = held(lab)
    lab.cut_heartbeats("ra", "rb")
    active_with_vip(lab, "rb")
    assert lab.pulse_state("ra") == "active"
    assert len(served(lab)) > 1
    assert lab.echo(cid, "one way") == "one way"
    lab.cut_heartbeats("ra", "rb", cut=False)
    lab.wait_state("rb", "inactive")
    lab.wait("rb gave the VIP up", lambda: not lab.has_vip("rb"))
    lab.wait("the client goes to ra", lambda: goes_to(lab, "ra"))
    assert lab.echo(cid, "healed") == "healed"
    lab.ask(op="close", id=cid)


def test_split_brain_heals_to_the_master(lab: Lab) -> None:
    cid = held(lab)
    lab.cut_heartbeats("ra", "rb")
    lab.cut_heartbeats("rb", "ra")
    active_with_vip(lab, "rb")  # its dead timer
    assert lab.pulse_state("ra") == "active" and lab.has_vip("ra")
    assert len(served(lab)) > 1
    assert lab.echo(cid, "split") == "split"
    lab.cut_heartbeats("ra", "rb", cut=False)
    lab.cut_heartbeats("rb", "ra", cut=False)
    lab.wait_state("rb", "inactive")  # both active: the backup yields
    lab.wait("rb gave the VIP up", lambda: not lab.has_vip("rb"))
    assert lab.pulse_state("ra") == "active"
    lab.wait("the client goes to ra", lambda: goes_to(lab, "ra"))
    assert len(served(lab)) > 1
    assert lab.echo(cid, "healed") == "healed"
    lab.ask(op="close", id=cid)


def test_status_shows_pulse_in_both_roles(lab: Lab) -> None:
    a, b = lab.status("ra"), lab.status("rb")
    assert a is not None and b is not None
    assert (a["pulse"]["role"], a["pulse"]["state"]) == ("master", "active")
    assert (b["pulse"]["role"], b["pulse"]["state"]) == ("backup", "inactive")
    assert b["pulse"]["peer"] == "running" and b["pulse"]["vips"] == []
    assert a["pulse"]["vips"] == ["198.18.70.100"]
    assert {s["name"] for s in b["virtuals"][0]["servers"]} == set(REALS)  # hot standby
    argv = [sys.executable, "-m", "runtime.daemon_cli", "status"]
    shown = subprocess.run(
        [*argv, "--socket", lab.routers["rb"].socket],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "pulse: backup inactive, peer running, VIPs none" in shown.stdout
