"""The asyncio shell around the pulse state machine: sockets, clock, netlink, ARP.

:class:`Pulse` owns one timer, the heartbeat sockets and a worker that carries out
the machine's slow actions (VIPs, the director's callbacks) strictly in order, while
heartbeats keep flowing. The decisions are all in runtime/pulse/machine.py.

Typical use by the daemon::

    pulse = Pulse(config, on_activate=director.start, on_deactivate=director.stop)
    task = asyncio.create_task(pulse.run())
    ...
    await pulse.stop()          # SIGTERM: tell the peer (STOPPED), give up the VIPs

Cancelling ``run()`` is a crash (the VIPs stay where they are, as after SIGKILL);
``stop()`` is the orderly way out.

Heartbeats (spec §3.3): UDP from ``own:heartbeat_port`` to ``partner:heartbeat_port``
and, when the private addresses differ, the same again between them. Only packets
from the partner's two addresses count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from compiler.model import Config

from . import garp, machine, wire
from .links import LinkWatcher
from .machine import Machine, Role
from .vip import IPAddress, Netlink, VipSpec, desired_vips, resolve

log = logging.getLogger("pulse")

Callback = Callable[[], Awaitable[None]]


class PulseExit(Exception):
    """pulse cannot or must not run (piranha exits at these points, spec §3.2)."""


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot for ``lvs-router status`` and the control socket."""

    role: str  # master | backup
    state: str  # starting | active | inactive | stopped
    peer: str  # unknown | running | stopped | dead
    last_heartbeat_age: float | None  # seconds since the last valid heartbeat
    link_fail: bool
    child_fail: bool
    vips: tuple[str, ...]
    heartbeats_sent: int
    garps_sent: int
    packets: dict[str, int]  # accepted and rejected by reason (wire.Reject)
    transitions: int

    def as_dict(self) -> dict[str, object]:
        """Plain data for the control socket's JSON."""
        return {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]


@dataclass
class _Path:
    """One heartbeat path: our socket and the partner's address on it."""

    sock: socket.socket
    partner: IPAddress
    port: int


@dataclass
class _Counts:
    sent: int = 0
    send_errors: int = 0
    garps: int = 0
    transitions: int = 0
    commands: set[asyncio.Task[int]] = field(default_factory=set)  # not waited for


@dataclass(frozen=True, slots=True)
class _DropStaleVips:
    """Give up the VIPs found at start (see Pulse._adopt_vips)."""


def _noop() -> Callback:
    async def nothing() -> None:
        return None

    return nothing


class Pulse:
    """One router's pulse. ``run()`` until ``stop()``; see the module docstring.

    ``on_activate`` runs after the VIPs are up and before they are announced (so
    traffic is drawn only to a ready director); ``on_deactivate`` before they are
    removed. If ``on_activate`` raises, it counts as the director dying (§3.6
    CHILDFAIL). ``on_sync_role("master"|"backup")`` is called when ``syncdaemon = 1``.
    ``interface_for_vip`` maps a device named in lvs.cf (``eth0``) to a local one.
    ``key`` switches heartbeats to the authenticated format (both routers need it).
    ``arp_announce`` adds an RFC 5227 announcement after each of send_arp's frames
    (neighbours then switch at once instead of after their ARP locktime).
    ``backup_defers_to_master=False`` applies piranha 0.8.6's §3.5 row 5 to the letter
    (see docs/pulse.md).
    ``announce_early()`` says, at the moment of a takeover, that the dataplane already
    serves the VIPs without the addresses on the device (XDP runs before the stack; a
    hot standby's director runs): the first round of ARPs then goes out straight from
    the callback that decided, before the addresses are added and ``on_activate``
    runs. Where the stack itself must hold the address (IPVS, NAT's ``nat_router``,
    a director that still has to start) it must return False, and the order above
    holds.
    """

    def __init__(
        self,
        config: Config,
        *,
        on_activate: Callback | None = None,
        on_deactivate: Callback | None = None,
        on_sync_role: Callable[[str], Awaitable[None]] | None = None,
        interface_for_vip: Callable[[str], str] = lambda d: d,
        key: wire.Key | None = None,
        forceactive: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        netlink: Netlink | None = None,
        garp_count: int = 5,
        garp_interval: float = 1.0,
        shutdown_heartbeat: bool = True,
        auth_window_s: float = wire.DEFAULT_WINDOW_S,
        link_poll_s: float | None = None,
        backup_defers_to_master: bool = True,
        arp_announce: bool = False,
        announce_early: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.on_activate = on_activate or _noop()
        self.on_deactivate = on_deactivate or _noop()
        self.on_sync_role = on_sync_role
        self.interface_for_vip = interface_for_vip
        self.forceactive = forceactive
        self.clock = clock
        self.wall_clock = wall_clock
        self.netlink = netlink or Netlink()
        self.garp_count = garp_count
        self.garp_interval = garp_interval
        self.shutdown_heartbeat = shutdown_heartbeat
        self.link_poll_s = link_poll_s
        self.backup_defers_to_master = backup_defers_to_master
        self.arp_announce = arp_announce
        self.announce_early = announce_early or (lambda: False)
        self.signer = wire.Signer(key)
        self.verifier = wire.Verifier(key, window_s=auth_window_s)
        self.role: Role | None = None
        self.machine: Machine | None = None
        self.vips: tuple[VipSpec, ...] = ()
        self.held: list[VipSpec] = []
        self.adopted: list[VipSpec] = []  # found up at start, kept until decided
        self._drop_queued = False
        self.paths: list[_Path] = []
        self.counts = _Counts()
        self._work: asyncio.Queue[machine.Action | _DropStaleVips | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._garps: list[asyncio.Task[int]] = []
        self._announcers: dict[VipSpec, garp.Announcer] = {}
        self._announced: set[VipSpec] = set()  # first round already out (announce_early)
        self.timeline: dict[str, float] = {}  # the last takeover, monotonic (see _log_timeline)
        self._exit: PulseExit | None = None
        self.state_changed = asyncio.Condition()
        self.ready = asyncio.Event()  # set once the sockets are open and start-up ran

    # ---- public ------------------------------------------------------------------

    async def run(self) -> None:
        """Start (role, sockets, start-up actions) and serve until :meth:`stop`.
        Raises :class:`PulseExit` where piranha would exit."""
        addrs = await asyncio.to_thread(self.netlink.local_addresses)
        if self.config.primary is None:
            raise PulseExit("no primary address in the configuration")
        primary = resolve(self.config.primary)
        self.role = Role.MASTER if primary in addrs else Role.BACKUP
        settings = machine.settings_from_config(
            self.config,
            self.role,
            forceactive=self.forceactive,
            backup_defers_to_master=self.backup_defers_to_master,
        )
        if not self.config.active_virtuals:
            raise PulseExit(f"pulse: no active lvs services defined in {self.config.file}")
        self.vips = desired_vips(self.config, self.interface_for_vip)
        self.machine = Machine(settings)
        worker = asyncio.create_task(self._worker(), name="pulse-worker")
        tasks: list[asyncio.Task[None]] = [worker]
        try:
            await self._prepare_announcers()
            if settings.backup_active:
                self._open_sockets(addrs)
            if not self.forceactive:
                await self._adopt_vips()
            self._execute(self.machine.start(self.clock()))
            if self._exit:
                raise self._exit
            self.ready.set()
            if settings.links_watched:
                tasks.append(asyncio.create_task(self._watch_links(addrs), name="pulse-links"))
            await self._timer_loop()
        finally:
            self._stopping = True
            for t in tasks[1:]:
                t.cancel()
            await self._work.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            for g in self._garps:
                g.cancel()
            for a in self._announcers.values():
                a.close()
            for p in self.paths:
                asyncio.get_running_loop().remove_reader(p.sock.fileno())
                p.sock.close()
            self.paths.clear()
            self._stopped.set()

    async def stop(self, clean: bool = True) -> None:
        """SIGTERM (§3.6): give everything up and end ``run()``. With ``clean`` (and
        ``shutdown_heartbeat``) the peer first gets a STOPPED heartbeat."""
        if self.machine is None or self._stopping:
            self._stopping = True
            self._wake.set()
            return
        self._execute(self.machine.stop(self.clock(), clean and self.shutdown_heartbeat))
        self._release_adopted()
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    def child_failed(self) -> None:
        """The director died (piranha's SIGCHLD for lvsd, §3.6)."""
        if self.machine is not None:
            self._execute(self.machine.child_failed(self.clock()))
            self._release_adopted()
            self._wake.set()

    def status(self) -> Status:
        m = self.machine
        if m is None:
            state = "starting"
        elif m.stopped:
            state = "stopped"
        else:
            state = "active" if m.active else "inactive"
        age = None
        if m is not None and m.last_heartbeat is not None:
            age = max(0.0, self.clock() - m.last_heartbeat)
        return Status(
            role=self.role.value if self.role else "unknown",
            state=state,
            peer=m.peer.value if m else "unknown",
            last_heartbeat_age=age,
            link_fail=bool(m and m.link_fail),
            child_fail=bool(m and m.child_fail),
            vips=tuple(str(v.address) for v in [*self.held, *self.adopted]),
            heartbeats_sent=self.counts.sent,
            garps_sent=self.counts.garps,
            packets=self.verifier.counters.snapshot(),
            transitions=self.counts.transitions,
        )

    async def wait_for(self, predicate: Callable[[Status], bool]) -> Status:
        """Wait until a status snapshot satisfies ``predicate`` (checked after every
        action the worker carries out)."""
        async with self.state_changed:
            await self.state_changed.wait_for(lambda: predicate(self.status()))
        return self.status()

    # ---- sockets -------------------------------------------------------------------

    def _open_sockets(self, addrs: dict[IPAddress, str]) -> None:
        c = self.config
        master = self.role is Role.MASTER
        own = resolve(c.primary if master else c.backup)  # type: ignore[arg-type]
        partner = resolve(c.backup if master else c.primary)  # type: ignore[arg-type]
        pairs = [(own, partner)]
        pp, bp = c.primary_private, c.backup_private
        if pp is not None and bp is not None and resolve(pp) != resolve(c.primary):  # type: ignore[arg-type]
            own_p, partner_p = (resolve(pp), resolve(bp)) if master else (resolve(bp), resolve(pp))
            pairs.append((own_p, partner_p))
        loop = asyncio.get_running_loop()
        for local, remote in pairs:
            family = socket.AF_INET6 if isinstance(local, IPv6Address) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setblocking(False)
                sock.bind((str(local), c.heartbeat_port))
            except OSError as e:
                sock.close()
                raise PulseExit(
                    f"cannot create heartbeat socket on {local}:{c.heartbeat_port}: {e}"
                ) from e
            path = _Path(sock, remote, c.heartbeat_port)
            self.paths.append(path)
            loop.add_reader(sock.fileno(), self._readable, sock)

    def _partners(self) -> set[IPAddress]:
        return {p.partner for p in self.paths}

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, src = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._received(data, src[0])

    def _received(self, data: bytes, source: str) -> None:
        if self.machine is None or self._stopping:
            return
        try:
            addr: IPAddress = IPv4Address(source) if ":" not in source else IPv6Address(source)
        except ValueError:
            return
        if addr not in self._partners():
            self.verifier.reject_source()
            log.debug("Unexpected heartbeat from %s", source)
            return
        result = self.verifier.check(data, self.wall_clock())
        if isinstance(result, wire.Reject):
            log.warning("heartbeat from %s rejected: %s", source, result.value)
            return
        self._execute(self.machine.receive(result, self.clock()))
        self._release_adopted()
        self._wake.set()

    def _send_heartbeat(self, running: bool) -> None:
        packet = self.signer.packet(running, self.wall_clock())
        for p in self.paths:
            try:
                p.sock.sendto(packet, (str(p.partner), p.port))
                self.counts.sent += 1
            except OSError as e:
                self.counts.send_errors += 1
                if e.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAGAIN):
                    log.warning("heartbeat to %s: %s", p.partner, e)

    # ---- the loop and the actions ----------------------------------------------------

    async def _timer_loop(self) -> None:
        assert self.machine is not None
        while not self._stopping:
            deadline = self.machine.get_timer()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._stopping:
                break
            # heartbeats that queued up while we were not scheduled count first, so
            # a stalled (or SIGSTOPped) router does not declare a live partner dead
            for p in self.paths:
                self._readable(p.sock)
            due = self.machine.dead_at
            now = self.clock()
            self._execute(self.machine.handle_timer(now), now, due)
        # let the worker finish the stop's actions (deactivation) before run() returns
        await self._work.join()

    def _execute(
        self, actions: list[machine.Action], now: float | None = None, due: float | None = None
    ) -> None:
        """Fast actions now (heartbeats, log lines); slow ones to the ordered worker.
        An activation starts a new timeline (``due``: the dead timer's deadline when
        it was the cause); with ``announce_early`` its first ARPs go out here."""
        for a in actions:
            match a:
                case machine.Activate():
                    t = self.clock() if now is None else now
                    self.timeline = {"decided": t} if due is None else {"due": due, "decided": t}
                    self._announced.clear()
                    if self.announce_early():
                        self._announce_round(self.vips)
                    self._work.put_nowait(a)
                case machine.Log(message=m):
                    log.info("%s", m)
                case machine.SendHeartbeat(running=r):
                    self._send_heartbeat(r)
                case machine.Exit(reason=r):
                    log.error("%s", r)
                    self._exit = PulseExit(r)
                case _:
                    self._work.put_nowait(a)

    async def _worker(self) -> None:
        while True:
            action = await self._work.get()
            try:
                if action is None:
                    return
                await self._carry_out(action)
            except Exception:
                log.exception("pulse action %s failed", action)
            finally:
                self._work.task_done()
                async with self.state_changed:
                    self.state_changed.notify_all()

    async def _carry_out(self, action: machine.Action | _DropStaleVips) -> None:
        match action:
            case _DropStaleVips():
                await self._drop_stale_vips()
            case machine.Activate():
                await self._activate()
            case machine.Deactivate():
                await self._deactivate()
            case machine.ReArp():
                self._announced.clear()
                self._start_garps()
            case machine.RunCommand(which=which):
                await self._run_command(getattr(self.config, which))
            case machine.SyncRole(role=role):
                if self.on_sync_role is not None:
                    await self.on_sync_role(role)

    async def _activate(self) -> None:
        self.counts.transitions += 1
        self.adopted.clear()  # the VIPs below include them
        for spec in self.vips:
            try:
                await asyncio.to_thread(self.netlink.add, spec)
                if spec not in self.held:
                    self.held.append(spec)
            except Exception as e:  # a missing device must not stop the other VIPs
                log.error("cannot bring up %s on %s: %s", spec.address, spec.device, e)
        self.timeline["vips"] = self.clock()
        try:
            await self.on_activate()
        except Exception:
            log.exception("director failed to start")
            assert self.machine is not None
            self._execute(self.machine.child_failed(self.clock()))
            return
        self.timeline["director"] = self.clock()
        self._start_garps()
        self._log_timeline()

    async def _deactivate(self) -> None:
        self.counts.transitions += 1
        self.adopted.clear()  # removed below with the rest
        self._cancel_garps()
        try:
            await self.on_deactivate()
        except Exception:
            log.exception("director failed to stop")
        for spec in self.vips:
            try:
                await asyncio.to_thread(self.netlink.remove, spec)
            except Exception as e:
                log.error("cannot take down %s on %s: %s", spec.address, spec.device, e)
            if spec in self.held:
                self.held.remove(spec)

    async def _adopt_vips(self) -> None:
        """VIPs already up at start were left by a run that died (a daemon restart, a
        crash). We keep them — and the dataplane keeps forwarding — until the state
        machine decides: activation keeps them; a partner heard RUNNING (it owns the
        addresses now), a link failure, or stop removes them. So a restart never
        takes an address away before another router holds it, and a primary that
        returns after a crash still does not fail back. (piranha left such aliases
        up for good.)"""
        for spec in self.vips:
            try:
                if await asyncio.to_thread(self.netlink.present, spec):
                    self.adopted.append(spec)
                    log.warning("%s is already up on %s: kept until decided", spec.address,
                                spec.device)  # fmt: skip
            except Exception as e:
                log.error("cannot check %s on %s: %s", spec.address, spec.device, e)

    def _release_adopted(self) -> None:
        """Queue the removal of adopted VIPs once they are known not to be ours."""
        m = self.machine
        if not self.adopted or self._drop_queued or m is None or m.active:
            return
        if m.peer is machine.Peer.RUNNING or m.link_fail or m.child_fail or m.stopped:
            self._drop_queued = True
            self._work.put_nowait(_DropStaleVips())

    async def _drop_stale_vips(self) -> None:
        self._drop_queued = False
        if self.machine is not None and self.machine.active:
            self.adopted.clear()  # activated meanwhile: they are held now
            return
        for spec in list(self.adopted):
            try:
                if await asyncio.to_thread(self.netlink.remove, spec):
                    log.warning("removed VIP %s from %s: the partner holds it", spec.address,
                                spec.device)  # fmt: skip
            except Exception as e:
                log.error("cannot remove %s from %s: %s", spec.address, spec.device, e)
        self.adopted.clear()

    def _cancel_garps(self) -> None:
        for t in self._garps:
            t.cancel()
        self._garps.clear()

    async def _prepare_announcers(self) -> None:
        """Build every VIP's ARP frames and open its raw socket now, at start, so a
        takeover only sends (see :class:`garp.Announcer`). A device that cannot be
        read now is tried again at the takeover."""
        for spec in self.vips:
            if spec in self._announcers:
                continue
            try:
                self._announcers[spec] = await self._new_announcer(spec)
            except Exception as e:
                log.warning("ARPs for %s not prepared (%s): will be at takeover", spec.address, e)

    async def _new_announcer(self, spec: VipSpec) -> garp.Announcer:
        mac = await asyncio.to_thread(self.netlink.mac, spec.device)
        brd = await asyncio.to_thread(self.netlink.broadcast, spec.device)
        return garp.Announcer(spec.device, spec.address, mac, brd, self.arp_announce)

    def _announce_round(self, specs: tuple[VipSpec, ...] | list[VipSpec]) -> None:
        """One round of ARPs for every prepared address among ``specs``, right now
        (non-blocking sends). The first frame's time goes into the timeline."""
        for spec in specs:
            ann = self._announcers.get(spec)
            if ann is None or spec in self._announced:
                continue
            try:
                ann.send()
            except OSError as e:
                log.error("ARP for %s on %s: %s", spec.address, spec.device, e)
                continue
            self._announced.add(spec)
            self.counts.garps += len(ann.frames)
            self.timeline.setdefault("arp", self.clock())

    def _log_timeline(self) -> None:
        """One line per takeover: where the time after the decision went (ms from the
        dead timer's deadline, or from the decision), with the monotonic origin so it
        can be laid next to a packet capture."""
        tl = self.timeline
        origin = tl.get("due", tl.get("decided"))
        if origin is None:
            return
        steps = [k for k in ("decided", "arp", "vips", "director") if k in tl]
        parts = [f"{k} +{(tl[k] - origin) * 1000:.2f} ms" for k in steps]
        what = "dead timer due" if "due" in tl else "decided"
        log.info("takeover timeline: %s at %.6f (monotonic); %s", what, origin, ", ".join(parts))

    def _start_garps(self) -> None:
        """Announce every held address, all in parallel (as piranha's children did):
        the first round at once (unless it went out early), then the repeats."""
        self._cancel_garps()
        self._announce_round(self.held)
        for spec in list(self.held):
            first_out = spec in self._announced
            self._garps.append(asyncio.create_task(self._garp(spec, first_out)))

    async def _garp(self, spec: VipSpec, first_out: bool) -> int:
        """The rest of one address's series, ``garp_interval`` apart. The MAC and
        broadcast prepared at start are read again after the first round: an address
        not prepared gets its frames now; if the device's MAC or broadcast changed
        since, the first round carried the old ones and the whole series goes out
        again at once with the new (the socket stays: only the frames change)."""
        sent = 1 if first_out else 0
        ann = self._announcers.get(spec)
        try:
            mac = await asyncio.to_thread(self.netlink.mac, spec.device)
            brd = await asyncio.to_thread(self.netlink.broadcast, spec.device)
            if ann is None:
                ann = garp.Announcer(spec.device, spec.address, mac, brd, self.arp_announce)
                self._announcers[spec] = ann
            elif ann.update(mac, brd) and sent:
                log.warning("%s changed since start: announcing %s again", spec.device,
                            spec.address)  # fmt: skip
                sent = 0
        except Exception as e:
            if ann is None:
                log.error("no ARP for %s: %s", spec.address, e)
                return 0
        for i in range(sent, self.garp_count):
            if i:
                await asyncio.sleep(self.garp_interval)
            try:
                ann.send()
            except OSError:
                break
            self.counts.garps += len(ann.frames)
            sent += 1
        log.info("gratuitous lvs arps finished for %s (%d sent)", spec.address, sent)
        return sent

    async def _run_command(self, command: str | None) -> None:
        """active_cmd / inactive_cmd: argv split on spaces, no shell, not waited for."""
        if not command:
            return
        argv = command.split()
        try:
            proc = await asyncio.create_subprocess_exec(*argv)
        except OSError as e:
            log.error("cannot run %s: %s", command, e)
            return
        # reap it in the background; keep a reference so the task is not collected
        task = asyncio.create_task(proc.wait())
        self.counts.commands.add(task)
        task.add_done_callback(self.counts.commands.discard)

    async def _watch_links(self, addrs: dict[IPAddress, str]) -> None:
        c = self.config
        master = self.role is Role.MASTER
        mine = [c.primary, c.primary_private] if master else [c.backup, c.backup_private]
        devices = [addrs[resolve(h)] for h in mine if h is not None and resolve(h) in addrs]
        assert self.machine is not None
        period = self.link_poll_s or min(max(self.machine.s.keepalive / 2, 0.05), 1.0)
        watcher = LinkWatcher.for_devices(devices, self.netlink, period)

        async def changed(ok: bool, down: tuple[str, ...]) -> None:
            if not ok:
                log.warning("link down: %s", ", ".join(down))
            assert self.machine is not None
            self._execute(self.machine.links(ok, self.clock()))
            self._release_adopted()
            self._wake.set()

        await watcher.run(changed)
