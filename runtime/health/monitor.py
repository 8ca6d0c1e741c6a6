"""Runs every health check of a configuration in one asyncio loop.

One lightweight task per active real server. Each server's checks start on a fixed
grid, ``epoch + phase + k * interval``, where ``phase`` is a stable hash of the
virtual's and server's names spread over the interval: the load is even over time
(no thundering herd at the top of each second) and a server keeps its slot across
reloads. At most ``concurrency`` probes run at once. A check that overruns its slot
makes the server skip the slots it missed rather than queue them.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from compiler.model import Config, ServiceType

from . import weights
from .check import CheckSpec, check_spec, load_argv, load_command
from .nanny import Change, Nanny, quiesces
from .probes import ProbeResult, probe

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


class _Server:
    """One checked real server: its spec, its machine and its last results."""

    __slots__ = (
        "checks",
        "failures",
        "fraction",
        "key",
        "last_check",
        "last_detail",
        "last_latency",
        "last_ok",
        "load_cmd",
        "nanny",
        "spec",
        "task",
    )

    def __init__(self, key: tuple[str, str], spec: CheckSpec, nanny: Nanny, load_cmd: str | None):
        self.key = key
        self.spec = spec
        self.nanny = nanny
        self.load_cmd = load_cmd
        self.fraction = zlib.crc32("\0".join(key).encode()) / 2**32
        self.task: asyncio.Task[None] | None = None
        self.last_ok: bool | None = None
        self.last_detail = ""
        self.last_latency: float | None = None
        self.last_check: float | None = None
        self.checks = 0
        self.failures = 0


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
    when a server's checker dies from an unexpected error (lvsd's ``hard_shutdown``)."""

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
    ) -> None:
        self._config = config
        self._on_event = on_event
        self._clock = clock
        self._concurrency = concurrency
        self._sem: asyncio.Semaphore | None = None
        self._load = load_source or CommandLoadSource()
        self._observer = observer
        self._on_crash = on_crash
        self._servers: dict[tuple[str, str], _Server] = {}
        self._epoch: float | None = None
        self._quiesce: dict[str, bool] = {}
        self._apply(config)

    # -- public API

    async def start(self) -> None:
        """Begin checking; each server's first check falls within the first interval."""
        if self._epoch is not None:
            return
        loop = asyncio.get_running_loop()
        self._sem = asyncio.Semaphore(self._concurrency)
        self._epoch = loop.time()
        for server in self._servers.values():
            self._launch(server)

    async def stop(self) -> None:
        """Stop all checks (running probes are cancelled, send_programs killed)."""
        tasks = [s.task for s in self._servers.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for server in self._servers.values():
            server.task = None
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._epoch = None

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
            self._drop(self._servers.pop(key))
        for key, (spec, vs, rs, cmd) in plan.items():
            old = self._servers.get(key)
            if old is not None and _target(old.spec) != _target(spec):
                self._drop(self._servers.pop(key))
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
            old.spec = spec
            old.load_cmd = cmd
            old.nanny.load_monitor = cmd is not None
            old.nanny.retime(timeout=vs.timeout, reentry=vs.reentry)
            self._emit(old, old.nanny.configure_weight(rs.weight))
            if retimed and old.task is not None:
                old.task.cancel()
                self._launch(old)

    def _drop(self, server: _Server) -> None:
        if server.task is not None:
            server.task.cancel()
            server.task = None

    def _launch(self, server: _Server) -> None:
        task = asyncio.get_running_loop().create_task(self._run(server))
        server.task = task
        task.add_done_callback(lambda t, s=server: self._ended(s, t))

    def _ended(self, server: _Server, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            log.error("health checker of %s/%s died: %r", *server.key, err)
            if self._on_crash is not None:
                self._on_crash(server.key[0], server.key[1], err)

    # -- the per-server loop

    def _next_slot(self, server: _Server, after: float) -> float:
        """The first grid time strictly after ``after``."""
        assert self._epoch is not None
        interval = server.spec.timeout
        base = self._epoch + server.fraction * interval
        k = math.floor((after - base) / interval) + 1
        return base + max(k, 0) * interval

    async def _run(self, server: _Server) -> None:
        loop = asyncio.get_running_loop()
        assert self._sem is not None and self._epoch is not None
        due = self._next_slot(server, max(loop.time(), self._epoch) - 1e-9)
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._sem:
                started = loop.time()
                result = await probe(server.spec)
            self._record(server, due, started, result)
            observed = server.nanny.observe(result.ok, result.detail)
            self._emit(server, observed.change)
            if observed.wants_load and server.load_cmd is not None:
                figure = await self._load.load(
                    server.load_cmd, server.spec.host, server.spec.timeout
                )
                self._emit(server, server.nanny.load(figure))
            due = self._next_slot(server, max(due, loop.time()))

    def _record(self, server: _Server, due: float, started: float, result: ProbeResult) -> None:
        server.checks += 1
        if not result.ok:
            server.failures += 1
        server.last_ok = result.ok
        server.last_detail = result.detail
        server.last_latency = result.latency
        server.last_check = self._clock()
        if self._observer is not None:
            self._observer(server.key[0], server.key[1], due, started, result)

    def _emit(self, server: _Server, change: Change | None) -> None:
        if change is None:
            return
        up = server.nanny.up if change.up is None else change.up
        event = ServerEvent(server.key[0], server.key[1], up, change.weight, change.reason)
        try:
            self._on_event(event)
        except Exception:
            log.exception("health event handler failed on %s", event)
