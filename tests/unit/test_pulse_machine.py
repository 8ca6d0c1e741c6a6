"""The pulse state machine against piranha-spec.md §3: every row of the §3.5 table,
the §3.4 timers, start-up (§3.2), signals and the director's death (§3.6) and
monitor_links (§3.7). Time is a number passed in; nothing sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile_text
from runtime.pulse.machine import (
    Activate,
    Deactivate,
    Exit,
    Log,
    Machine,
    Peer,
    ReArp,
    Role,
    RunCommand,
    SendHeartbeat,
    Settings,
    SyncRole,
    settings_from_config,
)
from runtime.pulse.wire import PeerState

pytestmark = pytest.mark.unit

RUNNING, STOPPED, OTHER = PeerState.RUNNING, PeerState.STOPPED, PeerState.OTHER


def acts(actions: list) -> list:
    """The actions without log lines."""
    return [a for a in actions if not isinstance(a, Log)]


def logs(actions: list) -> list[str]:
    return [a.message for a in actions if isinstance(a, Log)]


def machine(role: Role = Role.BACKUP, **kw) -> Machine:
    kw.setdefault("keepalive", 2.0)
    kw.setdefault("deadtime", 5.0)
    m = Machine(Settings(role=role, **kw))
    m.start(0.0)
    return m


def active(role: Role, **kw) -> Machine:
    """A started machine made active through its dead timer."""
    m = machine(role, **kw)
    assert Activate() in m.handle_timer(m.s.deadtime)
    assert m.active
    return m


# ---- §3.2 start-up ---------------------------------------------------------------------


def test_master_starts_inactive_and_announces_itself() -> None:
    """§3.2 step 5: "STARTING PULSE AS MASTER"; §3.4: the first heartbeat (STOPPED,
    since we are inactive) is due at once."""
    m = Machine(Settings(role=Role.MASTER))
    out = m.start(10.0)
    assert logs(out) == ["STARTING PULSE AS MASTER"]
    assert not m.active and m.peer is Peer.UNKNOWN
    assert m.get_timer() == 10.0
    assert acts(m.handle_timer(10.0)) == [SendHeartbeat(running=False)]


def test_backup_without_backup_active_exits() -> None:
    """§3.2 step 5: a non-master with backup_active = 0 exits."""
    m = Machine(Settings(role=Role.BACKUP, backup_active=False))
    assert m.start(0.0) == [
        Exit("We are backup node and backup is marked inactive -- exiting pulse")
    ]
    assert m.handle_timer(100.0) == [] and m.get_timer() is None


def test_start_runs_inactive_cmd_and_sync_daemon_backup() -> None:
    """§3.2 step 6 (0.8.x): at start, inactive_cmd and syncDaemon(backup)."""
    m = Machine(Settings(role=Role.MASTER, has_inactive_cmd=True, syncdaemon=True))
    assert acts(m.start(0.0)) == [RunCommand("inactive_cmd"), SyncRole("backup")]


def test_forceactive_activates_at_start() -> None:
    """§3.1: --forceactive starts in the active state."""
    m = Machine(Settings(role=Role.MASTER, forceactive=True, has_active_cmd=True))
    out = m.start(0.0)
    assert "Forced active on startup: activating lvs" in logs(out)
    assert acts(out) == [RunCommand("active_cmd"), Activate()]
    assert m.active


def test_settings_clear_backup_active_without_a_backup() -> None:
    """§3.2 step 3: backup_active with backup unset or 0.0.0.0 is cleared."""
    base = "primary = 198.18.0.2\nbackup_active = 1\nkeepalive = 0.25\ndeadtime = 0.75\n"
    vs = "virtual v {\n active = 1\n address = 198.18.0.10 eth0:1\n}\n"
    for backup in ("", "backup = 0.0.0.0\n"):
        cfg = compile_text("x.cf", base + backup + vs).config
        assert not settings_from_config(cfg, Role.MASTER).backup_active
    cfg = compile_text("x.cf", base + "backup = 198.18.0.3\n" + vs).config
    s = settings_from_config(cfg, Role.BACKUP, forceactive=True)
    assert s.backup_active and s.forceactive and s.role is Role.BACKUP
    assert (s.keepalive, s.deadtime) == (0.25, 0.75)  # extended dialect: fractional


def test_settings_reject_nonpositive_timers() -> None:
    """§3.4: keepalive and deadtime are intervals; zero would spin."""
    with pytest.raises(ValueError):
        Settings(role=Role.MASTER, keepalive=0)


# ---- §3.3 / §3.4 timers ------------------------------------------------------------------


def test_heartbeats_every_keepalive_with_our_state() -> None:
    """§3.4 send deadline: RUNNING if active else STOPPED, re-armed +keepalive."""
    m = machine(Role.MASTER, keepalive=2.0, deadtime=100.0)
    assert acts(m.handle_timer(0.0)) == [SendHeartbeat(running=False)]
    assert m.get_timer() == 2.0
    assert acts(m.handle_timer(1.9)) == []
    assert acts(m.handle_timer(2.0)) == [SendHeartbeat(running=False)]
    m.receive(STOPPED, 3.0)  # activates
    assert acts(m.handle_timer(4.0)) == [SendHeartbeat(running=True)]


def test_no_burst_of_heartbeats_after_a_stall() -> None:
    """§3.4: one deadline, re-armed; a process frozen for ten intervals sends one
    heartbeat when it wakes, not ten."""
    m = machine(Role.MASTER, keepalive=1.0, deadtime=100.0)
    m.handle_timer(0.0)
    assert acts(m.handle_timer(10.5)) == [SendHeartbeat(running=False)]
    assert m.send_at == 11.5


def test_no_heartbeats_without_backup_active() -> None:
    """§3.4: heartbeats are sent only when backup_active."""
    m = machine(Role.MASTER, backup_active=False)
    assert not any(isinstance(a, SendHeartbeat) for a in m.handle_timer(0.0))
    assert m.get_timer() == 5.0  # only the dead deadline


def test_single_router_activates_itself_after_deadtime() -> None:
    """§3.4 consequence: a single director (backup_active = 0) sends nothing and
    activates deadtime seconds after start."""
    m = machine(Role.MASTER, backup_active=False, deadtime=5.0)
    assert acts(m.handle_timer(4.99)) == []
    assert acts(m.handle_timer(5.0)) == [Activate()]
    assert m.peer is Peer.UNKNOWN  # no partner to declare dead


def test_partner_dead_after_deadtime_of_silence() -> None:
    """§3.4 dead deadline: an inactive router activates ("partner dead") deadtime
    after the last valid heartbeat."""
    m = machine(Role.BACKUP, keepalive=0.1, deadtime=0.3)
    m.receive(RUNNING, 1.0)
    assert Activate() not in m.handle_timer(1.29)
    assert not m.active
    out = m.handle_timer(1.3)
    assert "partner dead: activating lvs" in logs(out)
    assert Activate() in out and m.active and m.peer is Peer.DEAD


@pytest.mark.parametrize("state", [RUNNING, STOPPED, OTHER])
def test_every_valid_heartbeat_rearms_the_dead_timer(state: PeerState) -> None:
    """§3.3: every valid packet (running, stopped, or the accepted HOLD/HELD)
    re-arms needHeartBeat = now + deadtime."""
    m = machine(Role.MASTER, keepalive=100.0, deadtime=5.0, forceactive=False)
    m.handle_timer(0.0)
    m.receive(state, 4.0)
    assert m.dead_at == 9.0 and m.last_heartbeat == 4.0


def test_hold_magic_changes_nothing_else() -> None:
    """§3.3: HOLD/HELD are accepted but their handling is compiled out."""
    m = machine(Role.MASTER)
    assert m.receive(OTHER, 1.0) == []
    assert m.peer is Peer.UNKNOWN and not m.active


def test_dead_timer_while_active_only_rearms() -> None:
    """§3.4: the dead deadline acts only when we are not active; it re-arms +deadtime."""
    m = active(Role.BACKUP)
    assert acts(m.handle_timer(10.0)) == [SendHeartbeat(running=True)]
    assert m.active and m.dead_at == 15.0


# ---- §3.5 the table --------------------------------------------------------------------


def test_running_to_active_backup_yields_after_one_last_heartbeat() -> None:
    """§3.5 row 1 (0.8.6): RUNNING | active backup: send one last heartbeat, then
    deactivate ("partner active: deactivating LVS")."""
    m = active(Role.BACKUP, has_inactive_cmd=True, syncdaemon=True)
    out = m.receive(RUNNING, 6.0)
    assert "partner active: deactivating LVS" in logs(out)
    assert acts(out) == [
        SendHeartbeat(running=True),
        RunCommand("inactive_cmd"),
        SyncRole("backup"),
        Deactivate(),
    ]
    assert not m.active and m.peer is Peer.RUNNING


def test_running_to_active_master_reruns_active_cmd_and_rearps() -> None:
    """§3.5 row 2 (0.8.6): RUNNING | active master: run active_cmd again and re-send
    the ARPs for all VIPs and nat_router; stay active."""
    m = active(Role.MASTER, has_active_cmd=True)
    out = m.receive(RUNNING, 6.0)
    assert acts(out) == [RunCommand("active_cmd"), ReArp()]
    assert m.active
    m2 = active(Role.MASTER)
    assert acts(m2.receive(RUNNING, 6.0)) == [ReArp()]


@pytest.mark.parametrize("role", [Role.MASTER, Role.BACKUP])
def test_running_to_inactive_is_status_quo(role: Role) -> None:
    """§3.5 row 3: RUNNING | inactive: nothing (and CHILDFAIL is cleared)."""
    m = machine(role)
    assert acts(m.receive(RUNNING, 1.0)) == []
    assert not m.active and m.peer is Peer.RUNNING


def test_stopped_to_inactive_master_activates() -> None:
    """§3.5 row 4: STOPPED | inactive master: activate ("backup inactive")."""
    m = machine(Role.MASTER, has_active_cmd=True, syncdaemon=True)
    out = m.receive(STOPPED, 1.0)
    assert "backup inactive: activating lvs" in logs(out)
    assert acts(out) == [RunCommand("active_cmd"), SyncRole("master"), Activate()]
    assert m.active and m.peer is Peer.STOPPED


def test_stopped_to_inactive_backup_activates_as_in_086() -> None:
    """§3.5 row 5 (0.8.6, to the letter with backup_defers_to_master=False): STOPPED |
    inactive backup: activate ("primary inactive: activating lvs")."""
    m = machine(Role.BACKUP, backup_defers_to_master=False)
    out = m.receive(STOPPED, 1.0)
    assert "primary inactive: activating lvs" in logs(out)
    assert acts(out) == [Activate()] and m.active


def test_stopped_after_running_activates_the_backup_at_once() -> None:
    """§3.5 row 5 as we apply it: the primary was RUNNING and now says STOPPED (it
    gave up) — the backup activates on that very packet."""
    m = machine(Role.BACKUP)
    m.receive(RUNNING, 1.0)
    out = m.receive(STOPPED, 1.5)
    assert "primary inactive: activating lvs" in logs(out)
    assert acts(out) == [Activate()] and m.active


def test_backup_defers_to_an_inactive_master_for_one_deadtime() -> None:
    """§3.5 "if neither is running, master starts": a backup hearing STOPPED from a
    primary it has not seen running leaves the start to the master (which activates
    on the backup's own STOPPED, row 4); if the primary stays inactive for a whole
    deadtime (it cannot start: LINKFAIL/CHILDFAIL), the backup takes over."""
    m = machine(Role.BACKUP, keepalive=1.0, deadtime=5.0)
    for t in (1.0, 2.0, 3.0, 4.0, 5.0):
        assert acts(m.receive(STOPPED, t)) == []
        assert Activate() not in m.handle_timer(t)
    assert not m.active
    assert acts(m.receive(STOPPED, 6.0)) == [Activate()]


@pytest.mark.parametrize("role", [Role.MASTER, Role.BACKUP])
def test_stopped_to_active_is_status_quo(role: Role) -> None:
    """§3.5 "otherwise, keep the status quo": STOPPED | active does nothing."""
    m = active(role)
    assert acts(m.receive(STOPPED, 6.0)) == []
    assert m.active


@pytest.mark.parametrize("flag", ["link_fail", "child_fail"])
def test_stopped_does_not_activate_under_linkfail_or_childfail(flag: str) -> None:
    """§3.5 rows 4-5: "unless LINKFAIL/CHILDFAIL"."""
    m = machine(Role.MASTER)
    setattr(m, flag, True)
    assert acts(m.receive(STOPPED, 1.0)) == []
    assert not m.active


def test_activate_and_deactivate_follow_the_08x_order() -> None:
    """§3.5 activateLvs: active_cmd, then syncDaemon(master), then lvsd/VIPs/ARPs;
    deactivateLvs: inactive_cmd, syncDaemon(backup), then stop lvsd and VIPs down."""
    s = dict(has_active_cmd=True, has_inactive_cmd=True, syncdaemon=True)
    m = machine(Role.BACKUP, **s)
    assert acts(m.handle_timer(5.0))[-3:] == [
        RunCommand("active_cmd"),
        SyncRole("master"),
        Activate(),
    ]
    assert acts(m.receive(RUNNING, 6.0))[1:] == [
        RunCommand("inactive_cmd"),
        SyncRole("backup"),
        Deactivate(),
    ]


# ---- two machines wired together (no network) -------------------------------------------


class Pair:
    """A master and a backup exchanging heartbeats through a lossless, instant link
    that can be cut; time advances in steps of ``dt``."""

    def __init__(self, **kw) -> None:
        kw.setdefault("keepalive", 1.0)
        kw.setdefault("deadtime", 3.0)
        self.master = Machine(Settings(role=Role.MASTER, **kw))
        self.backup = Machine(Settings(role=Role.BACKUP, **kw))
        self.now = 0.0
        self.link = True
        self.record: list[tuple[float, str, object]] = []

    def start(self, m: Machine, **override) -> None:
        if override:
            m.s = Settings(**{**_fields(m.s), **override})
        self.deliver(m, m.start(self.now))

    def other(self, m: Machine) -> Machine:
        return self.backup if m is self.master else self.master

    def deliver(self, m: Machine, actions: list) -> None:
        for a in actions:
            if isinstance(a, Log):
                continue
            self.record.append((self.now, m.s.role.value, a))
            peer = self.other(m)
            if isinstance(a, SendHeartbeat) and self.link and peer.started and not peer.stopped:
                self.deliver(peer, peer.receive(RUNNING if a.running else STOPPED, self.now))

    def run(self, until: float, dt: float = 0.05) -> None:
        while self.now < until - 1e-9:
            self.now = round(self.now + dt, 6)
            for m in (self.master, self.backup):
                if m.started and not m.stopped:
                    self.deliver(m, m.handle_timer(self.now))

    def actions(self, role: str, kind: type) -> list:
        return [a for _, r, a in self.record if r == role and isinstance(a, kind)]


def _fields(s: Settings) -> dict:
    return {k: getattr(s, k) for k in Settings.__dataclass_fields__}


@pytest.mark.parametrize("first", ["master", "backup"])
@pytest.mark.parametrize("delay", [0.0, 0.5, 2.0])
def test_neither_active_master_starts(first: str, delay: float) -> None:
    """§3.5 summary: "If neither is running, master starts" — whichever router starts
    first (within deadtime of the other), the pair settles with the master active and
    the backup never having taken the VIPs."""
    p = Pair()
    a, b = (p.master, p.backup) if first == "master" else (p.backup, p.master)
    p.start(a)
    p.run(delay)
    p.start(b)
    p.run(20.0)
    assert p.master.active and not p.backup.active
    assert p.actions("backup", Activate) == []


def test_backup_takes_over_when_the_master_dies_and_there_is_no_failback() -> None:
    """§3.4 dead deadline on the backup; §3.5 "Failback": the returning primary starts
    inactive, sees RUNNING from the backup and stays standby."""
    p = Pair()
    p.start(p.master)
    p.run(5.0)
    p.start(p.backup)
    p.run(10.0)
    assert p.master.active and not p.backup.active
    p.master.stopped = True  # SIGKILL: no more heartbeats, no clean-up
    died = p.now
    p.run(died + 2.9)
    assert not p.backup.active  # still within deadtime of the last heartbeat
    p.run(died + 4.5)
    assert p.backup.active
    # the primary comes back
    p.master = Machine(Settings(role=Role.MASTER, keepalive=1.0, deadtime=3.0))
    p.start(p.master)
    p.run(p.now + 30.0)
    assert p.backup.active and not p.master.active


def test_forceactive_primary_returns_and_backup_yields() -> None:
    """§3.5 "Failback": starting the primary with --forceactive makes both active;
    the backup then deactivates and the master re-ARPs."""
    p = Pair()
    p.start(p.backup)
    p.run(5.0)
    assert p.backup.active
    p.start(p.master, forceactive=True)
    p.run(p.now + 3.0)
    assert p.master.active and not p.backup.active
    assert p.actions("backup", Deactivate) == [Deactivate()]
    assert p.actions("master", ReArp)


def test_split_brain_heals_as_the_table_says() -> None:
    """§3.5: both links cut → both active after deadtime; restored → "if both are
    running, backup stops and master rearps"."""
    p = Pair()
    p.start(p.master)
    p.start(p.backup)
    p.run(10.0)
    assert p.master.active and not p.backup.active
    p.link = False
    p.run(15.0)
    assert p.master.active and p.backup.active
    rearps = len(p.actions("master", ReArp))
    p.link = True
    p.run(17.0)
    assert p.master.active and not p.backup.active
    assert len(p.actions("master", ReArp)) > rearps


def test_clean_stop_hands_over_at_once() -> None:
    """§3.6 SIGTERM deactivates; our clean-shutdown STOPPED heartbeat meets §3.5 row
    5 on the backup (STOPPED | inactive backup → activate) with no deadtime wait."""
    p = Pair()
    p.start(p.master)
    p.start(p.backup)
    p.run(10.0)
    p.deliver(p.master, p.master.stop(p.now))
    assert p.backup.active and not p.master.active


def test_one_way_cut_backup_to_master() -> None:
    """§3.4/§3.5: when only the master's heartbeats are lost the backup activates after
    deadtime; both are active, the master keeps seeing RUNNING and re-ARPs each time,
    the backup never hears it — the status the table implies."""
    p = Pair()
    p.start(p.master)
    p.start(p.backup)
    p.run(10.0)
    orig = p.deliver

    def deliver(m: Machine, actions: list) -> None:
        if m is p.master:
            actions = [a for a in actions if not isinstance(a, SendHeartbeat)]
        orig(m, actions)

    p.deliver = deliver  # type: ignore[method-assign]
    p.run(15.0)
    assert p.backup.active and p.master.active
    assert p.actions("master", ReArp)


# ---- §3.6 signals, director death ---------------------------------------------------------


def test_stop_when_active_sends_stopped_then_deactivates() -> None:
    """§3.6 SIGTERM: deactivate and exit; with clean=True a STOPPED heartbeat first."""
    m = active(Role.MASTER, has_inactive_cmd=True)
    assert acts(m.stop(7.0)) == [
        SendHeartbeat(running=False),
        RunCommand("inactive_cmd"),
        Deactivate(),
    ]
    assert m.stopped and m.get_timer() is None
    assert m.handle_timer(100.0) == [] and m.receive(STOPPED, 100.0) == []
    assert m.stop(101.0) == []


def test_stop_unclean_or_inactive() -> None:
    """§3.6: an inactive router has nothing to give up; clean=False sends nothing
    (piranha itself sent no heartbeat on SIGTERM)."""
    assert acts(machine(Role.BACKUP).stop(1.0)) == [SendHeartbeat(running=False)]
    assert acts(active(Role.MASTER).stop(7.0, clean=False)) == [Deactivate()]
    assert acts(machine(Role.MASTER, backup_active=False).stop(1.0)) == []


def test_director_death_deactivates_until_a_running_heartbeat() -> None:
    """§3.6 SIGCHLD (0.8.x): lvsd exits → deactivate, go inactive and set CHILDFAIL:
    no re-activation (neither by STOPPED nor by the dead timer) until a RUNNING
    heartbeat is seen."""
    m = active(Role.MASTER)
    assert acts(m.child_failed(6.0)) == [Deactivate()]
    assert m.child_fail and not m.active
    assert acts(m.receive(STOPPED, 7.0)) == []
    assert Activate() not in m.handle_timer(20.0)
    m.receive(RUNNING, 21.0)
    assert not m.child_fail
    assert Activate() in m.receive(STOPPED, 22.0)


# ---- §3.7 monitor_links --------------------------------------------------------------------


def test_link_failure_gives_up_and_refuses_until_restored() -> None:
    """§3.7: on a link failure "Local NIC link failure: Pulse disabled", deactivate
    if active, and refuse to activate while failed; on recovery "Pulse enabled"."""
    m = active(Role.BACKUP, monitor_links=True)
    out = m.links(False, 6.0)
    assert logs(out) == ["Local NIC link failure: Pulse disabled"]
    assert acts(out) == [Deactivate()] and m.link_fail
    assert m.links(False, 6.5) == []  # only the first failure acts
    assert acts(m.receive(STOPPED, 7.0)) == []
    assert Activate() not in m.handle_timer(30.0)
    assert logs(m.links(True, 31.0)) == ["Local NIC link(s) restored: Pulse enabled"]
    assert Activate() in m.handle_timer(m.dead_at)  # the partner is still silent


@pytest.mark.parametrize(
    "settings", [dict(monitor_links=False), dict(monitor_links=True, backup_active=False)]
)
def test_links_ignored_unless_monitor_links_and_backup_active(settings: dict) -> None:
    """§3.7: check_links runs only if monitor_links != 0 *and* backup_active."""
    m = active(Role.MASTER, **settings)
    assert m.links(False, 6.0) == []
    assert m.active and not m.link_fail


def test_events_before_start_are_ignored() -> None:
    """§3.2: nothing happens before start-up (no sockets yet in piranha)."""
    m = Machine(Settings(role=Role.MASTER))
    assert m.receive(STOPPED, 0.0) == [] and m.handle_timer(9.0) == []
    assert m.links(False, 0.0) == [] and m.child_failed(0.0) == []
    assert m.get_timer() is None


# ---- properties over random histories -------------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=4.0),
        st.sampled_from(["cut", "heal", "running", "stopped", "link-down", "link-up", "child"]),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.sampled_from([Role.MASTER, Role.BACKUP]), st.booleans())
def test_single_machine_invariants(events, role: Role, monitor: bool) -> None:
    """Whatever arrives: Activate and Deactivate alternate (starting with Activate),
    ``active`` matches the last of them, a router under LINKFAIL or CHILDFAIL is never
    active (§3.6, §3.7), and nothing happens after stop (§3.6)."""
    m = Machine(Settings(role=role, keepalive=0.5, deadtime=1.5, monitor_links=monitor))
    now = 0.0
    history = list(m.start(now))
    for dt, ev in events:
        now += dt
        history += m.handle_timer(now)
        match ev:
            case "running":
                history += m.receive(RUNNING, now)
            case "stopped":
                history += m.receive(STOPPED, now)
            case "link-down":
                history += m.links(False, now)
            case "link-up":
                history += m.links(True, now)
            case "child":
                history += m.child_failed(now)
        if m.link_fail or m.child_fail:
            assert not m.active
    flips = [a for a in history if isinstance(a, (Activate, Deactivate))]
    assert all(isinstance(a, Activate if i % 2 == 0 else Deactivate) for i, a in enumerate(flips))
    assert m.active == (bool(flips) and isinstance(flips[-1], Activate))
    history = m.stop(now)
    assert not m.active
    assert m.handle_timer(now + 100) == [] and m.receive(STOPPED, now + 100) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.05, max_value=5.0), st.sampled_from(["cut", "heal"])),
        max_size=12,
    ),
    st.floats(min_value=0.0, max_value=3.0),
    st.sampled_from(["master", "backup"]),
)
def test_pair_always_settles_with_exactly_one_active(cuts, delay: float, first: str) -> None:
    """Two routers, any history of partitions: once the link has been whole for a few
    deadtimes exactly one of them is active (§3.5: both → backup yields; neither →
    master starts; one → status quo)."""
    p = Pair(keepalive=0.5, deadtime=1.5)
    a, b = (p.master, p.backup) if first == "master" else (p.backup, p.master)
    p.start(a)
    p.run(delay, dt=0.1)
    p.start(b)
    for dt, ev in cuts:
        p.link = ev == "heal"
        p.run(p.now + dt, dt=0.1)
    p.link = True
    p.run(p.now + 10.0, dt=0.1)
    assert p.master.active != p.backup.active
