"""pulse's decisions as a pure state machine: events in, actions out, time passed in.

No sockets, no clock, no logging: the asyncio adapter (runtime/pulse/heartbeat.py)
feeds it and carries out what it returns, in order. Section numbers are those of
piranha-spec.md; where piranha 0.5.x and 0.8.6 differ we follow 0.8.6 (pulse 1.57).

Inputs:   start(now) · receive(state, now) · handle_timer(now) · links(ok, now)
          · child_failed(now) · stop(now, clean)
Timer:    get_timer() -> the next deadline (send a heartbeat / declare the peer dead)
Outputs:  lists of the frozen action classes below.

The rule of §3.5 in one line: "if both are running, backup stops and master re-ARPs;
if neither is running, master starts; otherwise keep the status quo" — plus the dead
timer: an inactive router whose partner has been silent for ``deadtime`` activates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from compiler.model import Config

from .wire import PeerState


class Role(Enum):
    """§3.2: MASTER iff a local interface holds the ``primary`` address."""

    MASTER = "master"
    BACKUP = "backup"


class Peer(Enum):
    """What we last knew of the partner."""

    UNKNOWN = "unknown"  # nothing heard since start
    RUNNING = "running"
    STOPPED = "stopped"
    DEAD = "dead"  # silent for deadtime


# ---- actions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the log, worded like piranha's so operators can grep for it."""

    message: str


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    running: bool


@dataclass(frozen=True, slots=True)
class Activate:
    """Take over: VIPs (and nat_router) up, gratuitous ARP, start the director."""


@dataclass(frozen=True, slots=True)
class Deactivate:
    """Give up: stop the director, VIPs down. No ARP (§3.5 deactivateLvs)."""


@dataclass(frozen=True, slots=True)
class ReArp:
    """Announce every VIP and nat_router again (the master answering a RUNNING peer)."""


@dataclass(frozen=True, slots=True)
class RunCommand:
    """active_cmd / inactive_cmd: fork+exec, not waited for (§1.2)."""

    which: str  # "active_cmd" | "inactive_cmd"


@dataclass(frozen=True, slots=True)
class SyncRole:
    """The IPVS sync daemon's role when ``syncdaemon = 1`` (§3.5 step 3)."""

    role: str  # "master" | "backup"


@dataclass(frozen=True, slots=True)
class Exit:
    """pulse refuses to run (a backup with backup_active = 0, §3.2 step 5)."""

    reason: str


Action = Log | SendHeartbeat | Activate | Deactivate | ReArp | RunCommand | SyncRole | Exit


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The lvs.cf values the machine needs, plus pulse's ``--forceactive``."""

    role: Role
    keepalive: float = 2.0
    deadtime: float = 5.0
    backup_active: bool = True
    monitor_links: bool = False
    syncdaemon: bool = False
    has_active_cmd: bool = False
    has_inactive_cmd: bool = False
    forceactive: bool = False
    # see Machine._backup_takes_stopped; False = piranha 0.8.6's row 5 to the letter
    backup_defers_to_master: bool = True

    def __post_init__(self) -> None:
        if self.keepalive <= 0 or self.deadtime <= 0:
            raise ValueError("keepalive and deadtime must be positive")

    @property
    def links_watched(self) -> bool:
        """§3.7: link checks only when monitor_links != 0 *and* backup_active."""
        return self.monitor_links and self.backup_active


def settings_from_config(
    config: Config,
    role: Role,
    *,
    forceactive: bool = False,
    backup_defers_to_master: bool = True,
) -> Settings:
    """The machine's settings from a compiled lvs.cf. §3.2 step 3: a backup_active
    router whose ``backup`` is unset or 0.0.0.0 has no partner, so backup_active is
    cleared ("Undefined backup node marked as active? -- clearing that!")."""
    no_backup = config.backup is None or config.backup == IPv4Address(0)
    return Settings(
        role=role,
        keepalive=float(config.keepalive),
        deadtime=float(config.deadtime),
        backup_active=config.backup_active and not no_backup,
        monitor_links=config.monitor_links != 0,
        syncdaemon=config.syncdaemon,
        has_active_cmd=bool(config.active_cmd),
        has_inactive_cmd=bool(config.inactive_cmd),
        forceactive=forceactive,
        backup_defers_to_master=backup_defers_to_master,
    )


class Machine:
    """One router's pulse. Call :meth:`start` first."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.active = False
        self.peer = Peer.UNKNOWN
        self.link_fail = False  # §3.7 LINKFAIL
        self.child_fail = False  # §3.6 CHILDFAIL: the director died
        self.started = False
        self.stopped = False
        self.last_heartbeat: float | None = None
        self.stopped_since: float | None = None  # the peer has said STOPPED since then
        self.send_at: float | None = None
        self.dead_at: float | None = None

    # ---- inputs ----------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """§3.2 start-up: refuse a backup that has no role, run inactive_cmd and the
        sync daemon's backup role (0.8.x), activate at once with --forceactive."""
        self.started = True
        s = self.s
        if s.role is Role.BACKUP and not s.backup_active:
            self.stopped = True
            return [Exit("We are backup node and backup is marked inactive -- exiting pulse")]
        out: list[Action] = [Log(f"STARTING PULSE AS {s.role.name}")]
        out += self._inactive_side()
        self.dead_at = now + s.deadtime
        if s.backup_active:
            self.send_at = now
        if s.forceactive:
            out.append(Log("Forced active on startup: activating lvs"))
            out += self._activate()
        return out

    def receive(self, state: PeerState, now: float) -> list[Action]:
        """A valid heartbeat (§3.3: every one re-arms the dead timer) and the §3.5 table."""
        if not self.started or self.stopped:
            return []
        self.dead_at = now + self.s.deadtime
        self.last_heartbeat = now
        if state is PeerState.OTHER:
            return []
        out: list[Action] = []
        master = self.s.role is Role.MASTER
        previous = self.peer
        if state is PeerState.RUNNING:
            self.peer = Peer.RUNNING
            self.child_fail = False
            if self.active and not master:
                # both active: the backup yields, after one last heartbeat so that the
                # master's re-ARP answering it is the last word on the wire
                out.append(Log("partner active: deactivating LVS"))
                if self.s.backup_active:
                    out.append(SendHeartbeat(running=True))
                out += self._deactivate()
            elif self.active and master:
                out.append(Log("partner active: resending arps"))
                if self.s.has_active_cmd:
                    out.append(RunCommand("active_cmd"))
                out.append(ReArp())
            return out
        self.peer = Peer.STOPPED
        if previous is not Peer.STOPPED:
            self.stopped_since = now
        if self.active or not self._may_activate():
            return out
        if master:
            out.append(Log("backup inactive: activating lvs"))
            out += self._activate()
        elif self._backup_takes_stopped(previous, now):
            out.append(Log("primary inactive: activating lvs"))
            out += self._activate()
        return out

    def _backup_takes_stopped(self, previous: Peer, now: float) -> bool:
        """Row 5 of §3.5. piranha 0.8.6 activates an inactive backup on any STOPPED;
        then when both start together whoever hears STOPPED first takes the VIPs, and
        the backup may keep them. With ``backup_defers_to_master`` (our default) the
        backup activates at once only when the primary *was* running and stopped (it
        gave up: clean shutdown, link or director failure), or when the primary has
        stayed inactive for a whole deadtime (it cannot start); otherwise the master,
        which activates on our STOPPED, starts — "if neither is running, master
        starts" (spec §3.5, the source's own summary)."""
        if not self.s.backup_defers_to_master:
            return True
        if previous is Peer.RUNNING:
            return True
        return self.stopped_since is not None and now - self.stopped_since >= self.s.deadtime

    def handle_timer(self, now: float) -> list[Action]:
        """§3.4: the send deadline and the dead deadline, whichever are due."""
        if not self.started or self.stopped:
            return []
        out: list[Action] = []
        if self.send_at is not None and now >= self.send_at:
            out.append(SendHeartbeat(running=self.active))
            # re-arm from the deadline, but never queue a burst after a stall
            self.send_at += self.s.keepalive
            if self.send_at <= now:
                self.send_at = now + self.s.keepalive
        if self.dead_at is not None and now >= self.dead_at:
            if self.s.backup_active:
                self.peer = Peer.DEAD
            if not self.active and self._may_activate():
                out.append(Log("partner dead: activating lvs"))
                out += self._activate()
            self.dead_at = now + self.s.deadtime
        return out

    def links(self, ok: bool, now: float) -> list[Action]:
        """§3.7: a monitored NIC lost its link (give up, refuse to activate) or got it back."""
        if not self.started or self.stopped or not self.s.links_watched:
            return []
        if not ok and not self.link_fail:
            self.link_fail = True
            out: list[Action] = [Log("Local NIC link failure: Pulse disabled")]
            if self.active:
                out += self._deactivate()
            return out
        if ok and self.link_fail:
            self.link_fail = False
            return [Log("Local NIC link(s) restored: Pulse enabled")]
        return []

    def child_failed(self, now: float) -> list[Action]:
        """§3.6 SIGCHLD: the director died. Give up; no re-activation until a RUNNING
        heartbeat has been seen (CHILDFAIL)."""
        if not self.started or self.stopped:
            return []
        self.child_fail = True
        out: list[Action] = [Log("director exited: deactivating lvs")]
        if self.active:
            out += self._deactivate()
        return out

    def stop(self, now: float, clean: bool = True) -> list[Action]:
        """§3.6 SIGTERM: deactivate and exit. ``clean`` (our extension) first tells the
        peer with a STOPPED heartbeat, so it takes over at once instead of after
        deadtime (it is in the §3.5 table: STOPPED to an inactive router activates it)."""
        if self.stopped:
            return []
        self.stopped = True
        out: list[Action] = [Log("Terminating: deactivating lvs")]
        if clean and self.s.backup_active:
            out.append(SendHeartbeat(running=False))
        if self.active:
            out += self._deactivate()
        self.send_at = self.dead_at = None
        return out

    # ---- queries ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` has something to do."""
        times = [t for t in (self.send_at, self.dead_at) if t is not None]
        return min(times) if times else None

    # ---- helpers ---------------------------------------------------------------

    def _may_activate(self) -> bool:
        return not self.link_fail and not self.child_fail

    def _activate(self) -> list[Action]:
        """§3.5 activateLvs (0.8.x order): active_cmd, sync daemon master, then the
        director, VIPs and ARPs (one Activate for the adapter)."""
        self.active = True
        out: list[Action] = []
        if self.s.has_active_cmd:
            out.append(RunCommand("active_cmd"))
        if self.s.syncdaemon:
            out.append(SyncRole("master"))
        out.append(Activate())
        return out

    def _deactivate(self) -> list[Action]:
        """§3.5 deactivateLvs: inactive_cmd, sync daemon backup, then stop the director
        and take the VIPs down."""
        self.active = False
        return [*self._inactive_side(), Deactivate()]

    def _inactive_side(self) -> list[Action]:
        out: list[Action] = []
        if self.s.has_inactive_cmd:
            out.append(RunCommand("inactive_cmd"))
        if self.s.syncdaemon:
            out.append(SyncRole("backup"))
        return out
