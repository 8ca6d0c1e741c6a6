"""Runs every health check of a configuration in one asyncio loop.

No timer and no task per server: TCP checks run as callbacks on a
:class:`~runtime.health.reactor.FastReactor` (their time limits in its shared
:class:`~runtime.health.reactor.Expiry` queues), other checks as short tasks. Each
server's checks start on a fixed grid, ``epoch + phase + k * interval``, where
``phase`` is a stable hash of the virtual's and server's names spread over the
interval: the load is even over time (no thundering herd at the top of each second)
and a server keeps its slot across reloads. The servers of one interval sit on one
:class:`~runtime.health.schedule.SlotRing`, swept by one reactor timer that starts the
checks whose slots have come. At most ``concurrency`` probes run at once. A check
starts at a slot only if the server's previous check ended before it: a check that
overruns its slot makes the server skip the slots it missed rather than queue them.

The decisions are :class:`~runtime.health.nanny.Nanny`'s; this module only schedules,
probes, records and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from compiler.model import Config, ServiceType

from . import weights
from .check import CheckSpec, check_spec, load_argv, load_command
from .nanny import Change, Nanny, quiesces
from .probes import ProbeResult, TcpCheck, literal_address, probe
from .reactor import Cancellable, FastReactor
from .schedule import SlotRing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerEvent:
    """A real server's state or weight changed. ``weight`` is the weight to use while
    up; None means the configured weight. On ``up = False`` the director removes the
    server, or sets weight 0 when the virtual quiesces (:meth:`HealthMonitor.quiesces`)."""

    virtual: str
    server: str
    up: bool
    weight: int | None
    reason: str


@dataclass(frozen=True)
class ServerHealth:
    """A snapshot of one real server's checks, for status and metrics; ``last_check``
    is on the monitor's clock (monotonic)."""

    virtual: str
    server: str
    address: str
    port: int
    up: bool
    weight: int | None
    last_ok: bool | None
    last_detail: str
    last_latency: float | None
    last_check: float | None
    checks: int
    failures: int


class LoadSource(Protocol):
    """Where load figures come from: the 1-minute load of the real server at
    ``address`` read with ``command`` (the resolved ``load_monitor``), or None when it
    could not be read."""

    async def load(self, command: str, address: str, timeout: float) -> float | None: ...


class CommandLoadSource:
    """Runs the load command as nanny 0.8 did (``CMD RIP [uptime]``, no shell, killed
    after ``timeout``) and parses the load from its output."""

    async def load(self, command: str, address: str, timeout: float) -> float | None:
        argv = load_argv(command, address)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            log.warning("load monitor %s: %s", argv[0], err)
            return None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            await _reap(proc)
            return None
        except asyncio.CancelledError:
            await _reap(proc)
            raise
        if proc.returncode != 0:
            return None
        return weights.parse_load(out.decode("utf-8", "replace"))


async def _reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


Observer = Callable[[str, str, float, float, ProbeResult], None]

# The reactor's timer step: checks whose slots (and time limits) fall within one step
# are handled in one wake-up of the loop. 4 ms: 250 wake-ups a second rather than
# 1,000, for a start at most ~4 ms after the slot (the detection budget is seconds).
RESOLUTION = 0.004


class _Server:
    """One checked real server: its spec, its machine, its schedule and last results.

    ``gen`` changes whenever the server's schedule is torn down (stop, removal, new
    timeout), so callbacks of an abandoned check recognise themselves as stale.
    ``after``: a slot starts a check only if it is later than this (the end of the
    previous check; infinite while one runs or waits for a free place)."""

    __slots__ = (
        "address",
        "after",
        "check",
        "checks",
        "due",
        "failures",
        "fraction",
        "gen",
        "key",
        "last_check",
        "last_detail",
        "last_latency",
        "last_ok",
        "load_cmd",
        "nanny",
        "ring",
        "spec",
        "started",
        "tcp",
    )

    def __init__(self, key: tuple[str, str], spec: CheckSpec, nanny: Nanny, load_cmd: str | None):
        self.key = key
        self.nanny = nanny
        self.load_cmd = load_cmd
        self.fraction = zlib.crc32("\0".join(key).encode()) / 2**32
        self.set_spec(spec)
        self.gen = 0
        self.due = 0.0
        self.started = 0.0
        self.after = math.inf
        self.ring: SlotRing[_Server] | None = None
        self.tcp: TcpCheck | None = None  # reused from check to check
        self.check: TcpCheck | asyncio.Task[ProbeResult] | None = None
        self.last_ok: bool | None = None
        self.last_detail = ""
        self.last_latency: float | None = None
        self.last_check: float | None = None
        self.checks = 0
        self.failures = 0

    def set_spec(self, spec: CheckSpec) -> None:
        self.spec = spec
        # TCP to an address literal takes the callback fast path
        self.address = literal_address(spec) if spec.kind == "tcp" else None
        self.tcp = None  # made anew for the new spec (one in flight runs on)


def _plan(config: Config) -> dict[tuple[str, str], tuple]:
    """(virtual, server) -> (spec, virtual, server, load command) of every server to check:
    active servers with an address in active virtuals of an LVS configuration."""
    out: dict[tuple[str, str], tuple] = {}
    if config.service is not ServiceType.LVS:
        return out
    for vs in config.active_virtuals:
        cmd = load_command(config, vs)
        for rs in vs.servers:
            if rs.active and rs.address is not None:
                out[(vs.name, rs.name)] = (check_spec(vs, rs), vs, rs, cmd)
    return out


def _target(spec: CheckSpec) -> tuple:
    return (spec.kind, spec.host, spec.port)


class HealthMonitor:
    """All health checks of one configuration (see the module docstring).

    ``on_event`` is called in the loop for every state or weight change. Every server
    starts *down* (out of service) and without an event, as under nanny: the first good
    check brings it up. ``observer``, if given, sees every check as (virtual, server,
    planned start, actual start, result), on the loop's clock; ``on_crash`` is told
    when a server's checker dies from an unexpected error (lvsd's ``hard_shutdown``);
    ``resolution`` is the reactor's timer step (:data:`RESOLUTION`).

    Scheduling is callback-driven: one :class:`~runtime.health.schedule.SlotRing` and
    one reactor timer per distinct interval, TCP checks to addresses run as
    :class:`~runtime.health.probes.TcpCheck` callbacks (one object per server, reused),
    everything else (UDP, send_program, host names, load readings) as a task."""

    def __init__(
        self,
        config: Config,
        on_event: Callable[[ServerEvent], None],
        *,
        concurrency: int = 512,
        clock: Callable[[], float] = time.monotonic,
        load_source: LoadSource | None = None,
        observer: Observer | None = None,
        on_crash: Callable[[str, str, BaseException], None] | None = None,
        resolution: float = RESOLUTION,
    ) -> None:
        self._config = config
        self._resolution = resolution
        self._on_event = on_event
        self._clock = clock
        self._concurrency = max(1, concurrency)
        self._running = 0  # checks in flight
        self._waiting: deque[tuple[_Server, int]] = deque()
        self._load = load_source or CommandLoadSource()
        self._observer = observer
        self._on_crash = on_crash
        self._servers: dict[tuple[str, str], _Server] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reactor: FastReactor | None = None
        self._epoch: float | None = None
        self._rings: dict[int, SlotRing[_Server]] = {}  # interval -> its servers
        self._sweeps: dict[int, tuple[float, Cancellable]] = {}  # interval -> armed timer
        self._dequeuing = False
        self._quiesce: dict[str, bool] = {}
        self._apply(config)

    # -- public API

    async def start(self) -> None:
        """Begin checking; each server's first check falls within the first interval."""
        if self._epoch is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._reactor = FastReactor(self._loop, resolution=self._resolution)
        self._epoch = self._loop.time()
        for server in self._servers.values():
            self._launch(server)

    async def stop(self) -> None:
        """Stop all checks (running probes are abandoned, send_programs killed)."""
        for server in self._servers.values():
            server.ring = None  # the rings go as a whole, below
        for server in self._servers.values():
            self._halt(server)
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._running = 0
        self._epoch = None
        for _, timer in self._sweeps.values():
            timer.cancel()
        self._sweeps.clear()
        self._rings.clear()
        if self._reactor is not None:
            self._reactor.close()
            self._reactor = None

    def update(self, config: Config) -> None:
        """Take a new configuration. Servers whose check target (protocol, address,
        port) is unchanged keep their state; new send/expect/program, timeout and
        reentry take effect (a new timeout moves the server to the new grid), and a new
        weight is reported for a server that is up. Removed servers stop being checked
        (no event: the director sees the removal in the config). A server whose target
        changed is checked afresh: if it was up, a down event says so."""
        self._config = config
        self._apply(config)

    def snapshot(self) -> list[ServerHealth]:
        out = []
        for (virtual, server), s in self._servers.items():
            out.append(
                ServerHealth(
                    virtual=virtual,
                    server=server,
                    address=s.spec.host,
                    port=s.spec.port,
                    up=s.nanny.up,
                    weight=None if s.nanny.weight == s.nanny.configured else s.nanny.weight,
                    last_ok=s.last_ok,
                    last_detail=s.last_detail,
                    last_latency=s.last_latency,
                    last_check=s.last_check,
                    checks=s.checks,
                    failures=s.failures,
                )
            )
        return out

    def records(self) -> dict[tuple[str, str], tuple]:
        """Per server, its check record as (last_ok, last_detail, last_latency, checks,
        failures): what status and metrics show, without building a
        :class:`ServerHealth` per server (the daemon refreshes its status every few
        seconds; at 10,000 servers that was a third of the refresh)."""
        return {
            key: (s.last_ok, s.last_detail, s.last_latency, s.checks, s.failures)
            for key, s in self._servers.items()
        }

    def quiesces(self, virtual: str) -> bool:
        """Whether ``virtual`` has ``quiesce_server = 1``: a down server that has been in
        service is set to weight 0 instead of being removed."""
        return self._quiesce.get(virtual, False)

    def override(self, virtual: str, server: str, up: bool | None) -> None:
        """nanny's SIGUSR2 / SIGUSR1 / SIGHUP: force a server up or down and freeze its
        checks, or (None) resume normal checking."""
        s = self._servers[(virtual, server)]
        self._emit(s, s.nanny.force(up))

    # -- configuration

    def _apply(self, config: Config) -> None:
        plan = _plan(config)
        self._quiesce = {vs.name: quiesces(vs) for vs in config.virtuals}
        for key in [k for k in self._servers if k not in plan]:
            self._halt(self._servers.pop(key))
        for key, (spec, vs, rs, cmd) in plan.items():
            old = self._servers.get(key)
            if old is not None and _target(old.spec) != _target(spec):
                self._halt(self._servers.pop(key))
                if old.nanny.up:
                    self._emit(old, Change(False, None, "address, port or protocol changed"))
                old = None
            if old is None:
                nanny = Nanny(
                    weight=rs.weight,
                    timeout=vs.timeout,
                    reentry=vs.reentry,
                    load_monitor=cmd is not None,
                )
                server = self._servers[key] = _Server(key, spec, nanny, cmd)
                if self._epoch is not None:
                    self._launch(server)
                continue
            retimed = old.nanny.interval != spec.timeout
            old.set_spec(spec)
            old.load_cmd = cmd
            old.nanny.load_monitor = cmd is not None
            old.nanny.retime(timeout=vs.timeout, reentry=vs.reentry)
            self._emit(old, old.nanny.configure_weight(rs.weight))
            if retimed and self._epoch is not None:
                self._halt(old)
                self._launch(old)

    # -- the per-server schedule

    def _launch(self, server: _Server) -> None:
        """Put the server on the ring of its interval: its first check at its first
        grid slot from now on."""
        assert self._reactor is not None and self._epoch is not None
        server.gen += 1
        now = self._reactor.time()
        server.after = max(now, self._epoch) - 1e-9
        interval = server.spec.timeout
        ring = self._rings.get(interval)
        if ring is None:
            ring = self._rings[interval] = SlotRing(self._epoch, interval)
            ring.start(now)
        ring.add(server, server.fraction)
        server.ring = ring
        self._arm_sweep(interval, ring)

    def _arm_sweep(self, interval: int, ring: SlotRing[_Server]) -> None:
        """Set the ring's one timer for its next slot (sooner if one was set later)."""
        assert self._reactor is not None
        when = ring.next_slot()
        armed = self._sweeps.get(interval)
        if armed is not None:
            if when is not None and armed[0] <= when:
                return
            armed[1].cancel()
            del self._sweeps[interval]
        if when is not None:
            self._sweeps[interval] = (when, self._reactor.call_at(when, self._sweep, interval))

    def _halt(self, server: _Server) -> None:
        """Tear down the server's schedule and abandon a check in flight."""
        server.gen += 1
        server.after = math.inf
        if server.ring is not None:
            server.ring.remove(server)
            server.ring = None
        check, server.check = server.check, None
        if check is not None:
            check.cancel()
            self._running -= 1
            self._dequeue()

    def _sweep(self, interval: int) -> None:
        """The ring's timer: start the checks whose slots have come."""
        self._sweeps.pop(interval, None)
        ring = self._rings.get(interval)
        reactor = self._reactor
        if ring is None or reactor is None:
            return
        try:
            concurrency, waiting, clock = self._concurrency, self._waiting, reactor.time
            for server, slot in ring.due(clock() + 1e-6):
                if slot <= server.after:
                    continue  # still running, waiting, or ended after this slot
                server.due = slot
                server.after = math.inf
                if self._running >= concurrency:
                    waiting.append((server, server.gen))
                    continue
                check = server.tcp
                if check is None:  # not a TCP check made yet: the general way
                    self._begin(server)
                    continue
                # _begin, in short, for the common case
                self._running += 1
                server.started = clock()
                server.check = check
                check.start()
        finally:
            if interval not in self._sweeps:
                self._arm_sweep(interval, ring)

    def _dequeue(self) -> None:
        if self._dequeuing:  # a check ended (failed at once) while starting one
            return
        self._dequeuing = True
        try:
            while self._waiting and self._running < self._concurrency:
                server, gen = self._waiting.popleft()
                if gen == server.gen and server.check is None:
                    self._begin(server)
        finally:
            self._dequeuing = False

    def _begin(self, server: _Server) -> None:
        reactor = self._reactor
        assert reactor is not None
        self._running += 1
        server.started = reactor.time()
        address = server.address
        if address is not None:
            check = server.tcp
            if check is None:
                check = server.tcp = TcpCheck(
                    reactor, server.spec, *address, partial(self._done, server)
                )
            server.check = check
            check.start()
        else:
            task = reactor.loop.create_task(probe(server.spec))
            server.check = task
            gen = server.gen

            def finished(t: asyncio.Task[ProbeResult]) -> None:
                if not t.cancelled() and gen == server.gen:
                    self._done(server, _result_of(t))

            task.add_done_callback(finished)

    def _done(self, server: _Server, result: ProbeResult) -> None:
        """A check finished: record it, let the machine decide, report; the server's
        next check is at its first slot after now."""
        server.check = None
        self._running -= 1
        try:
            ok = result.ok
            server.checks += 1
            if not ok:
                server.failures += 1
            server.last_ok = ok
            server.last_detail = result.detail
            server.last_latency = result.latency
            server.last_check = self._clock()
            if self._observer is not None:
                self._observer(server.key[0], server.key[1], server.due, server.started, result)
            observed = server.nanny.observe(ok, result.detail)
            if observed.change is not None:
                self._emit(server, observed.change)
            if observed.wants_load and server.load_cmd is not None:
                self._read_load(server, server.gen)
            reactor = self._reactor
            assert reactor is not None
            server.after = reactor.time()
        except Exception as err:
            # the server is checked no more (its ``after`` stays infinite)
            log.exception("health checker of %s/%s died", *server.key)
            if self._on_crash is not None:
                self._on_crash(server.key[0], server.key[1], err)
        finally:
            if self._waiting:
                self._dequeue()

    def _read_load(self, server: _Server, gen: int) -> None:
        assert self._loop is not None and server.load_cmd is not None
        task = self._loop.create_task(
            self._load.load(server.load_cmd, server.spec.host, server.spec.timeout)
        )
        self._tasks.add(task)

        def loaded(t: asyncio.Task[float | None]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or gen != server.gen:
                return
            figure = None if t.exception() is not None else t.result()
            self._emit(server, server.nanny.load(figure))

        task.add_done_callback(loaded)

    def _emit(self, server: _Server, change: Change | None) -> None:
        if change is None:
            return
        up = server.nanny.up if change.up is None else change.up
        event = ServerEvent(server.key[0], server.key[1], up, change.weight, change.reason)
        try:
            self._on_event(event)
        except Exception:
            log.exception("health event handler failed on %s", event)


def _result_of(task: asyncio.Task[ProbeResult]) -> ProbeResult:
    err = task.exception()
    if err is not None:
        return ProbeResult(False, 0.0, f"internal error: {err!r}")
    return task.result()
