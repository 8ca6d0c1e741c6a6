"""The router's other modes in the failover lab (see test_failover_xdp.py for the lab):

* cold standby with authenticated heartbeats (``--standby cold --heartbeat-key``):
  the standby runs no director and no checks; the active router is SIGKILLed with its
  NIC (a dead machine), the standby starts its director on activation, adopts what
  its dataplane holds and serves, and a connection opened before the fault survives;
  then a clean SIGTERM hands the VIP back at once;
* ``--no-heartbeat`` on a ``heartbeat = 1`` config is the director alone: no pulse in
  the status, no VIP added, the health checks and the dataplane run;
* ``hard_shutdown = 1`` under pulse: a checker of the active router dies (in-process,
  so the test can be the monitor's caller); its director stops, the VIP goes to the
  peer, the router stays up as a standby with CHILDFAIL until the peer's RUNNING
  heartbeat, and a later activation starts a fresh director; without a partner
  (``backup_active = 0``) it exits 1 instead;
* a reload that changes a pulse setting (keepalive) is refused, naming the line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator

import pytest

from demo.lab import GREET_CHECK, REALS, Lab, lvs_cf
from demo.netns import inside
from runtime.daemon import Options
from runtime.router import PulseOptions, Router
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
    # status says active from the decision on; the address follows (cold: before the
    # director starts), later under load
    lab.wait("rb holds the VIP", lambda: lab.has_vip("rb"))
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
    assert lab.pulse_state("ra") == "active"
    lab.wait("ra holds the VIP", lambda: lab.has_vip("ra"))
    lab.wait("ra sees every server", lambda: lab.servers_up("ra") == set(REALS))
    lab.wait("the client goes to ra", lambda: goes_to(lab, "ra"))
    names = lab.names(12)
    assert "error" not in names and len(set(names)) > 1


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_hard_shutdown_under_pulse_hands_over_and_stands_by(lab: Lab) -> None:
    ra = lab.routers["ra"]
    opts = Options(
        config=str(lab.work / "lvs.cf"),
        dataplane="xdp",
        interface="eth0",
        pin_dir=ra.pin_dir,
        socket=ra.socket,
        metrics=None,
    )
    lines = _Lines()
    logger = logging.getLogger("lvs-router")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    async def wait(what: str, predicate) -> None:
        await asyncio.to_thread(lab.wait, what, predicate, 90)

    async def scenario() -> int:
        router = Router(opts, PulseOptions(garp_interval=0.3))
        running = asyncio.create_task(router.run())
        await wait("ra is active", lambda: lab.pulse_state("ra") == "active")
        lab.start_router("rb", "--garp-interval", "0.3")
        await wait("rb is inactive", lambda: lab.pulse_state("rb") == "inactive")
        await wait("ra sees every server", lambda: lab.servers_up("ra") == set(REALS))
        await wait("the client reaches ra", lambda: lab.names(1) != ["error"])

        router.checker_crashed("web", "rs1", "RuntimeError('boom')")
        await wait("rb takes over", lambda: lab.pulse_state("rb") == "active")
        await wait("ra gave the VIP up", lambda: not lab.has_vip("ra"))
        assert not running.done()  # the router stays up as a standby
        assert router.director is None and router.monitor is None
        st = await asyncio.to_thread(lab.status, "ra")
        assert st is not None and st["pulse"]["state"] == "inactive"
        assert st["virtuals"] == []  # no director, no checks
        said = [m for m in lines.lines if "checker died" in m]
        assert len(said) == 1 and "giving up the VIPs to the peer" in said[0], said
        assert not any("shutting down" in m for m in lines.lines), lines.lines
        await wait(
            "CHILDFAIL clears on rb's RUNNING heartbeat",
            lambda: not lab.status("ra")["pulse"]["child_fail"],
        )
        names = await asyncio.to_thread(lab.names, 6)
        assert "error" not in names

        # rb stops cleanly: ra activates on its STOPPED with a fresh director
        lab.signal("rb", signal.SIGTERM)
        await wait("ra is active again", lambda: lab.pulse_state("ra") == "active")
        await wait("ra starts a fresh director", lambda: router.director is not None)
        await wait(
            "ra's new director checks every server", lambda: lab.servers_up("ra") == set(REALS)
        )
        router._stop.set()
        return await asyncio.wait_for(running, 60)

    try:
        with inside(ra.ns):
            code = asyncio.run(scenario())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old_level)
    assert code == 0


def test_a_reload_changing_a_pulse_timer_is_refused(lab: Lab) -> None:
    from runtime.control import request

    lab.start_router("ra", "--garp-interval", "0.3")
    lab.wait_state("ra", "active", timeout=90)
    lab.write_config(CONFIG.replace("keepalive = 0.2", "keepalive = 0.5"))
    answer = request(lab.routers["ra"].socket, "reload", timeout=30)
    assert not answer["ok"]
    err = answer["error"]
    line = CONFIG.splitlines().index("keepalive = 0.2") + 1
    assert f"lvs.cf:{line}:1: error: `keepalive` cannot be changed by a reload" in err, err
    status = lab.status("ra")
    assert status["reloads"]["failed"] == 1 and status["last_reload_error"] == err
    assert lab.pulse_state("ra") == "active"
    # back to the config pulse started with: that reload goes through
    lab.write_config(CONFIG)
    assert request(lab.routers["ra"].socket, "reload", timeout=30)["ok"]


def test_hard_shutdown_without_a_partner_exits(lab: Lab) -> None:
    """``backup_active = 0``: nothing could clear CHILDFAIL, so the router removes its
    services and exits 1 like the plain daemon, leaving no VIP behind."""
    lab.write_config(CONFIG.replace("backup_active = 1", "backup_active = 0"))
    ra = lab.routers["ra"]
    opts = Options(
        config=str(lab.work / "lvs.cf"),
        dataplane="xdp",
        interface="eth0",
        pin_dir=ra.pin_dir,
        socket=ra.socket,
        metrics=None,
    )
    lines = _Lines()
    logger = logging.getLogger("lvs-router")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)

    async def scenario() -> int:
        router = Router(opts, PulseOptions(garp_interval=0.3))
        running = asyncio.create_task(router.run())
        await asyncio.to_thread(
            lab.wait,
            "ra serves",
            lambda: lab.servers_up("ra") == set(REALS) and lab.has_vip("ra"),
            90,
        )
        router.checker_crashed("web", "rs1", "RuntimeError('boom')")
        return await asyncio.wait_for(running, 60)

    try:
        with inside(ra.ns):
            code = asyncio.run(scenario())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old_level)
    assert code == 1
    assert not lab.has_vip("ra")
    said = [m for m in lines.lines if "checker died" in m]
    assert len(said) == 1 and "no peer to take over" in said[0], said
