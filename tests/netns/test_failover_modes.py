"""The router's other modes in the failover lab (see test_failover_xdp.py for the lab):

* cold standby with authenticated heartbeats (``--standby cold --heartbeat-key``):
  the standby runs no director and no checks; the active router is SIGKILLed with its
  NIC (a dead machine), the standby starts its director on activation, adopts what
  its dataplane holds and serves, and a connection opened before the fault survives;
  then a clean SIGTERM hands the VIP back at once;
* ``--no-heartbeat`` on a ``heartbeat = 1`` config is the director alone: no pulse in
  the status, no VIP added, the health checks and the dataplane run.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from demo.lab import GREET_CHECK, REALS, Lab, lvs_cf
from tests.netns.topo import Topology

pytestmark = pytest.mark.netns

CONFIG = lvs_cf(keepalive=0.2, deadtime=1.5, check=GREET_CHECK, monitor_links=True)


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    with Topology("failover-modes") as t:
        lab = Lab(t, tmp_path, http=False).build()
        try:
            for name in REALS:
                lab.serve(name)
            lab.write_config(CONFIG)
            yield lab
        finally:
            lab.close()


def goes_to(lab: Lab, router: str) -> bool:
    return f"lladdr {lab.router_mac(router)}" in lab.client_neigh()


def test_cold_standby_with_authenticated_heartbeats(lab: Lab) -> None:
    key = lab.work / "heartbeat.key"
    key.write_text("a shared secret of the two routers\n")
    args = ("--standby", "cold", "--heartbeat-key", str(key), "--garp-interval", "0.3")
    lab.start_router("ra", *args)
    lab.wait_state("ra", "active", timeout=90)
    lab.start_router("rb", *args)
    lab.wait_state("rb", "inactive", timeout=90)
    lab.wait("ra sees every server", lambda: lab.servers_up("ra") == set(REALS))
    standby = lab.status("rb")
    assert standby["virtuals"] == []  # cold: no director, no checks
    lab.wait(
        "rb accepts ra's heartbeats", lambda: lab.status("rb")["pulse"]["packets"]["accepted"] > 0
    )
    packets = lab.status("rb")["pulse"]["packets"]
    assert packets["unauthenticated"] == packets["forged"] == packets["wrong_key"] == 0
    lab.wait("the client reaches ra", lambda: lab.names(1) != ["error"] and goes_to(lab, "ra"))
    cid, name = lab.hold()
    assert name in REALS and lab.echo(cid, "before") == "before"

    lab.kill_machine("ra")
    lab.wait_state("rb", "active")
    assert lab.has_vip("rb")
    lab.wait("rb's director checked every server", lambda: lab.servers_up("rb") == set(REALS))
    lab.wait("the client goes to rb", lambda: goes_to(lab, "rb"))
    names = lab.names(12)
    assert "error" not in names and len(set(names)) > 1
    assert lab.echo(cid, "after") == "after"

    # ra back (no failback), then rb stopped cleanly: ra takes over on the STOPPED
    lab.link("ra", up=True)
    lab.start_router("ra", *args)
    lab.wait_state("ra", "inactive", timeout=90)
    lab.wait("ra dropped its stale VIP", lambda: not lab.has_vip("ra"))
    lab.signal("rb", signal.SIGTERM)
    lab.wait_state("ra", "active")
    lab.wait("rb gave the VIP up", lambda: not lab.has_vip("rb"))
    lab.wait("ra's director checked every server", lambda: lab.servers_up("ra") == set(REALS))
    lab.wait("the client goes to ra", lambda: goes_to(lab, "ra"))
    assert lab.echo(cid, "handed back") == "handed back"
    assert "error" not in lab.names(6)


def test_no_heartbeat_runs_the_director_alone(lab: Lab) -> None:
    lab.start_router("ra", "--no-heartbeat")
    lab.wait("ra sees every server", lambda: lab.servers_up("ra") == set(REALS), timeout=90)
    status = lab.status("ra")
    assert "pulse" not in status
    assert not lab.has_vip("ra")
    assert "STARTING PULSE" not in lab.routers["ra"].log()


def test_a_backup_marked_inactive_refuses_to_run(lab: Lab) -> None:
    """§3.2 step 5: pulse exits on a backup with backup_active = 0, and so does the
    router (exit status 1, the reason on stderr), leaving no VIP behind."""
    lab.write_config(CONFIG.replace("backup_active = 1", "backup_active = 0"))
    r = lab.start_router("rb")
    assert r.proc is not None
    assert r.proc.wait(120) == 1
    assert "backup is marked inactive" in r.log()
    assert not lab.has_vip("rb")


def test_forceactive_takes_the_vips_back(lab: Lab) -> None:
    """``--forceactive`` (§3.5): the primary starts active although the backup serves;
    both are active for a heartbeat, then the backup yields and the master re-ARPs."""
    lab.start_router("rb", "--garp-interval", "0.3")
    lab.wait_state("rb", "active", timeout=90)  # alone: its dead timer
    lab.wait("the client reaches rb", lambda: lab.names(1) != ["error"] and goes_to(lab, "rb"))
    lab.start_router("ra", "--forceactive", "--garp-interval", "0.3")
    lab.wait_state("rb", "inactive", timeout=90)
    lab.wait("rb gave the VIP up", lambda: not lab.has_vip("rb"))
    assert lab.pulse_state("ra") == "active" and lab.has_vip("ra")
    lab.wait("ra sees every server", lambda: lab.servers_up("ra") == set(REALS))
    lab.wait("the client goes to ra", lambda: goes_to(lab, "ra"))
    names = lab.names(12)
    assert "error" not in names and len(set(names)) > 1
