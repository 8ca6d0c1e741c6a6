"""The daemon's operating surface without a dataplane: control socket, sd_notify, logs,
status rendering, metrics endpoint, and the command line's error paths — all over
real sockets and real processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runtime.control import ControlError, ControlServer, request
from runtime.daemon import _Formatter, sd_notify
from runtime.metrics import Metrics
from runtime.status_view import render

ROOT = Path(__file__).resolve().parents[2]

STATUS = {
    "config": "/etc/sysconfig/ha/lvs.cf",
    "dataplane": "xdp",
    "pid": 1,
    "uptime_s": 3.0,
    "reloads": {"ok": 2, "failed": 1},
    "last_reload_error": "lvs.cf:7:12: error: bad port",
    "shut_down": False,
    "virtuals": [
        {
            "name": "web",
            "address": "198.18.0.10",
            "protocol": "tcp",
            "port": 80,
            "fwmark": 0,
            "scheduler": "wrr",
            "forwarding": "direct",
            "sorry_server": "198.18.1.50",
            "sorry_active": False,
            "counters": {"packets": 1200, "bytes": 80000, "connections": 40, "active": None},
            "servers": [
                {
                    "name": "a",
                    "address": "198.18.1.1",
                    "port": 80,
                    "state": "up",
                    "in_dataplane": True,
                    "weight": 3,
                    "configured_weight": 3,
                    "reason": "first good check, entered",
                    "crashed": False,
                    "last_ok": True,
                    "last_detail": "",
                    "last_latency_s": 0.0021,
                    "checks": 10,
                    "failures": 0,
                    "counters": {"packets": 900, "bytes": 60000, "connections": 30, "active": None},
                },
                {
                    "name": "b",
                    "address": "198.18.1.2",
                    "port": 80,
                    "state": "quiesced",
                    "in_dataplane": True,
                    "weight": 0,
                    "configured_weight": 1,
                    "reason": "connect refused",
                    "crashed": False,
                    "last_ok": False,
                    "last_detail": "connect refused",
                    "last_latency_s": 0.0004,
                    "checks": 10,
                    "failures": 4,
                    "counters": None,
                },
            ],
        }
    ],
}


def _serve(path: str, handler):
    """Run a ControlServer in a thread's own loop; returns (loop, server, thread)."""
    import threading

    loop = asyncio.new_event_loop()
    server = ControlServer(path, handler)
    started = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as err:
            errors.append(err)
            started.set()
            return
        started.set()
        loop.run_forever()

    t = threading.Thread(target=main, daemon=True)
    t.start()
    started.wait(10)
    if errors:
        raise errors[0]
    return loop, server, t


def _shutdown(loop, server, t) -> None:
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def test_control_socket_is_root_only_and_answers_json_lines(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "control.sock")

    async def handler(req: dict) -> dict:
        if req["command"] == "status":
            return {"ok": True, "status": {"seen": req}}
        return {"ok": False, "error": "nope"}

    loop, server, t = _serve(path, handler)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
        assert request(path, "status") == {"ok": True, "status": {"seen": {"command": "status"}}}
        assert request(path, "reload") == {"ok": False, "error": "nope"}
        with socket.socket(socket.AF_UNIX) as s:  # not JSON: an error line, not a hang-up
            s.connect(path)
            s.sendall(b"hello\n[1]\n")
            f = s.makefile()
            assert json.loads(f.readline())["error"].startswith("bad request")
            assert "JSON object" in json.loads(f.readline())["error"]
        with pytest.raises(ControlError, match="another daemon"):
            _serve(path, handler)  # a second daemon on a live socket is refused
    finally:
        _shutdown(loop, server, t)
    assert not os.path.exists(path)


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays, nobody answers: a killed daemon's leftover

    async def handler(req: dict) -> dict:
        return {"ok": True}

    loop, server, t = _serve(path, handler)
    try:
        assert request(path, "status") == {"ok": True}
    finally:
        _shutdown(loop, server, t)


def test_request_to_no_daemon_is_a_control_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="cannot reach the daemon"):
        request(str(tmp_path / "none.sock"), "status")


def test_sd_notify_writes_datagrams_to_notify_socket(tmp_path: Path, monkeypatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    abstract = f"@lvs-router-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + abstract[1:])
        monkeypatch.setenv("NOTIFY_SOCKET", abstract)
        assert sd_notify("STOPPING=1")
        assert s.recv(100) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def test_log_lines_carry_priority_under_journald_and_key_values() -> None:
    rec = logging.LogRecord("lvs-router", logging.ERROR, "", 0, "server down", (), None)
    rec.fields = {"virtual": "web", "reason": "connect refused"}
    assert _Formatter(journald=True).format(rec) == (
        '<3>server down virtual=web reason="connect refused"'
    )
    assert _Formatter(journald=False).format(rec).startswith("error: server down virtual=web")


def test_status_table_shows_every_server_state_weight_check_and_counters(capsys) -> None:
    render(STATUS, width=200)
    out = capsys.readouterr().out
    assert "web" in out and "198.18.0.10:80/tcp" in out and "sorry 198.18.1.50" in out
    row_a = next(line for line in out.splitlines() if "198.18.1.1:80" in line)
    assert "up" in row_a and "2.1 ms" in row_a and "900" in row_a and "ok" in row_a
    row_b = next(line for line in out.splitlines() if "198.18.1.2:80" in line)
    assert "quiesced" in row_b and "0 (of 1)" in row_b and "failed: connect refused" in row_b
    assert "last reload failed" in out and "lvs.cf:7:12" in out


def test_metrics_endpoint_serves_states_checks_traffic_and_reloads() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = Metrics()
    m.serve("127.0.0.1", port)
    try:
        m.update(STATUS)
        m.observe_check("web", "a", True, 0.002)
        m.observe_check("web", "b", False, 0.0004)
        m.observe_sync(0.02)
        m.reloaded(True)
        m.reloaded(False)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        text = body.decode()
    finally:
        m.close()
    assert 'lvs_router_server_up{server="a",virtual="web"} 1.0' in text
    assert 'lvs_router_server_up{server="b",virtual="web"} 0.0' in text
    assert 'lvs_router_server_weight{server="b",virtual="web"} 0.0' in text
    assert 'lvs_router_check_latency_seconds{server="a",virtual="web"} 0.0021' in text
    assert 'lvs_router_check_failures_total{server="b",virtual="web"} 4.0' in text
    assert 'lvs_router_dataplane_packets_total{server="",virtual="web"} 1200.0' in text
    assert 'lvs_router_check_results_total{result="failed",virtual="web"} 1.0' in text
    assert 'lvs_router_check_duration_seconds_count{virtual="web"} 2.0' in text
    assert 'lvs_router_check_duration_seconds_bucket{le="0.001",virtual="web"} 1.0' in text
    assert 'lvs_router_check_duration_seconds_bucket{le="0.005",virtual="web"} 2.0' in text
    assert 'lvs_router_check_duration_seconds_bucket{le="+Inf",virtual="web"} 2.0' in text
    assert 'lvs_router_check_duration_seconds_sum{virtual="web"} 0.0024' in text
    assert 'lvs_router_check_results_total{result="ok",virtual="web"} 1.0' in text
    assert 'lvs_router_reloads_total{outcome="failed"} 1.0' in text
    assert "lvs_router_dataplane_sync_seconds_count 1.0" in text
    assert 'lvs_router_sorry_server_active{virtual="web"} 0.0' in text


def test_metrics_scrape_asks_the_source_and_falls_back_to_the_last_status() -> None:
    """Each scrape takes a fresh status from the source (the daemon's loop); one that
    raises (a busy or stopped loop) leaves the last status in the answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asked: list[int] = []

    def source() -> dict:
        asked.append(1)
        if len(asked) == 2:
            raise TimeoutError("the loop did not answer")
        fresh = json.loads(json.dumps(STATUS))
        fresh["virtuals"][0]["servers"][0]["weight"] = 10 + len(asked)
        return fresh

    m = Metrics()
    m.update(STATUS)
    m.source = source
    m.serve("127.0.0.1", port)

    def weight() -> str:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        line = next(
            x for x in body.decode().splitlines() if x.startswith("lvs_router_server_weight{")
        )
        return line.rsplit(" ", 1)[1]

    try:
        assert weight() == "11.0"  # asked at scrape time
        assert weight() == "11.0"  # the source failed: the last status
        assert weight() == "13.0"
    finally:
        m.close()
    assert len(asked) == 3


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.daemon_cli", *argv],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
    )


def test_run_with_a_broken_config_exits_1_with_file_line_col(tmp_path: Path) -> None:
    cf = tmp_path / "lvs.cf"
    cf.write_text("network = direct\nvirtual web {\n    active = 1\n    port = x\n}\n")
    r = _cli("run", "-c", str(cf), "--socket", str(tmp_path / "s"), "--metrics", "off")
    assert r.returncode == 1
    assert f"{cf}:4:" in r.stderr
    assert "not started" in r.stderr
    assert not (tmp_path / "s").exists()


def test_run_with_a_missing_config_exits_1() -> None:
    r = _cli("run", "-c", "/nonexistent/lvs.cf", "--metrics", "off")
    assert r.returncode == 1 and "cannot read /nonexistent/lvs.cf" in r.stderr


def test_run_xdp_without_interface_is_a_usage_error(tmp_path: Path) -> None:
    r = _cli("run", "-c", str(tmp_path / "x.cf"), "--dataplane", "xdp")
    assert r.returncode == 2 and "--interface" in r.stderr


def test_reload_and_status_without_a_daemon_exit_1(tmp_path: Path) -> None:
    for cmd in ("reload", "status"):
        r = _cli(cmd, "--socket", str(tmp_path / "none.sock"))
        assert r.returncode == 1 and "cannot reach the daemon" in r.stderr
