"""``lvs-router run``: the asyncio daemon that ties health checks, director and dataplane.

The only module with signals, tasks and the clock. One process replaces piranha's
lvsd and its nanny children:

* start: compile lvs.cf (errors printed as ``file:line:col`` and exit 1), load the
  dataplane (XDP: compile the program; both: refuse what it cannot serve), **adopt**
  what the dataplane holds (never a flush), start the health monitor, the control
  socket and the metrics endpoint, then tell systemd ``READY=1``;
* health events go to the pure :class:`~runtime.director.Director`; a change of its
  decision marks the state dirty and one applier task reconciles the dataplane
  (events arriving together become one sync);
* ``SIGHUP`` or the control socket's ``reload``: re-read and compile lvs.cf; on any
  error (syntax, checks, a dataplane that cannot serve it) the old config stays in
  force and the error, with its position, is logged and returned to the caller;
  otherwise the director and the monitor take the new config as a diff and the
  dataplane is reconciled: untouched services keep their state and connections;
* ``SIGTERM``/``SIGINT``: stop checking, then leave the dataplane running
  (``--on-stop keep``, the default: a restart adopts it) or remove our services
  (``--on-stop remove``); ``SIGKILL`` loses nothing, the dataplane keeps forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ClassVar

from compiler import Dialect, compile_file
from compiler.diagnostics import Severity, render_text
from compiler.model import Config

from .backends import Backend, BackendError
from .control import DEFAULT_SOCKET, ControlError, ControlServer
from .director import Director, Health, Verdict

log = logging.getLogger("lvs-router")

EXIT_OK, EXIT_ERRORS = 0, 1
TICK_S = 1.0
FIRST_ROUND_MAX_S = 5.0  # start-up: longest wait for every server's first verdict
GC_GEN0 = 50_000  # net allocations between collections of the youngest generation
COUNTERS_MAX_AGE_S = 30.0  # dataplane counters in the metrics: re-read at most this often


# --------------------------------------------------------------------------- logging


class _Formatter(logging.Formatter):
    """``<N>`` syslog priority prefixes under journald (stderr is a journal stream),
    else ``LEVEL message``; structured fields as ``key=value``."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        text = record.getMessage()
        if fields:
            text += " " + " ".join(f"{k}={_kv(v)}" for k, v in fields.items())
        if self.journald:
            return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"
        return f"{record.levelname.lower()}: {text}"


def _kv(value: object) -> str:
    s = str(value)
    return f'"{s}"' if (" " in s or not s) else s


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _log(level: int, msg: str, **fields: object) -> None:
    log.log(level, msg, extra={"fields": fields})


# --------------------------------------------------------------------------- collector


def collect_rarely() -> None:
    """Keep Python's cyclic garbage collector off the health checks' path.

    What start-up built (the compiled config, the XDP plan, the director's state)
    lives as long as the process: frozen, a full collection no longer walks it. And
    the monitor keeps one timer and one check object per server alive at any moment
    (tens of thousands, all young): each collection of the youngest generation walks
    them all, and with the default threshold (700 allocations) that happened a few
    times a second, ~2 % of a core at 10,000 servers. Nothing in the check path forms
    reference cycles (reference counting frees it), so a collection every
    ``GC_GEN0`` net allocations loses nothing but that cost."""
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)


# --------------------------------------------------------------------------- systemd


def sd_notify(state: str) -> bool:
    """Tell systemd (``Type=notify``) about our state; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(path)
            s.sendall(state.encode())
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- options


@dataclass
class Options:
    config: str
    dataplane: str = "ipvs"
    dialect: Dialect = Dialect.EXTENDED
    interface: str | None = None
    xdp_mode: str = "native"
    pin_dir: str | None = None
    real_macs: Mapping[IPv4Address | IPv6Address, bytes] = field(default_factory=dict)
    nat_interface: str | None = None  # XDP, network = nat: towards the real servers
    socket: str | None = DEFAULT_SOCKET
    metrics: tuple[str, int] | None = ("127.0.0.1", 9539)
    on_stop: str = "keep"  # keep | remove
    concurrency: int = 512
    verify_interval_s: float = 0.0  # IPVS: re-read and repair the whole table; 0 = never


class ConfigError(Exception):
    """lvs.cf cannot be used; ``text`` is the full report (with file:line:col)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def load_config(path: str, dialect: Dialect) -> Config:
    try:
        result = compile_file(path, dialect)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    if not result.ok:
        shown = [d for d in result.diagnostics if d.severity is Severity.ERROR]
        raise ConfigError(render_text(shown, {result.source.name: result.source}).rstrip())
    return result.config


def make_backend(opts: Options) -> Backend:
    if opts.dataplane == "xdp":
        from .backends import XdpBackend

        if not opts.interface:
            raise BackendError("--dataplane xdp needs --interface")
        return XdpBackend(
            opts.interface,
            pin_dir=opts.pin_dir,
            mode=opts.xdp_mode,
            static_macs=opts.real_macs,
            nat_interface=opts.nat_interface,
        )
    from .backends import IpvsBackend

    return IpvsBackend()


# --------------------------------------------------------------------------- daemon


class Daemon:
    def __init__(self, opts: Options, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.clock = clock
        self.config: Config | None = None
        self.director: Director | None = None
        self.backend: Backend | None = None
        self.monitor: Any = None
        self.control: ControlServer | None = None
        self.metrics: Any = None
        self.started = time.time()
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_error: str | None = None
        self.exit_status = EXIT_OK
        self._dirty = asyncio.Event()
        # the decision the dataplane last took (a failed apply leaves the one before)
        self._applied: Any = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._ready = False
        self._counters_cache: tuple[float | None, dict] = (None, {})
        self._counted: Config | None = None
        # every dataplane call runs on this one thread: pyroute2's sync sockets run their
        # own event loop (not usable inside ours), and an XDP compile takes seconds
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Everything up to READY; raises ConfigError/BackendError when it cannot."""
        opts = self.opts
        config = load_config(opts.config, opts.dialect)
        if opts.socket:  # first: a second daemon is refused before it touches anything
            control = ControlServer(opts.socket, self.handle)
            await control.start()
            self.control = control
        await self.open_dataplane(config)
        await self.start_director(config)
        if opts.metrics:
            from .metrics import Metrics

            self.metrics = Metrics()
            self.metrics.source = self._status_for_scrape(asyncio.get_running_loop())
            self.metrics.serve(*opts.metrics)
            self.metrics.update(await self.status())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        self._ready = True
        collect_rarely()
        sd_notify("READY=1\nSTATUS=running")
        _log(logging.INFO, "ready", socket=opts.socket or "off")

    async def open_dataplane(self, config: Config) -> None:
        """Make the backend and load ``config`` into it (XDP: compile and attach)."""
        backend = await self._call(make_backend, self.opts)
        self.backend = backend
        await self._call(backend.load, config)

    async def start_director(self, config: Config) -> None:
        """piranha's lvs + nanny: adopt what the dataplane holds, start the director,
        the health checks and the applier (runtime/router.py calls it on activation)."""
        backend = self.backend
        assert backend is not None
        adopted = await self._call(backend.adopt, config)
        self.config = config
        self.director = Director(config, adopted)
        _log(
            logging.INFO,
            "starting",
            config=self.opts.config,
            dataplane=backend.name,
            virtuals=len(config.active_virtuals),
            servers=len(self.director.managed()),
            adopted=len(adopted),
        )
        await self._apply()
        from .health.monitor import HealthMonitor

        self.monitor = HealthMonitor(
            config,
            self._on_event,
            concurrency=self.opts.concurrency,
            observer=self._on_check,
            on_crash=self._on_crash,
        )
        await self.monitor.start()
        self._tasks = [
            asyncio.create_task(self._applier(), name="applier"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]

    async def stop_director(self) -> None:
        """Stop checking and applying; the dataplane keeps what it holds."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        self.director = None

    async def run(self) -> int:
        try:
            await self.start()
        except (ConfigError, BackendError, ControlError, OSError) as err:
            if isinstance(err, ConfigError):
                text = err.text
            elif isinstance(err, BackendError):
                text = err.render()
            else:
                text = f"error: {err}"
            if self.control is not None:
                await self.control.close()
            if self.monitor is not None:
                await self.monitor.stop()
            sys.stderr.write(text.rstrip() + "\n")
            _log(logging.ERROR, "not started", config=self.opts.config)
            await self._close_backend()
            return EXIT_ERRORS
        await self._stop.wait()
        await self.stop()
        return self.exit_status

    # ------------------------------------------------------------------ events

    def _on_event(self, ev: Any) -> None:
        """HealthMonitor callback: ``ServerEvent(virtual, server, up, weight, reason)``."""
        d = self.director
        if d is None:
            return
        changed = d.server_event(ev.virtual, ev.server, ev.up, ev.weight, ev.reason, self.clock())
        fields: dict[str, object] = {"virtual": ev.virtual, "server": ev.server}
        if ev.up:
            fields["weight"] = ev.weight if ev.weight is not None else "configured"
        elif (
            d.health((ev.virtual, ev.server)) is not None
            and d.placement((ev.virtual, ev.server)).present
        ):
            fields["quiesced"] = "weight 0"
        _log(
            logging.INFO if changed else logging.DEBUG,
            f"server {'up' if ev.up else 'down'}",
            **fields,
            reason=ev.reason,
        )
        if changed:
            self._dirty.set()

    def _on_check(self, virtual: str, server: str, _due: float, _start: float, result: Any) -> None:
        """Every check's result. The monitor reports changes only, and every server
        starts *down* there; a server we adopted as in (unknown to the director) whose
        first check fails is no change to the monitor, so it is told here."""
        if self.metrics is not None:
            self.metrics.observe_check(virtual, server, result.ok, result.latency)
        if result.ok:  # 10,000 a second at scale: nothing more to do for a good one
            return
        d = self.director
        if (
            d is not None
            and d.health((virtual, server)) is Health.UNKNOWN
            and d.server_event(virtual, server, False, None, result.detail, self.clock())
        ):
            _log(
                logging.INFO,
                "server down",
                virtual=virtual,
                server=server,
                reason=result.detail,
            )
            self._dirty.set()

    def _on_crash(self, virtual: str, server: str, err: BaseException) -> None:
        self.checker_crashed(virtual, server, repr(err))

    def checker_crashed(self, virtual: str, server: str, reason: str) -> None:
        """A checker task died: piranha's hard_shutdown decides what that means."""
        assert self.director is not None
        verdict = self.director.checker_crashed(virtual, server, reason, self.clock())
        if verdict is Verdict.SHUTDOWN:
            self._hard_shutdown(virtual, server, reason)
        else:
            _log(
                logging.ERROR,
                "checker died! manual action needed (hard_shutdown = 0): server frozen",
                virtual=virtual,
                server=server,
                reason=reason,
            )

    def _hard_shutdown(self, virtual: str, server: str, reason: str, logged: bool = False) -> None:
        """hard_shutdown: remove our services (as lvsd did), then stop (exit 1).
        runtime/router.py overrides it under pulse; ``logged``: it said why already."""
        if not logged:
            _log(
                logging.CRITICAL,
                "checker died, shutting down (hard_shutdown = 1): removing our services",
                virtual=virtual,
                server=server,
                reason=reason,
            )
        self.exit_status = EXIT_ERRORS

        async def later() -> None:
            async with self._lock:
                assert self.backend is not None
                try:
                    for c in await self._call(self.backend.remove):
                        _log(logging.INFO, "dataplane", change=c)
                except BackendError as err:
                    _log(logging.ERROR, "could not remove our services", error=err.message)
            self._stop.set()

        asyncio.get_running_loop().create_task(later())

    async def _apply(self) -> list[str]:
        assert self.backend is not None and self.director is not None
        started = time.monotonic()
        desired = self.director.desired()
        changes = await self._call(self.backend.apply, desired)
        self._applied = desired  # what status reports as in the dataplane
        for c in changes:
            _log(logging.INFO, "dataplane", change=c)
        took = time.monotonic() - started
        _log(logging.DEBUG, "dataplane synced", took_ms=round(took * 1000, 1))
        if self.metrics is not None:
            self.metrics.observe_sync(took)
        return changes

    async def _first_round(self) -> None:
        """Start-up: hold the applier until every server has had its first verdict
        (bounded by the longest check timeout, at most ``FIRST_ROUND_MAX_S``), so that
        the servers come in with one sync of their final tables instead of one per
        trickle of first results: flows do not move between servers meanwhile, and
        at 10,000 servers each intermediate table (a service with most of its servers
        still out) would cost a Maglev fill. A server adopted from the dataplane
        serves meanwhile as it did."""
        d, config = self.director, self.config
        if d is None or config is None:
            return
        bound = max((vs.timeout for vs in config.active_virtuals), default=1)
        deadline = self.clock() + min(float(bound), FIRST_ROUND_MAX_S)
        waiting = [k for k in d.managed() if d.health(k) is Health.UNKNOWN]
        while waiting and self.clock() < deadline:
            await asyncio.sleep(0.02)
            waiting = [k for k in waiting if d.health(k) is Health.UNKNOWN]

    async def _applier(self) -> None:
        await self._first_round()
        while True:
            await self._dirty.wait()
            async with self._lock:
                self._dirty.clear()
                try:
                    await self._apply()
                except BackendError as err:
                    _log(logging.ERROR, "dataplane refused a change", error=err.message)
                    await asyncio.sleep(TICK_S)
                    self._dirty.set()  # try again (the reconciler re-reads first)

    async def _ticker(self) -> None:
        verified = self.clock()
        every = self.opts.verify_interval_s
        while True:
            await asyncio.sleep(TICK_S)
            async with self._lock:
                try:
                    for c in await self._call(self.backend.tick):
                        _log(logging.INFO, "dataplane", change=c)
                    verify = getattr(self.backend, "verify", None)
                    if every > 0 and verify is not None and self.clock() - verified >= every:
                        verified = self.clock()
                        for c in await self._call(verify):
                            _log(logging.WARNING, "dataplane changed behind our back", change=c)
                except Exception as err:  # keep ticking: the next tick may succeed
                    _log(logging.WARNING, "dataplane upkeep failed", error=err)

    # ------------------------------------------------------------------ reload

    def _sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> dict[str, Any]:
        """Re-read lvs.cf; on error keep the old config; returns what the caller sees."""
        sd_notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        _log(logging.INFO, "reloading", config=self.opts.config)
        try:
            result = await self._reload()
        except Exception as err:  # a bug must not leave the caller without an answer
            log.exception("reload failed unexpectedly")
            result = self._reload_failed(f"error: reload failed unexpectedly: {err!r}")
        finally:
            sd_notify("READY=1")
        if self.metrics is not None:
            self.metrics.reloaded(result["ok"])
            self.metrics.update(await self.status())
        return result

    async def _reload(self, config: Config | None = None) -> dict[str, Any]:
        """``config``: already read and checked by the caller (runtime/router.py)."""
        assert self.backend is not None and self.director is not None
        if config is None:
            try:
                config = await asyncio.to_thread(load_config, self.opts.config, self.opts.dialect)
            except ConfigError as err:
                return self._reload_failed(err.text)
        async with self._lock:
            try:
                await self._call(self.backend.load, config)
            except BackendError as err:
                return self._reload_failed(err.render())
            old = self.config
            self.config = config
            self.director.reload(config)
            self.monitor.update(config)
            try:
                changes = await self._apply()
            except BackendError as err:
                # the new config is in force but the kernel refused part of it: the
                # applier retries (the reconciler re-reads the table first)
                self._dirty.set()
                changes = [f"refused, retrying: {err.message}"]
                _log(logging.ERROR, "dataplane refused part of the reload", error=err.message)
        self.reloads["ok"] += 1
        self.last_reload_error = None
        summary = _diff_summary(old, config)
        _log(logging.INFO, "reloaded", **summary, changes=len(changes))
        return {"ok": True, "changes": changes, **summary}

    def _reload_failed(self, text: str) -> dict[str, Any]:
        self.reloads["failed"] += 1
        self.last_reload_error = text
        for line in text.splitlines():
            _log(logging.ERROR, f"reload failed, old config stays in force: {line}")
        return {"ok": False, "error": text}

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        _log(logging.INFO, "stopping", on_stop=self.opts.on_stop)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.monitor is not None:
            await self.monitor.stop()
        if self.control is not None:
            await self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.opts.on_stop == "remove" and self.backend is not None:
            try:
                for c in await self._call(self.backend.remove):
                    _log(logging.INFO, "dataplane", change=c)
            except BackendError as err:
                _log(logging.ERROR, "could not remove our services", error=err.message)
                self.exit_status = EXIT_ERRORS
        await self._close_backend()
        _log(logging.INFO, "stopped")

    async def _close_backend(self) -> None:
        if self.backend is not None:
            await self._call(self.backend.close)
            self.backend = None
        self._worker.shutdown(wait=False)

    # ------------------------------------------------------------------ control

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("command")
        if not self._ready:
            return {"ok": False, "error": "the daemon is starting"}
        if cmd == "status":
            return {"ok": True, "status": await self.status()}
        if cmd == "reload":
            return await self.reload()
        return {"ok": False, "error": f"unknown command {cmd!r} (status, reload)"}

    async def _counters(self, max_age_s: float) -> dict:
        """Dataplane counters, re-read when older than ``max_age_s`` (reading a large
        IPVS table is a netlink dump per service: metrics ask for it less often)."""
        now = self.clock()
        taken, counters = self._counters_cache
        if taken is not None and now - taken <= max_age_s and self.config is self._counted:
            return counters
        try:
            counters = await self._call(self.backend.counters, self.config) if self.backend else {}
        except Exception as err:  # status must answer even when the dataplane does not
            _log(logging.WARNING, "counters unavailable", error=err)
            counters = {}
        self._counters_cache, self._counted = (now, counters), self.config
        return counters

    def _status_for_scrape(self, loop: asyncio.AbstractEventLoop) -> Callable[[], dict[str, Any]]:
        """What the metrics' scrape thread calls: the status, computed on the event loop
        (dataplane counters at most COUNTERS_MAX_AGE_S old), waited for from that thread."""
        from .metrics import SCRAPE_WAIT_S

        def fresh() -> dict[str, Any]:
            coro = self.status(counters_max_age_s=COUNTERS_MAX_AGE_S)
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            try:
                return future.result(timeout=SCRAPE_WAIT_S)
            except BaseException:
                future.cancel()
                raise

        return fresh

    async def status(self, *, counters_max_age_s: float = 0.0) -> dict[str, Any]:
        """The whole state as plain data: what ``lvs-router status`` shows."""
        assert self.director is not None and self.config is not None
        d, config = self.director, self.config
        records = self.monitor.records() if self.monitor else {}
        unchecked = (None, None, None, None, None)
        counters = await self._counters(counters_max_age_s)
        desired = d.desired()
        applied = self._applied
        kept_out = getattr(self.backend, "kept_out", None)
        no_mac = kept_out() if kept_out is not None else set()
        addresses = _Strings()  # each distinct address formatted once
        virtuals = []
        for vs in config.active_virtuals:
            rows = []
            for rs in vs.servers:  # the managed ones, as servers(config) yields them
                if not rs.active:
                    continue
                key = (vs.name, rs.name)
                st, p = d.states[key], desired.placements[key]
                last_ok, last_detail, last_latency, checks, failures = records.get(key, unchecked)
                state = st.health.value
                if st.health is Health.DOWN and p.present:
                    state = "quiesced"
                # in the dataplane: as last applied, and with a MAC to forward to
                held = applied.placements.get(key) if applied is not None else None
                inside = held is not None and held.present and rs.address not in no_mac
                rows.append(
                    {
                        "name": rs.name,
                        "address": addresses[rs.address],
                        "port": rs.port,
                        "state": state,
                        "in_dataplane": inside,
                        "weight": held.weight if inside and held is not None else None,
                        "configured_weight": rs.weight,
                        "reason": st.reason,
                        "crashed": st.crashed,
                        "last_ok": last_ok,
                        "last_detail": last_detail,
                        "last_latency_s": last_latency,
                        "checks": checks,
                        "failures": failures,
                        "counters": _counters(counters.get(key)),
                    }
                )
            virtuals.append(
                {
                    "name": vs.name,
                    "address": str(vs.address),
                    "protocol": vs.protocol.value,
                    "port": vs.port,
                    "fwmark": vs.fwmark,
                    "scheduler": vs.scheduler.value,
                    "forwarding": config.forwarding(vs).value,
                    "sorry_server": str(vs.sorry_server) if vs.sorry_server else None,
                    "sorry_active": vs.name in desired.sorry,
                    "counters": _counters(counters.get((vs.name, None))),
                    "servers": rows,
                }
            )
        return {
            "config": self.opts.config,
            "dataplane": self.backend.name if self.backend else None,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "reloads": dict(self.reloads),
            "last_reload_error": self.last_reload_error,
            "shut_down": d.shut_down,
            "virtuals": virtuals,
        }


class _Strings(dict):
    """``str()`` of each key, computed once (10,000 servers share 100 addresses)."""

    def __missing__(self, key: object) -> str:
        text = self[key] = str(key)
        return text


def _counters(c: Any) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "packets": c.packets,
        "bytes": c.bytes,
        "connections": c.connections,
        "active": c.active,
    }


def _diff_summary(old: Config | None, new: Config) -> dict[str, int]:
    before = {v.name: v for v in old.active_virtuals} if old else {}
    after = {v.name: v for v in new.active_virtuals}
    return {
        "added": len(after.keys() - before.keys()),
        "removed": len(before.keys() - after.keys()),
        "changed": sum(1 for n in after.keys() & before.keys() if after[n] != before[n]),
    }


def run(opts: Options, *, verbose: bool = False) -> int:
    setup_logging(verbose)
    return asyncio.run(Daemon(opts).run())
