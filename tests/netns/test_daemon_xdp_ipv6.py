"""``lvs-router run --dataplane xdp`` (and ``lvs-router apply --dataplane xdp``) with
IPv6 virtuals, live: the daemon finds the real servers' MACs in the kernel's IPv6
neighbour table (neighbour discovery when missing), checks [RIP]:port, steers real
client traffic through our XDP program and adopts its pinned IPv6 state after a
SIGKILL.

One dual-stack L2 segment (a bridge in its own namespace) joins a client, the
director and two real servers: 2001:2:0:40::/64 and 198.18.40.0/24. The director
holds the VIPs on eth0; the real servers hold them on ``lo`` and answer the client
directly (direct routing), or decapsulate IP6IP6 with our decap program (tunnel).
Each connection's real server is predicted from the plan's Maglev table and
``plan.flow_hash`` over the IPv6 5-tuple, computed here, not read from the daemon.
The daemon is driven as an operator would (tests/netns/daemon_lab.py); every wait
polls its status with a deadline, never asserting a duration.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane import maglev
from dataplane.decap import Decap
from dataplane.libbpf import map_items, obj_get
from dataplane.maps import U32, Service, ServiceKey6, VipKey6
from dataplane.plan import flow_hash, plan
from runtime.director import with_sorry_servers
from tests.netns.daemon_lab import ROOT, DaemonLab, server_states, stop_process
from tests.netns.topo import Topology, inside, start_client
from tests.netns.xdp_lab import dr_segment, pass_on_switch

pytestmark = pytest.mark.netns

NET = "2001:2:0:40::"
VIP = f"{NET}100"
VIP_TUN = f"{NET}101"
DIRECTOR = f"{NET}1"
CLIENT = f"{NET}2"
REALS = {"rs1": f"{NET}11", "rs2": f"{NET}12"}
WEIGHTS = {"rs1": 1, "rs2": 2}
# the IPv4 side of the segment, for the mixed config
VIP4, DIRECTOR4, CLIENT4 = "198.18.40.100", "198.18.40.1", "198.18.40.2"
REALS4 = {"rs1": "198.18.40.11", "rs2": "198.18.40.12"}


def virtual(
    name: str,
    vip: str = VIP,
    port: int = 80,
    *,
    reals: dict[str, str] = REALS,
    protocol: str = "tcp",
    lines: tuple[str, ...] = (),
) -> str:
    """A wrr virtual (rs1 weight 1, rs2 weight 2) checked every second, re-entry 2 s;
    servers.py greets with its name, so ``expect = "rs"`` (UDP: after ``send``)."""
    check = ('send = "q"', 'expect = "rs"') if protocol == "udp" else ('expect = "rs"',)
    settings = (
        "active = 1",
        f"address = {vip} eth0",
        f"port = {port}",
        f"protocol = {protocol}",
        "scheduler = wrr",
        "timeout = 1",
        "reentry = 2",
        *check,
        *lines,
    )
    servers = "".join(
        f"    server {n} {{\n        address = {a}\n        active = 1\n"
        f"        weight = {WEIGHTS[n]}\n    }}\n"
        for n, a in reals.items()
    )
    return f"virtual {name} {{\n" + "".join(f"    {s}\n" for s in settings) + servers + "}\n"


def predict(lab: DaemonLab, virtual: str):
    """src port -> the server a new flow from the client to ``virtual`` must reach,
    with every server in: the plan's Maglev table (the daemon's, built here from the
    same lvs.cf) at the program's flow hash."""
    result = compile_file(str(lab.config))
    assert result.ok, result.diagnostics
    p = plan(with_sorry_servers(result.config), ipv6=True)
    svc = next(s for s in p.services if s.name == virtual)
    table = maglev.build(svc.members(), p.sizes.ring_size)
    client = ip_address(CLIENT if svc.vip.version == 6 else CLIENT4)

    def server(sport: int) -> str:
        h = flow_hash(client, svc.vip, sport, svc.port, svc.proto)
        return svc.reals[int(table[h % p.sizes.ring_size])].name

    return server


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLab]:
    work = tmp_path_factory.mktemp("daemon-xdp-ipv6")
    decap = Decap([IPv6Address(a) for a in REALS.values()])
    with Topology("daemon-xdp6") as t:
        seg = dr_segment(
            t,
            clients=[CLIENT, CLIENT4],
            director=DIRECTOR,
            vips=[VIP, VIP_TUN, VIP4],
            reals=REALS,
        )
        seg.director.addr("eth0", f"{DIRECTOR4}/24")
        # the VIPs deprecated on the director (docs/operations.md "IPv6"): a /128 VIP
        # in the real servers' /64 would otherwise be the source of the director's
        # own traffic to them, health checks included, and a real server drops
        # packets from an address it holds itself
        for vip in (VIP, VIP_TUN):
            seg.director.ip(
                "-6", "addr", "change", f"{vip}/128", "dev", "eth0", "preferred_lft", "0", "nodad"
            )
        for name, rs in seg.reals.items():
            rs.addr("eth0", f"{REALS4[name]}/24")
            with inside(rs):  # IP6IP6 to the real server's own address: stripped here
                assert decap.attach("eth0") == "native"
        # neighbour entries age in about a second (30 s by default), so that a
        # replaced real server's new MAC is learned quickly
        for key, value in (
            ("base_reachable_time_ms", 1000),
            ("delay_first_probe_time", 1),
            ("retrans_time_ms", 300),
        ):
            seg.director.sysctl(f"net.ipv6.neigh.eth0.{key}", value)
        with pass_on_switch(seg):
            lab = DaemonLab(
                t,
                seg.director,
                seg.client,
                seg.reals,
                start_client(seg.client),
                work,
                tag="daemon-ipv6-test",
                addresses=dict(REALS),
                vip=VIP,
                bind="::",
            )
            # neighbour discovery of fresh veths (link-local DAD, the client's for
            # the VIP) before any test measures anything
            lab.start_tcp("rs1", (80,))
            assert lab.names(n=1, dst=REALS["rs1"]) == {"rs1"}
            try:
                yield lab
            finally:
                lab.close()
    decap.close()


@pytest.fixture
def lab(built: DaemonLab) -> Iterator[DaemonLab]:
    for name in REALS:
        if name not in built.tcp:
            built.start_tcp(name, (80,))
    yield built
    built.reset()


def rows(status: dict, virtual: str) -> dict[str, dict]:
    vs = next(v for v in status["virtuals"] if v["name"] == virtual)
    return {r["name"]: r for r in vs["servers"]}


def wait_in_full(lab: DaemonLab, *virtuals: str) -> None:
    """Every server of ``virtuals`` up and in the dataplane at its configured weight
    (slow start over: the tables :func:`predict` computes)."""

    def full(s: dict) -> bool:
        return all(
            r["state"] == "up" and r["in_dataplane"] and r["weight"] == r["configured_weight"]
            for v in virtuals
            for r in rows(s, v).values()
        )

    lab.wait(full, f"{virtuals} in at their configured weights")


# --------------------------------------------------------------------------- tests


def test_traffic_lands_on_the_predicted_servers_and_status_shows_ipv6(lab: DaemonLab) -> None:
    for name in REALS:
        lab.start_udp(name)
    lab.write_config(virtual("web6") + virtual("dns6", port=53, protocol="udp"))
    lab.start("--metrics", "[::1]:9539")
    wait_in_full(lab, "web6", "dns6")
    web, dns = predict(lab, "web6"), predict(lab, "dns6")
    conns = lab.ask(op="many", dst=VIP, port=80, n=60)
    got = [name for _sport, name in conns]
    assert got == [web(sport) for sport, _name in conns]
    assert set(got) == {"rs1", "rs2"}
    answers = lab.ask(op="udp", dst=VIP, port=53, n=30, ports=True, timeout=3)
    assert [n for _s, n in answers] == [dns(s) for s, _n in answers]
    assert {n for _s, n in answers} == {"rs1", "rs2"}
    # status: addresses as IPv6, [address]:port in the table
    st = lab.status()
    assert rows(st, "web6")["rs1"]["address"] == REALS["rs1"]
    assert next(v for v in st["virtuals"] if v["name"] == "web6")["address"] == VIP
    cli = [sys.executable, "-m", "runtime.daemon_cli", "status", "--socket", lab.socket]
    shown = subprocess.run(cli, capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert shown.returncode == 0, shown.stderr
    assert f"[{VIP}]:80/tcp" in shown.stdout and f"[{REALS['rs2']}]:80" in shown.stdout
    as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60)
    assert rows(json.loads(as_json.stdout), "dns6")["rs2"]["address"] == REALS["rs2"]
    # metrics on an IPv6 loopback address, per real server of the IPv6 virtual
    scrape = (
        "import urllib.request; print(urllib.request.urlopen("
        "'http://[::1]:9539/metrics', timeout=10).read().decode())"
    )
    text = lab.lb.python(scrape)
    assert 'lvs_router_server_up{server="rs2",virtual="web6"} 1.0' in text
    assert 'lvs_router_server_in_dataplane{server="rs1",virtual="dns6"} 1.0' in text
    packets = [
        line
        for line in text.splitlines()
        if line.startswith('lvs_router_dataplane_packets_total{server="rs2",virtual="web6"}')
    ]
    assert packets and float(packets[0].split()[-1]) > 0, packets


def test_a_stopped_service_leaves_and_returns_after_reentry(lab: DaemonLab) -> None:
    for name in REALS:
        lab.start_udp(name)
    lab.write_config(virtual("web6") + virtual("dns6", port=53, protocol="udp"))
    lab.start("--on-stop", "remove")
    lab.wait_servers("web6", rs1="up", rs2="up")
    lab.wait_servers("dns6", rs1="up", rs2="up")
    assert lab.names() == {"rs1", "rs2"}
    lab.stop_tcp("rs1")
    st = lab.wait_servers("web6", rs1="down")
    assert rows(st, "web6")["rs1"]["last_ok"] is False
    assert lab.names() == {"rs2"}  # every new connection goes to the one left
    lab.stop_udp("rs2")  # port unreachable: the UDP check's read fails
    lab.wait_servers("dns6", rs2="down")
    assert lab.udp_names() == {"rs1"}
    lab.start_tcp("rs1", (80,))
    lab.wait_servers("web6", rs1="up")
    assert lab.names(n=30) == {"rs1", "rs2"}
    assert lab.stop() == 0
    assert lab.names(n=3) == {"error"}  # --on-stop remove: nothing forwards any more
    for name, key, value in (("services6", ServiceKey6, Service), ("vips6", VipKey6, U32)):
        fd = obj_get(f"{lab.pin_dir}/{name}")
        try:  # our IPv6 services are gone from the pinned maps too
            assert list(map_items(fd, ctypes.sizeof(key), ctypes.sizeof(value))) == [], name
        finally:
            os.close(fd)


def test_sigkill_keeps_forwarding_and_a_restart_adopts_the_ipv6_state(lab: DaemonLab) -> None:
    lab.write_config(virtual("web6"))
    lab.start()
    wait_in_full(lab, "web6")
    sport, name = lab.ask(op="hold", dst=VIP, port=80)
    assert name == predict(lab, "web6")(sport)
    assert lab.stop(signal.SIGKILL) == -signal.SIGKILL
    assert lab.names() == {"rs1", "rs2"}  # the pinned program still forwards
    assert lab.ask(op="echo", sport=sport, data="orphaned") == "orphaned"
    for m in ("services6", "vips6", "conntrack6"):
        assert (Path(lab.pin_dir) / m).exists(), m
    lab.start()
    st = lab.status()  # adopted: both servers in before any check said so
    assert all(r["in_dataplane"] for r in st["virtuals"][0]["servers"])
    log = lab.log()
    assert "adopted=2" in log, log
    assert "pinned map replaced" not in log, log  # the same maps, flows and all
    lab.wait_servers("web6", rs1="up", rs2="up")
    for i in range(3):
        assert lab.ask(op="echo", sport=sport, data=f"adopted-{i}") == f"adopted-{i}"
    lab.ask(op="close", sport=sport)


def test_a_replaced_real_server_with_a_new_mac_keeps_working(lab: DaemonLab) -> None:
    lab.write_config(virtual("web6"))
    lab.start()
    lab.wait_servers("web6", rs1="up", rs2="up")
    assert lab.names() == {"rs1", "rs2"}
    lab.replace_real("rs1", "web6")


def test_an_ip6ip6_tunnel_virtual(lab: DaemonLab) -> None:
    lab.write_config(virtual("tun6", VIP_TUN, lines=("network = tunnel",)))
    lab.start()
    wait_in_full(lab, "tun6")
    tun = predict(lab, "tun6")
    conns = lab.ask(op="many", dst=VIP_TUN, port=80, n=40)
    assert [n for _s, n in conns] == [tun(s) for s, _n in conns]
    assert {n for _s, n in conns} == {"rs1", "rs2"}


def test_an_ipv4_config_reloaded_with_an_ipv6_virtual(lab: DaemonLab) -> None:
    """An IPv4 config runs without the IPv6 path (no IPv6 maps pinned); a reload that
    adds an IPv6 virtual builds the program with it, keeping the IPv4 state: an open
    IPv4 connection goes on. Then both families are served side by side."""
    # the IPv6 services bind :: (IPv6 only): IPv4 gets its own, on port 8080
    v4 = {name: lab.topo.serve(lab.reals[name], name=name, tcp=[8080]) for name in REALS}
    web4_only = virtual("web4", VIP4, 8080, reals=REALS4)
    try:
        lab.write_config(web4_only)
        lab.start()
        wait_in_full(lab, "web4")
        assert not (Path(lab.pin_dir) / "services6").exists()
        sport, _name = lab.ask(op="hold", src=CLIENT4, dst=VIP4, port=8080)
        lab.write_config(virtual("web6") + web4_only)
        done = lab.reload()
        assert done.returncode == 0, done.stderr
        assert "1 virtual(s) added" in done.stdout, done.stdout
        assert (Path(lab.pin_dir) / "services6").exists()
        wait_in_full(lab, "web6", "web4")
        for i in range(3):
            assert lab.ask(op="echo", sport=sport, data=f"kept-{i}") == f"kept-{i}"
        lab.ask(op="close", sport=sport)
        web4 = predict(lab, "web4")
        conns = lab.ask(op="many", src=CLIENT4, dst=VIP4, port=8080, n=30)
        assert [n for _s, n in conns] == [web4(s) for s, _n in conns]
        assert lab.names() == {"rs1", "rs2"}
        assert lab.names(port=8080, dst=VIP4, src=CLIENT4) == {"rs1", "rs2"}
        # rs2 leaves IPv4 only: the IPv6 virtual keeps it
        stop_process(v4.pop("rs2"))
        lab.wait_servers("web4", rs2="down")
        assert server_states(lab.status(), "web6") == {"rs1": "up", "rs2": "up"}
        assert lab.names(port=8080, dst=VIP4, src=CLIENT4) == {"rs1"}
        assert lab.names() == {"rs1", "rs2"}
    finally:
        for p in v4.values():
            stop_process(p)


def test_apply_puts_an_ipv6_config_in_the_dataplane(lab: DaemonLab) -> None:
    """``lvs-router apply --dataplane xdp``: the steady state (every server in), MACs
    found by neighbour discovery, without the daemon."""
    lab.write_config(virtual("web6"))
    cmd = [
        "nsenter",
        f"--net=/run/netns/{lab.lb.name}",
        sys.executable,
        "-m",
        "runtime.cli",
        "apply",
        "--dataplane",
        "xdp",
        "--interface",
        "eth0",
        "--pin-dir",
        lab.pin_dir,
        str(lab.config),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        assert done.returncode == 0, done.stderr
        assert "XDP program attached to eth0 (native)" in done.stdout, done.stdout
        web = predict(lab, "web6")
        conns = lab.ask(op="many", dst=VIP, port=80, n=40)
        assert [n for _s, n in conns] == [web(s) for s, _n in conns]
        assert {n for _s, n in conns} == {"rs1", "rs2"}
    finally:
        lab.lb.ip("link", "set", "dev", "eth0", "xdp", "off")
