"""HealthMonitor end to end: real servers on 127.0.0.1 stopped and restarted, reloads,
load monitoring through a real command, and the check grid.

Timing is asserted in checks (which check produced an event), never in wall-clock
time; waits have generous bounds only so that a broken monitor fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from compiler import compile_text
from compiler.model import Config
from runtime.health.monitor import CommandLoadSource, HealthMonitor, ServerEvent
from runtime.health.probes import ProbeResult

HOST = "127.0.0.1"


def config(virtuals: str) -> Config:
    text = (
        "service = lvs\nprimary = 198.18.0.1\nnetwork = nat\nnat_router = 198.18.0.254 eth1:1\n"
        + virtuals
    )
    result = compile_text("test.cf", text)
    assert result.ok, [d.message for d in result.errors]
    return result.config


def virtual(name: str, servers: str, **kw: object) -> str:
    lines = "".join(f"  {k} = {v}\n" for k, v in kw.items())
    return f"virtual {name} {{\n  active = 1\n  address = 198.18.0.10 eth0:1\n{lines}{servers}}}\n"


def server(name: str, port: int, weight: int = 1, active: int = 1) -> str:
    return (
        f"  server {name} {{\n    address = {HOST}\n    active = {active}\n"
        f"    port = {port}\n    weight = {weight}\n  }}\n"
    )


@dataclass
class Log:
    """Events and checks in the order they happened."""

    items: list[tuple[str, object]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def event(self, e: ServerEvent) -> None:
        self.items.append(("event", e))
        self.changed.set()

    def check(self, virtual: str, server: str, planned: float, started: float, r: ProbeResult):
        self.items.append(("check", (virtual, server, planned, started, r)))
        self.changed.set()

    def events(self, server: str | None = None) -> list[ServerEvent]:
        return [e for k, e in self.items if k == "event" and server in (None, e.server)]  # type: ignore[union-attr]

    def checks(self, server: str) -> list[tuple]:
        return [c for k, c in self.items if k == "check" and c[1] == server]  # type: ignore[index]

    async def wait(self, predicate, limit: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), limit)


class Listener:
    """A TCP service on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self, banner: bytes = b"220 ready\r\n") -> None:
        self.banner = banner
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.banner)
        await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_stop_and_restart_a_real_server() -> None:
    async def go() -> None:
        web = Listener()
        await web.start()
        cfg = config(virtual("mail", server("rs1", web.port), port=25, timeout=1, reentry=3))
        log = Log()
        mon = HealthMonitor(cfg, log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: log.events())
            [up] = log.events()
            assert up == ServerEvent("mail", "rs1", True, None, "first good check, entered")
            assert len(log.checks("rs1")) == 1  # the first check brings it in

            await web.stop()
            checks_before = len(log.checks("rs1"))
            await log.wait(lambda: len(log.events()) == 2)
            down = log.events()[1]
            assert down == ServerEvent("mail", "rs1", False, None, "connect: connection refused")
            # the very next check after the stop took it out
            assert len(log.checks("rs1")) == checks_before + 1

            await web.start()
            await log.wait(lambda: len(log.events()) == 3)
            back = log.events()[2]
            assert back == ServerEvent(
                "mail", "rs1", True, None, "3 consecutive good checks, re-entered"
            )
            results = [c[4].ok for c in log.checks("rs1")]
            assert results[-3:] == [True, True, True] and results[-4] is False

            [snap] = mon.snapshot()
            assert snap.up and snap.port == web.port and snap.address == HOST
            assert snap.checks == len(results) and snap.failures == results.count(False)
            assert snap.last_ok is True and snap.last_latency is not None
            assert snap.last_detail == "connected"  # port 25, no send/expect: connect only
            # the daemon's status reads the same record without building the snapshot
            assert mon.records() == {
                ("mail", "rs1"): (
                    snap.last_ok,
                    snap.last_detail,
                    snap.last_latency,
                    snap.checks,
                    snap.failures,
                )
            }
        finally:
            await mon.stop()
            await web.stop()

    asyncio.run(go())


def test_checks_follow_a_per_server_grid() -> None:
    async def go() -> None:
        web = Listener()
        await web.start()
        servers = "".join(server(f"rs{i}", web.port) for i in range(6))
        cfg = config(virtual("v", servers, port=25, timeout=1))
        log = Log()
        mon = HealthMonitor(cfg, log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: all(len(log.checks(f"rs{i}")) >= 3 for i in range(6)))
        finally:
            await mon.stop()
            await web.stop()
        phases = set()
        for i in range(6):
            planned = [c[2] for c in log.checks(f"rs{i}")]
            steps = {round(b - a, 6) for a, b in itertools.pairwise(planned)}
            assert steps == {1.0}  # one slot per interval, none skipped
            phases.add(round(planned[0] % 1.0, 6))
        assert len(phases) == 6  # each server has its own phase: no herd

    asyncio.run(go())


def test_a_check_that_overruns_its_slot_skips_the_missed_slot() -> None:
    """A silent server with ``expect``: each check times out one interval after it
    started, just after the server's next slot, so that slot is skipped, not queued:
    the checks are two intervals apart."""

    async def go() -> list[float]:
        quiet = await asyncio.start_server(silent_handler, HOST, 0)
        port = quiet.sockets[0].getsockname()[1]
        cfg = config(virtual("v", server("rs0", port), port=25, timeout=1, expect='"220"'))
        log = Log()
        mon = HealthMonitor(cfg, log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: len(log.checks("rs0")) >= 3)
        finally:
            await mon.stop()
            quiet.close()
        assert {c[4].detail for c in log.checks("rs0")} == {"read: timed out after 1 s"}
        return [c[2] for c in log.checks("rs0")]

    planned = asyncio.run(go())
    assert {round(b - a, 6) for a, b in itertools.pairwise(planned)} == {2.0}


async def silent_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)
    writer.close()


def test_only_active_servers_of_active_virtuals_are_checked() -> None:
    async def go() -> None:
        cfg = config(
            virtual("on", server("a", 1) + server("b", 1, active=0), port=25)
            + "virtual off {\n  active = 0\n  address = 198.18.0.11 eth0:2\n"
            + server("c", 1)
            + "}\n"
        )
        mon = HealthMonitor(cfg, lambda e: None)
        assert [(s.virtual, s.server, s.up) for s in mon.snapshot()] == [("on", "a", False)]

    asyncio.run(go())


def test_update_keeps_state_applies_changes_starts_and_stops_servers() -> None:
    async def go() -> None:
        web = Listener()
        await web.start()
        other = Listener(b"SSH-2.0-x\r\n")
        await other.start()
        v1 = virtual(
            "v",
            server("keep", web.port) + server("gone", web.port),
            port=25,
            timeout=1,
            reentry=1,
            expect='"220"',
        )
        log = Log()
        mon = HealthMonitor(config(v1), log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: len(log.events()) == 2)
            assert {e.server for e in log.events()} == {"keep", "gone"}

            # same check, new weight; "gone" removed; "new" added
            v2 = virtual(
                "v",
                server("keep", web.port, weight=2) + server("new", other.port),
                port=25,
                timeout=1,
                reentry=1,
                expect='"220"',
            )
            gone_checks = len(log.checks("gone"))
            mon.update(config(v2))
            [weight] = log.events()[2:]
            assert weight == ServerEvent("v", "keep", True, None, "configured weight 1 -> 2")
            assert {s.server for s in mon.snapshot()} == {"keep", "new"}
            keep = next(s for s in mon.snapshot() if s.server == "keep")
            assert keep.up and keep.checks >= 1  # state and counters kept
            await log.wait(lambda: len(log.checks("new")) >= 2 and len(log.checks("keep")) >= 3)
            assert len(log.checks("gone")) == gone_checks  # no more checks
            new = next(s for s in mon.snapshot() if s.server == "new")
            assert not new.up and new.last_detail.startswith("reply b'SSH'")

            # a changed expect takes effect: "keep" fails, "new" passes
            v3 = v2.replace('expect = "220"', 'expect = "SSH"')
            mon.update(config(v3))
            await log.wait(lambda: len(log.events()) == 5)
            assert sorted((e.server, e.up) for e in log.events()[3:]) == [
                ("keep", False),
                ("new", True),
            ]

            # a new timeout moves the server to the new grid, keeping its state
            v4 = v3.replace("timeout = 1", "timeout = 2")
            mark = len(log.checks("new"))
            mon.update(config(v4))
            await log.wait(lambda: len(log.checks("new")) >= mark + 3)
            planned = [c[2] for c in log.checks("new")[mark:]]
            assert {round(b - a, 6) for a, b in itertools.pairwise(planned)} == {2.0}
            assert next(s for s in mon.snapshot() if s.server == "new").up
        finally:
            await mon.stop()
            await web.stop()
            await other.stop()

    asyncio.run(go())


def test_a_changed_address_is_a_new_server() -> None:
    async def go() -> None:
        a, b = Listener(), Listener()
        await a.start()
        await b.start()
        log = Log()
        v = virtual("v", server("rs", a.port), port=25, timeout=1)
        mon = HealthMonitor(config(v), log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: log.events())
            mon.update(config(virtual("v", server("rs", b.port), port=25, timeout=1)))
            assert log.events()[-1] == ServerEvent(
                "v", "rs", False, None, "address, port or protocol changed"
            )
            await log.wait(lambda: len(log.events()) == 3)
            assert log.events()[-1].up and mon.snapshot()[0].port == b.port
        finally:
            await mon.stop()
            await a.stop()
            await b.stop()

    asyncio.run(go())


def test_override_forces_and_releases() -> None:
    async def go() -> None:
        web = Listener()
        await web.start()
        log = Log()
        mon = HealthMonitor(
            config(virtual("v", server("rs", web.port), port=25, timeout=1)), log.event
        )
        await mon.start()
        try:
            await log.wait(lambda: log.events())
            mon.override("v", "rs", False)
            assert log.events()[-1] == ServerEvent("v", "rs", False, None, "forced down")
            mon.override("v", "rs", None)  # resume: the next good check re-adds it
            await log.wait(lambda: len(log.events()) == 3)
            assert log.events()[-1].up
        finally:
            await mon.stop()
            await web.stop()

    asyncio.run(go())


def fake_command(bin_dir: Path, name: str, output: str, record: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> {record}\necho "{output}"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_command_load_source_runs_rsh_uptime(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    line = " 10:14:03 up 12 days,  3:02,  2 users,  load average: 0.42, 0.35, 0.30"
    fake_command(tmp_path / "bin", "rsh", line, record)
    rsh = str(tmp_path / "bin" / "rsh")
    figure = asyncio.run(CommandLoadSource().load(rsh, "198.18.0.5", 2))
    assert figure == 0.42
    assert record.read_text().split()[1:] == ["198.18.0.5", "uptime"]


def test_load_monitor_moves_the_weight_through_a_real_command(tmp_path: Path) -> None:
    """weight 2, timeout 1, reentry 19: the first check (counter 20) is an entry and a
    tick (slow start 1 -> 2); the 21st check (counter 40) is the next tick: load 0.00
    from the fake ``rup`` gives 2 + 1 * cbrt(1) = 3."""
    record = tmp_path / "calls"
    fake_command(tmp_path / "bin", "rup", "rs1  up 3 days, load average: 0.00, 0.01, 0.05", record)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path / 'bin'}:{old_path}"

    async def go() -> None:
        web = Listener()
        await web.start()
        log = Log()
        cfg = config(
            virtual(
                "v",
                server("rs1", web.port, weight=2),
                port=25,
                timeout=1,
                reentry=19,
                load_monitor="rup",
            )
        )
        mon = HealthMonitor(cfg, log.event, observer=log.check)
        await mon.start()
        try:
            await log.wait(lambda: len(log.events()) == 2, limit=60)
        finally:
            await mon.stop()
            await web.stop()
        entry, loaded = log.events()
        assert entry == ServerEvent("v", "rs1", True, None, "first good check, entered")
        assert loaded == ServerEvent("v", "rs1", True, 3, "load 0: weight 3")
        assert len(log.checks("rs1")) == 21
        assert record.read_text().split()[1:] == [HOST]  # rup RIP, no "uptime"

    try:
        asyncio.run(go())
    finally:
        os.environ["PATH"] = old_path


def test_concurrency_bounds_the_checks_in_flight() -> None:
    """Six servers on one listener that never answers, concurrency 2: the listener never
    holds more than two check connections at once, and every check still runs."""

    async def go() -> tuple[int, int]:
        open_now, most = 0, 0

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            try:
                await reader.read()  # until the checker resets the connection
            except ConnectionError:
                pass
            finally:
                open_now -= 1
                writer.close()

        srv = await asyncio.start_server(hold, HOST, 0)
        port = srv.sockets[0].getsockname()[1]
        servers = "".join(server(f"rs{i}", port) for i in range(6))
        log = Log()
        cfg = config(virtual("v", servers, port=25, timeout=1, expect='"220"'))
        mon = HealthMonitor(cfg, log.event, observer=log.check, concurrency=2)
        await mon.start()
        try:
            await log.wait(lambda: all(len(log.checks(f"rs{i}")) >= 1 for i in range(6)))
        finally:
            await mon.stop()
            srv.close()
        failed = {c[4].detail for i in range(6) for c in log.checks(f"rs{i}")}
        assert failed == {"read: timed out after 1 s"}
        return most, len(log.events())

    most, events = asyncio.run(go())
    assert most == 2
    assert events == 0  # never up, so never down


def test_stop_kills_a_running_send_program(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    path = tmp_path / "hang.sh"
    path.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)

    async def go() -> None:
        cfg = config(
            virtual(
                "v", server("rs", 1), port=25, timeout=5, send_program=f'"{path} %h"', expect="OK"
            )
        )
        mon = HealthMonitor(cfg, lambda e: None)
        await mon.start()
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        await mon.stop()

    asyncio.run(go())
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
