"""``lvs-router run --dataplane xdp`` live: the daemon checks real servers in namespaces
and steers real client traffic through our XDP program (direct routing).

One L2 segment (a bridge in its own namespace) joins a client, the director and three
real servers (rs3 is only ever a sorry server). The daemon runs in the director's
namespace as its own process (``python -m runtime.daemon_cli run``), finds the real
servers' MACs in the neighbour table itself, and is driven only as an operator would:
lvs.cf, SIGHUP / ``reload``, SIGTERM, SIGKILL, the control socket. Health is changed
by stopping and starting the real servers' TCP/UDP services, or by flipping the file a
``send_program`` reads. Timing: ``timeout = 1``, ``reentry = 2``; every wait polls the
daemon's status for a state, with a generous deadline, and never asserts a duration.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from runtime.daemon import Daemon, Options
from tests.netns.daemon_lab import DEADLINE_S, server_states, write_check_script
from tests.netns.daemon_lab import DaemonLab as Lab
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import dr_segment, pass_on_switch

pytestmark = pytest.mark.netns

VIP = "198.18.30.100"
DIRECTOR = "198.18.30.1"
CLIENT_ADDR = "198.18.30.2"
REALS = {"rs1": "198.18.30.11", "rs2": "198.18.30.12", "rs3": "198.18.30.13"}


def server_block(name: str, weight: int = 1, active: int = 1) -> str:
    return (
        f"    server {name} {{\n        address = {REALS[name]}\n        active = {active}\n"
        f"        weight = {weight}\n    }}\n"
    )


def virtual(name: str, port: int, body: str, servers: str, protocol: str = "tcp") -> str:
    if "expect" not in body:  # servers.py greets with its name (port 80's HTTP probe would fail)
        body += '    expect = "rs"\n'
    return (
        f"virtual {name} {{\n    active = 1\n    address = {VIP} eth0:1\n    port = {port}\n"
        f"    protocol = {protocol}\n    scheduler = wrr\n    timeout = 1\n    reentry = 2\n"
        f"{body}{servers}}}\n"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("daemon-xdp")
    write_check_script(work)
    with Topology("daemon-xdp") as t:
        seg = dr_segment(t, clients=[CLIENT_ADDR], director=DIRECTOR, vips=[VIP], reals=REALS)
        # neighbour entries age in about a second here (30 s by default), so that a
        # replaced real server's new MAC is learned quickly
        seg.director.sysctl("net.ipv4.neigh.eth0.base_reachable_time_ms", 1000)
        seg.director.sysctl("net.ipv4.neigh.eth0.delay_first_probe_time", 1)
        with pass_on_switch(seg):
            proc = start_client(seg.client)
            lab = Lab(
                t,
                seg.director,
                seg.client,
                seg.reals,
                proc,
                work,
                tag="daemon-test",
                addresses=dict(REALS),
                vip=VIP,
                src=CLIENT_ADDR,
            )
            try:
                yield lab
            finally:
                lab.close()


@pytest.fixture
def lab(built: Lab) -> Iterator[Lab]:
    for name in ("rs1", "rs2"):
        if name not in built.tcp:
            built.start_tcp(name)
        built.set_check(name, "ok")
    yield built
    built.reset()


# --------------------------------------------------------------------------- tests


def test_a_stopped_service_leaves_and_returns_after_reentry(lab: Lab) -> None:
    lab.write_config(virtual("web", 80, "", server_block("rs1") + server_block("rs2")))
    lab.start("--on-stop", "remove")
    lab.wait_servers("web", rs1="up", rs2="up")
    assert lab.names() == {"rs1", "rs2"}
    lab.stop_tcp("rs1")
    st = lab.wait_servers("web", rs1="down")
    rs1 = next(r for r in st["virtuals"][0]["servers"] if r["name"] == "rs1")
    assert rs1["in_dataplane"] is False and rs1["last_ok"] is False
    assert lab.names() == {"rs2"}  # every new connection goes to the one left
    lab.start_tcp("rs1")
    lab.wait_servers("web", rs1="up")
    assert lab.names(n=30) == {"rs1", "rs2"}
    assert lab.stop() == 0
    assert "stopping" in lab.log() and "removed" in lab.log()
    assert lab.names(n=3) == {"error"}  # --on-stop remove: nothing forwards any more


def test_quiesce_keeps_open_connections_send_program_decides(lab: Lab) -> None:
    program = f'    send_program = "{lab.work / "check.sh"} %h"\n    expect = "ok"\n'
    body = "    quiesce_server = 1\n" + program
    lab.write_config(virtual("web", 80, body, server_block("rs1") + server_block("rs2")))
    lab.start()
    lab.wait_servers("web", rs1="up", rs2="up")
    sport, name = lab.ask(op="hold", src=CLIENT_ADDR, dst=VIP, port=80)
    other = "rs2" if name == "rs1" else "rs1"
    lab.set_check(name, "fail")  # the program's output no longer equals expect
    st = lab.wait_servers("web", **{name: "quiesced"})
    row = next(r for r in st["virtuals"][0]["servers"] if r["name"] == name)
    assert row["in_dataplane"] and row["weight"] == 0
    for i in range(5):
        assert lab.ask(op="echo", sport=sport, data=f"still-{i}") == f"still-{i}"
    assert lab.names() == {other}
    lab.set_check(name, "ok")
    lab.wait_servers("web", **{name: "up"})
    assert lab.ask(op="echo", sport=sport, data="after") == "after"
    lab.ask(op="close", sport=sport)


def test_sorry_server_in_when_no_server_is_left_out_when_one_returns(lab: Lab) -> None:
    lab.start_tcp("rs3")
    try:
        body = (
            f"    sorry_server = {REALS['rs3']}\n"
            f'    send_program = "{lab.work / "check.sh"} %h"\n    expect = "ok"\n'
        )
        lab.write_config(virtual("web", 80, body, server_block("rs1") + server_block("rs2")))
        lab.start()
        lab.wait_servers("web", rs1="up", rs2="up")
        assert lab.names() == {"rs1", "rs2"}
        lab.set_check("rs1", "fail")
        lab.set_check("rs2", "fail")
        lab.wait(lambda s: s["virtuals"][0]["sorry_active"], "the sorry server is in")
        assert lab.names() == {"rs3"}
        lab.set_check("rs2", "ok")
        lab.wait(lambda s: not s["virtuals"][0]["sorry_active"], "the sorry server is out")
        assert lab.names() == {"rs2"}
    finally:
        lab.stop_tcp("rs3")


def test_udp_service_checked_with_send_expect(lab: Lab) -> None:
    for name in ("rs1", "rs2"):
        lab.start_udp(name)
    body = '    send = "hello"\n    expect = "rs"\n'
    lab.write_config(virtual("dns", 53, body, server_block("rs1") + server_block("rs2"), "udp"))
    lab.start()
    lab.wait_servers("dns", rs1="up", rs2="up")
    assert lab.udp_names() == {"rs1", "rs2"}
    lab.stop_udp("rs2")  # the kernel answers port unreachable: the read fails
    lab.wait_servers("dns", rs2="down")
    assert lab.udp_names() == {"rs1"}


def test_reload_adds_removes_changes_without_disturbing_others(lab: Lab) -> None:
    web = virtual("web", 80, "", server_block("rs1") + server_block("rs2"))
    old = virtual("old", 8080, "", server_block("rs1"))
    lab.write_config(web + old)
    daemon = lab.start()
    lab.wait_servers("web", rs1="up", rs2="up")
    lab.wait_servers("old", rs1="up")
    sport, _name = lab.ask(op="hold", src=CLIENT_ADDR, dst=VIP, port=80)
    assert lab.names(port=8080, n=3) == {"rs1"}
    # old goes, new comes (port 8080 again, other server), web's weights change
    new = virtual("new", 8080, "", server_block("rs2"))
    web2 = virtual("web", 80, "", server_block("rs1", weight=3) + server_block("rs2"))
    lab.write_config(web2 + new)
    daemon.send_signal(signal.SIGHUP)
    lab.wait(lambda s: s["reloads"]["ok"] == 1, "the SIGHUP reload is done")
    st = lab.wait_servers("new", rs2="up")
    assert {v["name"] for v in st["virtuals"]} == {"web", "new"}
    weights = {r["name"]: r["weight"] for r in st["virtuals"][0]["servers"]}
    assert weights == {"rs1": 3, "rs2": 1}
    assert lab.names(port=8080, n=5) == {"rs2"}
    for i in range(3):  # the untouched service's open connection survived
        assert lab.ask(op="echo", sport=sport, data=f"kept-{i}") == f"kept-{i}"
    # reload through the control socket: the same file again changes nothing
    done = lab.reload()
    assert done.returncode == 0, done.stderr
    assert "0 virtual(s) added, 0 removed, 0 changed; 0 dataplane change(s)" in done.stdout
    assert lab.ask(op="echo", sport=sport, data="again") == "again"
    lab.ask(op="close", sport=sport)


def test_broken_reload_changes_nothing_and_reports_the_position(lab: Lab) -> None:
    good = virtual("web", 80, "", server_block("rs1") + server_block("rs2"))
    lab.write_config(good)
    lab.start()
    lab.wait_servers("web", rs1="up", rs2="up")
    sport, _name = lab.ask(op="hold", src=CLIENT_ADDR, dst=VIP, port=80)
    lab.config.write_text(
        "network = direct\n" + good + "virtual broken {\n    active = 1\n    port = x\n}\n"
    )
    done = lab.reload()
    assert done.returncode == 1
    assert f"{lab.config}:" in done.stderr  # file:line:col of the error
    assert "old config stays in force" in done.stderr
    st = lab.status()
    assert st["reloads"] == {"ok": 0, "failed": 1}
    assert server_states(st, "web") == {"rs1": "up", "rs2": "up"}
    assert lab.names() == {"rs1", "rs2"}
    assert lab.ask(op="echo", sport=sport, data="fine") == "fine"
    lab.ask(op="close", sport=sport)


def test_sigkill_keeps_forwarding_and_a_restart_adopts_without_dropping(lab: Lab) -> None:
    lab.write_config(virtual("web", 80, "", server_block("rs1") + server_block("rs2")))
    lab.start()
    lab.wait_servers("web", rs1="up", rs2="up")
    sport, _name = lab.ask(op="hold", src=CLIENT_ADDR, dst=VIP, port=80)
    assert lab.stop(signal.SIGKILL) == -signal.SIGKILL
    assert lab.names() == {"rs1", "rs2"}  # the pinned program still forwards
    assert lab.ask(op="echo", sport=sport, data="orphaned") == "orphaned"
    lab.start()
    st = lab.status()  # adopted: both servers in before any check said so
    assert all(r["in_dataplane"] for r in st["virtuals"][0]["servers"])
    assert "adopted=2" in lab.log()
    lab.wait_servers("web", rs1="up", rs2="up")
    for i in range(3):
        assert lab.ask(op="echo", sport=sport, data=f"adopted-{i}") == f"adopted-{i}"
    lab.ask(op="close", sport=sport)


def test_systemd_notifications_and_prometheus_metrics(lab: Lab) -> None:
    lab.write_config(virtual("web", 80, "", server_block("rs1") + server_block("rs2")))
    notify = lab.work / "notify.sock"
    notify.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind(str(notify))
        sd.settimeout(DEADLINE_S)
        daemon = lab.start("--metrics", "127.0.0.1:9539", env={"NOTIFY_SOCKET": str(notify)})
        assert sd.recv(1000).startswith(b"READY=1")
        lab.wait_servers("web", rs1="up", rs2="up")
        assert lab.names() == {"rs1", "rs2"}
        daemon.send_signal(signal.SIGHUP)
        assert sd.recv(1000).startswith(b"RELOADING=1")
        assert sd.recv(1000) == b"READY=1"
        lab.wait(lambda s: s["reloads"]["ok"] == 1, "the reload is done")
        scrape = (
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:9539/metrics', timeout=10).read().decode())"
        )
        deadline = time.monotonic() + DEADLINE_S
        while True:  # gauges are refreshed every few seconds
            text = lab.lb.python(scrape)
            if 'lvs_router_server_up{server="rs2",virtual="web"} 1.0' in text and (
                'lvs_router_reloads_total{outcome="ok"} 1.0' in text
            ):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
        assert 'lvs_router_server_in_dataplane{server="rs1",virtual="web"} 1.0' in text
        assert 'lvs_router_check_results_total{result="ok",virtual="web"}' in text
        packets = [
            line
            for line in text.splitlines()
            if line.startswith('lvs_router_dataplane_packets_total{server="",virtual="web"}')
        ]
        assert packets and float(packets[0].split()[-1]) > 0, packets
        assert lab.stop() == 0
        assert sd.recv(1000) == b"STOPPING=1"


def test_a_replaced_real_server_with_a_new_mac_keeps_working(lab: Lab) -> None:
    lab.write_config(virtual("web", 80, "", server_block("rs1") + server_block("rs2")))
    lab.start()
    lab.wait_servers("web", rs1="up", rs2="up")
    assert lab.names() == {"rs1", "rs2"}
    lab.replace_real("rs1", "web")


def test_hard_shutdown_when_a_checker_dies_removes_our_services(lab: Lab) -> None:
    """lvsd's hard_shutdown = 1 (the default): the monitor reports a dead checker task
    (its on_crash callback), the daemon removes our services and exits 1. In-process,
    in the director's namespace, so the test can be the monitor's caller."""
    lab.write_config(virtual("web", 80, "", server_block("rs1") + server_block("rs2")))
    opts = Options(
        config=str(lab.config),
        dataplane="xdp",
        interface="eth0",
        pin_dir=lab.pin_dir,
        socket=None,
        metrics=None,
    )

    async def scenario() -> tuple[int, set[str]]:
        daemon = Daemon(opts)
        running = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + DEADLINE_S
        while not (
            daemon.director is not None
            and all(p.live for p in daemon.director.desired().placements.values())
        ):
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.2)
        before = await asyncio.to_thread(lab.names)
        daemon.checker_crashed("web", "rs1", "RuntimeError('boom')")
        return await asyncio.wait_for(running, DEADLINE_S), before

    with inside(lab.lb):
        code, before = asyncio.run(scenario())
    assert before == {"rs1", "rs2"}
    assert code == 1
    assert lab.names(n=3) == {"error"}  # our services are gone from the dataplane
