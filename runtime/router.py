"""The router as one process: pulse (heartbeat, VIPs, gratuitous ARP) driving the daemon.

piranha ran three programs: pulse decided which router is active and started ``lvs``
there, which started one ``nanny`` per real server. Here one process does it all:
:class:`Router` is the :class:`~runtime.daemon.Daemon` (dataplane, director, health
checks, control socket, metrics, reload) with a :class:`~runtime.pulse.heartbeat.Pulse`
deciding when the VIPs — and so the traffic — are ours.

**When pulse runs.** piranha parsed ``heartbeat = 1`` and never looked at it: pulse ran
whenever its init script started it. lvs-router uses the keyword as the switch: a
config with ``heartbeat = 1`` (and a ``primary``) runs pulse; without it, or with
``--no-heartbeat``, ``lvs-router run`` is the director alone, as before (the VIPs are
then the operator's business). Everything pulse decides follows piranha-spec.md §3
(roles, timers, state table; see docs/pulse.md); a backup with ``backup_active = 0``
refuses to run, as piranha's did.

**Standby.** Two ways to be the inactive router (``--standby``):

* ``hot`` (the default): the dataplane is loaded and the director and health checks run
  on both routers; pulse only moves the VIPs. The standby's tables then follow the same
  health results as the active's, so with the XDP dataplane both routers hold the *same*
  Maglev tables (same config, same healthy set) and a flow the new router never saw is
  sent to the real server that already holds it: established connections survive a
  failover in direct routing and tunnel mode. Takeover costs nothing but the VIPs and the
  ARPs: no compile, no adoption, no first round of checks. keepalived does the same
  (its checkers run on the backup too).
* ``cold``: piranha's way. The dataplane is loaded at start (XDP: compiled and
  attached, so activation does not wait for a compile) but the director and the checks
  start only on activation — adopting what the dataplane holds, like a daemon restart,
  and waiting for the first round of checks before the ARPs go out — and stop on
  deactivation; the dataplane keeps its last state (harmless on the standby: no
  traffic reaches it without the VIPs).

With either, the XDP program stays attached on the standby: frames the client still
sends to the old router's MAC during the ARP switch are forwarded to the same real
servers instead of being dropped.

The control socket and ``status`` are up in both roles; the status carries
``pulse`` (role, state, peer, last heartbeat...). ``SIGTERM`` stops pulse first (a
STOPPED heartbeat, the VIPs go, the peer takes over at once), then the daemon.

**IPVS sync daemon.** With ``syncdaemon = 1`` and the IPVS dataplane, the kernel's
connection-sync daemon follows pulse (spec §3.5 step 3): backup from the start (the
first table sync already asks for backup, so a standby never runs a master), master
on activation, backup again on deactivation and stop.

**hard_shutdown under pulse.** piranha's lvs exited when a nanny died with
``hard_shutdown = 1``, removing its services; pulse saw its child die, gave the VIPs
up and set CHILDFAIL (no activation until the peer's RUNNING heartbeat), and kept
running (spec §3.6, §4.5). The router does the same in one process: pulse deactivates
(VIPs first, so the peer takes over at once), the director and its checks stop, our
services leave the dataplane, and the process stays up as a standby; a later
activation starts a fresh director. Without a peer (``backup_active = 0``) nothing
could ever clear CHILDFAIL, so the router exits (1) as the plain daemon does.

**Reload under pulse.** The director reloads as without pulse (virtuals, servers,
checks, timeouts, the sync daemon's interface and id) and pulse takes the new
``active_cmd``/``inactive_cmd`` text. pulse's own settings — addresses, port, timers,
``backup_active``, ``monitor_links``, ``syncdaemon``, whether the commands are set,
and the set of VIPs it brings up — are fixed at start: a reload that changes one is
refused as a whole, naming the lvs.cf line, and the old config stays in force
(:func:`pulse_reload_refusal`; restart the router to change them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from compiler.model import Config, Dialect, Network

from .daemon import (
    EXIT_ERRORS,
    ConfigError,
    Daemon,
    Options,
    _log,
    load_config,
    setup_logging,
)
from .pulse.heartbeat import Pulse, PulseExit
from .pulse.vip import desired_vips
from .pulse.wire import Key

log = logging.getLogger("lvs-router")


@dataclass(frozen=True)
class PulseOptions:
    """What ``lvs-router run`` says about pulse (see the module docstring)."""

    heartbeat: bool = True  # False: --no-heartbeat, the director alone
    forceactive: bool = False
    key_file: str | None = None  # authenticated heartbeats (extended dialect)
    standby: str = "hot"  # hot | cold
    arp_announce: bool | None = None  # None: on in the extended dialect
    garp_count: int = 5
    garp_interval: float = 1.0


def uses_pulse(config: Config, popts: PulseOptions) -> bool:
    """pulse runs for ``heartbeat = 1`` unless ``--no-heartbeat`` (module docstring)."""
    return popts.heartbeat and config.heartbeat


# the global keywords pulse reads once, at start (machine settings, sockets)
PULSE_FIXED = (
    "heartbeat",
    "primary",
    "primary_private",
    "backup",
    "backup_private",
    "backup_active",
    "heartbeat_port",
    "keepalive",
    "deadtime",
    "monitor_links",
    "syncdaemon",
)


def pulse_reload_refusal(old: Config, new: Config) -> str | None:
    """Why a reload from ``old`` to ``new`` cannot be applied while pulse runs, as a
    diagnostic naming the line (``file:line:col: error: ...``), or ``None`` when pulse
    has nothing against it. See the module docstring for what is fixed and why."""

    def where(spans, key: str, fallback: str) -> str:
        span = spans.get(key)
        return str(span) if span is not None else fallback

    head = "cannot be changed by a reload while pulse runs"
    help_ = "\n  = help: restart the router (lvs-router run) to change it; the old config stays"
    for key in PULSE_FIXED:
        if getattr(old, key) != getattr(new, key):
            at = where(new.spans, key, where(old.spans, key, new.file))
            was, now = getattr(old, key), getattr(new, key)
            return f"{at}: error: `{key}` {head} ({was} -> {now}){help_}"
    for key in ("active_cmd", "inactive_cmd"):
        if bool(getattr(old, key)) != bool(getattr(new, key)):
            at = where(new.spans, key, where(old.spans, key, new.file))
            return f"{at}: error: adding or removing `{key}` {head}{help_}"
    before = {v.address: v for v in desired_vips(old)}
    after = {v.address: v for v in desired_vips(new)}
    if before != after:
        changed = [a for a in after if before.get(a) != after[a]]
        changed += [a for a in before if a not in after]
        addr = changed[0]
        at = new.file
        for cfg in (new, old):
            found = _vip_span(cfg, addr)
            if found is not None:
                at = found
                break
        return f"{at}: error: the VIPs pulse holds ({addr}) {head}{help_}"
    return None


def _vip_span(config: Config, addr: object) -> str | None:
    """The position of the line that makes ``addr`` a VIP (or ``nat_router``)."""
    for vs in config.active_virtuals:
        if vs.address == addr:
            span = vs.spans.get("address") or vs.span
            return str(span) if span is not None else None
    nr = config.nat_router
    if nr is not None and nr.address == addr:
        span = config.spans.get("nat_router")
        return str(span) if span is not None else None
    return None


def serves_without_vips(
    config: Config | None, dataplane: str, standby: str, director_running: bool
) -> bool:
    """Whether the first ARPs of a takeover may go out before the VIPs are on the
    device (pulse's ``announce_early``): only where the dataplane answers the VIPs'
    traffic without them. The XDP program runs before the stack and forwards to the
    real servers by itself in direct routing and tunnel mode, and a hot standby's
    running director already keeps its tables: yes. IPVS (its hook is LOCAL_IN: the
    stack must own the VIP), NAT (``nat_router`` must be up for the replies), a cold
    standby or a director stopped by a hard_shutdown (it must start and check
    first): no — there the VIPs go up, ``on_activate`` runs, then the ARPs."""
    if config is None or dataplane != "xdp" or standby != "hot" or not director_running:
        return False
    nat = config.network is Network.NAT or any(
        config.forwarding(vs) is Network.NAT for vs in config.active_virtuals
    )
    return not nat


class Router(Daemon):
    """The daemon plus pulse; without a heartbeat config exactly the daemon."""

    def __init__(self, opts: Options, popts: PulseOptions | None = None) -> None:
        super().__init__(opts)
        self.popts = popts or PulseOptions()
        self.pulse: Pulse | None = None
        self._pulse_task: asyncio.Task[None] | None = None
        self._warm: asyncio.Task[None] | None = None
        self._active = False
        self._child_failing = False  # a hard_shutdown is under way

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        config = load_config(self.opts.config, self.opts.dialect)
        if not uses_pulse(config, self.popts):
            await super().start()
            return
        p = self.popts
        if p.key_file and self.opts.dialect is not Dialect.EXTENDED:
            raise ConfigError("error: --heartbeat-key needs the extended dialect")
        try:
            key = Key.from_file(p.key_file) if p.key_file else None
        except (OSError, ValueError) as err:
            raise ConfigError(f"error: heartbeat key {p.key_file}: {err}") from err
        announce = p.arp_announce
        if announce is None:  # piranha's dialects keep send_arp's frames byte for byte
            announce = self.opts.dialect is Dialect.EXTENDED
        self.pulse = Pulse(
            config,
            on_activate=self._on_activate,
            on_deactivate=self._on_deactivate,
            on_sync_role=self._on_sync_role,
            key=key,
            forceactive=p.forceactive,
            garp_count=p.garp_count,
            garp_interval=p.garp_interval,
            arp_announce=announce,
            announce_early=self._serves_without_vips,
        )
        await super().start()  # control socket, dataplane, (hot) director, metrics
        if p.standby == "cold" and hasattr(self.backend, "neighbours"):
            self._warm = asyncio.create_task(self._warm_neighbours(), name="neighbours")
        self._pulse_task = asyncio.create_task(self._run_pulse(), name="pulse")
        ready = asyncio.create_task(self.pulse.ready.wait())
        await asyncio.wait([self._pulse_task, ready], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self.pulse.ready.is_set():
            err = self._pulse_task.exception() if self._pulse_task.done() else None
            await self.stop_director()
            raise ConfigError(f"error: pulse: {err or 'did not start'}")
        st = self.pulse.status()
        _log(logging.INFO, "pulse ready", role=st.role, standby=p.standby, state=st.state)
        # what start-up built (grammar, compiled config, bcc, pyroute2) lives as long as
        # the process: out of the collector's sight, a full collection no longer walks
        # it, so no collection pause lands between the dead timer and the ARP
        gc.freeze()

    def _serves_without_vips(self) -> bool:
        """pulse's ``announce_early``, asked at each takeover (:func:`serves_without_vips`)."""
        director = self.director is not None and not self._child_failing
        return serves_without_vips(self.config, self.opts.dataplane, self.popts.standby, director)

    async def open_dataplane(self, config: Config) -> None:
        """Under pulse every router starts inactive: the sync daemon's first role is
        backup (pulse's start-up asks for it too; this keeps the first table sync of a
        hot standby from starting a master meanwhile)."""
        await super().open_dataplane(config)
        if self.pulse is not None and hasattr(self.backend, "switch_sync_role"):
            from .backends import sync_state

            self.backend.sync_role = sync_state("backup")  # type: ignore[union-attr]

    async def start_director(self, config: Config) -> None:
        """Cold standby defers the director to activation (see the module docstring)."""
        if self.pulse is not None and self.popts.standby == "cold" and not self._active:
            self.config = config
            return
        await super().start_director(config)

    async def _warm_neighbours(self) -> None:
        """Cold standby, XDP: keep the real servers' MACs in the kernel's neighbour
        table, so that the first sync after activation has them all. A server without
        a MAC is kept out of the Maglev table, which would move flows (RST)."""
        from .director import servers
        from .neighbours import address_order

        while True:
            if self.director is None and self.config is not None and self.backend is not None:
                # address_order: IPv4 and IPv6 addresses do not compare with each other
                held = {rs.address for _, rs in servers(self.config)}
                addresses = sorted(held, key=address_order)
                with contextlib.suppress(Exception):
                    await self._call(self.backend.neighbours.refresh, addresses)  # type: ignore[attr-defined]
            await asyncio.sleep(1.0)

    async def _run_pulse(self) -> None:
        assert self.pulse is not None
        try:
            await self.pulse.run()
        except PulseExit as err:
            if self.pulse.ready.is_set():  # after start: the router exits with it
                _log(logging.ERROR, "pulse exited", reason=str(err))
                self.exit_status = EXIT_ERRORS
                self._stop.set()
            raise

    # ------------------------------------------------------------------ pulse's callbacks

    async def _on_activate(self) -> None:
        """VIPs are up, ARPs not sent yet: the director must be ready now."""
        self._active = True
        if self.director is None:
            assert self.config is not None
            await self.start_director(self.config)
            await self._first_checks(self.config)
        _log(logging.INFO, "active: serving the VIPs")

    async def _first_checks(self, config: Config) -> None:
        """Cold start of the director: wait (bounded by the longest check timeout) for
        every server's first result and sync the dataplane before the ARPs go out, so
        the first traffic finds the whole table (servers arriving one by one would move
        flows between them meanwhile)."""
        from .director import Health

        d = self.director
        bound = max((vs.timeout for vs in config.active_virtuals), default=1)
        deadline = self.clock() + min(float(bound), 5.0)
        while d is not None and self.clock() < deadline:
            if all(d.health(k) is not Health.UNKNOWN for k in d.managed()):
                break
            await asyncio.sleep(0.01)
        from .backends import BackendError

        async with self._lock:
            self._dirty.clear()
            try:
                await self._apply()
            except BackendError as err:  # the applier retries
                _log(logging.ERROR, "dataplane refused a change", error=err.message)
                self._dirty.set()

    async def _on_sync_role(self, role: str) -> None:
        """pulse's ``SyncRole`` (``syncdaemon = 1``): the IPVS sync daemon runs as
        master on the active router, backup on the standby. XDP has no sync daemon."""
        switch = getattr(self.backend, "switch_sync_role", None)
        if switch is None:
            return
        from .backends import BackendError, sync_state

        async with self._lock:
            try:
                for c in await self._call(switch, sync_state(role)):
                    _log(logging.INFO, "dataplane", change=c)
            except BackendError as err:
                _log(logging.ERROR, "sync daemon role not applied", role=role, error=err.message)
                return
        _log(logging.INFO, "sync daemon", role=role)

    async def _on_deactivate(self) -> None:
        self._active = False
        # (a hard_shutdown stops the director itself: _director_died)
        if self.popts.standby == "cold" and self.director is not None and not self._child_failing:
            await self.stop_director()
        _log(logging.INFO, "inactive: standing by", standby=self.popts.standby)

    def _hard_shutdown(self, virtual: str, server: str, reason: str) -> None:
        """A checker died with ``hard_shutdown = 1``: as piranha's lvs exiting, which
        pulse saw as its child dying (§3.6): the director stops and our services go,
        pulse gives the VIPs up and the peer serves; we stay up as a standby (module
        docstring). Without a peer, the router exits as the plain daemon."""
        if self.pulse is None or self.pulse.machine is None:
            super()._hard_shutdown(virtual, server, reason)
            return
        if self._child_failing:
            return  # another checker of the same director: one shutdown is enough
        if not self.pulse.machine.s.backup_active:
            _log(
                logging.CRITICAL,
                "checker died (hard_shutdown = 1): no peer to take over "
                "(backup_active = 0): removing our services and exiting",
                virtual=virtual,
                server=server,
                reason=reason,
            )
            super()._hard_shutdown(virtual, server, reason, logged=True)
            return
        _log(
            logging.CRITICAL,
            "checker died (hard_shutdown = 1): giving up the VIPs to the peer, "
            "stopping the director, removing our services; standing by until its heartbeat",
            virtual=virtual,
            server=server,
            reason=reason,
        )
        self._child_failing = True
        # the VIPs first (our next heartbeat says STOPPED: the peer takes over at once),
        # then the director and its services, as lvs's exit
        self.pulse.child_failed()
        asyncio.get_running_loop().create_task(self._director_died())

    async def _director_died(self) -> None:
        from .backends import BackendError

        try:
            await self.stop_director()
            async with self._lock:
                assert self.backend is not None
                try:
                    for c in await self._call(self.backend.remove):
                        _log(logging.INFO, "dataplane", change=c)
                except BackendError as err:
                    _log(logging.ERROR, "could not remove our services", error=err.message)
        finally:
            self._child_failing = False

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
        if self.pulse is not None and self._pulse_task is not None:
            await self.pulse.stop()  # STOPPED heartbeat, deactivate, VIPs removed
            with contextlib.suppress(asyncio.CancelledError, PulseExit):
                await self._pulse_task
        await super().stop()

    # ------------------------------------------------------------------ control

    async def _reload(self) -> dict[str, Any]:
        """Under pulse, a reload that changes what pulse fixed at start is refused
        (:func:`pulse_reload_refusal`); otherwise pulse takes the new commands. A cold
        standby has no director: the new config is only checked, loaded into the
        dataplane and kept for the next activation."""
        if self.pulse is None:
            return await super()._reload()
        try:
            config = await asyncio.to_thread(load_config, self.opts.config, self.opts.dialect)
        except ConfigError as err:
            return self._reload_failed(err.text)
        refusal = pulse_reload_refusal(self.pulse.config, config)
        if refusal is not None:
            return self._reload_failed(refusal)
        if self.director is not None:
            result = await super()._reload(config)
            if result["ok"]:
                self.pulse.config = config  # active_cmd / inactive_cmd are read when run
            return result
        assert self.backend is not None
        from .backends import BackendError

        try:
            await self._call(self.backend.load, config)
        except BackendError as err:
            return self._reload_failed(err.render())
        self.config = config
        self.pulse.config = config
        self.reloads["ok"] += 1
        self.last_reload_error = None
        return {"ok": True, "changes": [], "added": 0, "removed": 0, "changed": 0}

    async def status(self, *, counters_max_age_s: float = 0.0) -> dict[str, Any]:
        if self.director is not None:
            out = await super().status(counters_max_age_s=counters_max_age_s)
        else:  # cold standby: no director, nothing checked
            out = {
                "config": self.opts.config,
                "dataplane": self.backend.name if self.backend else None,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started, 1),
                "reloads": dict(self.reloads),
                "last_reload_error": self.last_reload_error,
                "shut_down": False,
                "virtuals": [],
            }
        if self.pulse is not None:
            out["pulse"] = self.pulse.status().as_dict()
        return out


def run(opts: Options, popts: PulseOptions | None = None, *, verbose: bool = False) -> int:
    setup_logging(verbose)
    pulse_log = logging.getLogger("pulse")  # pulse's lines go to the daemon's log
    pulse_log.handlers[:] = log.handlers
    pulse_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    pulse_log.propagate = False
    return asyncio.run(Router(opts, popts).run())
