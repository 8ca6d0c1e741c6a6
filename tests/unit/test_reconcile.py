"""The pure reconcile diff: one transition per test, with the exact operations expected.

Each test compiles a state X and a state Y (lvs.cf text plus runtime overrides), starts
from X as if the kernel held it, and checks ``reconcile(Y, X)`` word for word in
ipvsadm syntax; then that the operations, applied in memory, give Y and that
reconciling again gives nothing.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from compiler import Dialect, Source, compile_source
from dataplane.reconcile import (
    AddDest,
    AddService,
    DeleteDest,
    DeleteService,
    EditDest,
    EditService,
    IPVSState,
    Overrides,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    SyncDaemon,
    SyncState,
    Timeouts,
    desired_state,
    reconcile,
    service_key,
    simulate,
)

pytestmark = pytest.mark.unit

HEAD = "primary = 198.18.0.2\nnetwork = {net}\n"


def cfg(body: str, net: str = "nat", head: str = ""):
    # the reconciler must handle any model that lowers cleanly, whatever the checks think
    src = Source("t.cf", HEAD.format(net=net) + head + body)
    r = compile_source(src, Dialect.EXTENDED, run_checks=False)
    assert r.ok, [f"{d.span}: {d.message}" for d in r.errors]
    return r.config


def virtual(name="web", vip="198.18.0.10", extra="", servers=None) -> str:
    if servers is None:
        servers = server("a", "198.19.0.11") + server("b", "198.19.0.12")
    return f"virtual {name} {{\n active = 1\n address = {vip} eth0:1\n{extra}{servers}}}\n"


def server(name: str, rip: str, extra: str = "") -> str:
    return f" server {name} {{\n  address = {rip}\n  active = 1\n{extra} }}\n"


TWO = virtual() + virtual("dns", "198.18.0.20", " protocol = udp\n port = 53\n")


def table_only(state: IPVSState) -> IPVSState:
    return IPVSState(state.services)


def transition(x: IPVSState, y: IPVSState) -> list[str]:
    """reconcile(y, x) as ipvsadm lines; checks convergence and idempotence on the way."""
    ops = reconcile(y, x)
    after = simulate(x, ops)
    assert reconcile(y, after) == ()
    assert _norm(after) == _norm(y)
    return [str(op) for op in ops]


def _norm(state: IPVSState):
    return {
        service_key(s): (s.scheduler, s.persistent, s.pmask, frozenset(s.destinations))
        for s in state.services
    }


def state(body: str, ov: Overrides | None = None, net: str = "nat") -> IPVSState:
    return table_only(desired_state(cfg(body, net), ov))


# --------------------------------------------------------------------------- no change


def test_same_state_twice_is_nothing():
    s = desired_state(cfg(TWO, head="tcp_timeout = 900\nsyncdaemon = 1\nsyncd_id = 3\n"))
    first = reconcile(s, IPVSState())
    assert first
    assert reconcile(s, simulate(IPVSState(), first)) == ()


def test_from_empty_adds_services_then_destinations():
    assert transition(IPVSState(), state(TWO)) == [
        "-A -t 198.18.0.10:80 -s wlc",
        "-A -u 198.18.0.20:53 -s wlc",
        "-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 1",
        "-a -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 1",
        "-a -u 198.18.0.20:53 -r 198.19.0.11:53 -m -w 1",
        "-a -u 198.18.0.20:53 -r 198.19.0.12:53 -m -w 1",
    ]


def test_to_empty_deletes_services_only():
    # deleting a service removes its destinations in the kernel: no -d needed, no flush
    assert transition(state(TWO), IPVSState()) == [
        "-D -t 198.18.0.10:80",
        "-D -u 198.18.0.20:53",
    ]


# --------------------------------------------------------------------------- services


def test_add_service_touches_nothing_else():
    assert transition(state(virtual()), state(TWO)) == [
        "-A -u 198.18.0.20:53 -s wlc",
        "-a -u 198.18.0.20:53 -r 198.19.0.11:53 -m -w 1",
        "-a -u 198.18.0.20:53 -r 198.19.0.12:53 -m -w 1",
    ]


def test_remove_service():
    assert transition(state(TWO), state(virtual())) == ["-D -u 198.18.0.20:53"]


def test_inactive_virtual_is_removed():
    body = virtual() + virtual("dns", "198.18.0.20", " protocol = udp\n port = 53\n")
    off = body.replace("virtual dns {\n active = 1", "virtual dns {\n active = 0")
    assert transition(state(body), state(off)) == ["-D -u 198.18.0.20:53"]


def test_scheduler_change_is_an_edit():
    assert transition(state(virtual()), state(virtual(extra=" scheduler = rr\n"))) == [
        "-E -t 198.18.0.10:80 -s rr"
    ]


def test_persistence_on_and_off_is_an_edit():
    plain = state(virtual())
    sticky = state(virtual(extra=" persistent = 300\n pmask = 255.255.255.0\n"))
    assert transition(plain, sticky) == ["-E -t 198.18.0.10:80 -s wlc -p 300 -M 255.255.255.0"]
    assert transition(sticky, plain) == ["-E -t 198.18.0.10:80 -s wlc"]


def test_port_change_is_a_new_service():
    # the port is part of the service's key: the old one goes, a new one comes
    assert transition(state(virtual()), state(virtual(extra=" port = 8080\n"))) == [
        "-D -t 198.18.0.10:80",
        "-A -t 198.18.0.10:8080 -s wlc",
        "-a -t 198.18.0.10:8080 -r 198.19.0.11:8080 -m -w 1",
        "-a -t 198.18.0.10:8080 -r 198.19.0.12:8080 -m -w 1",
    ]


def test_udp_service_edit_leaves_tcp_alone():
    udp_rr = virtual() + virtual(
        "dns", "198.18.0.20", " protocol = udp\n port = 53\n scheduler = rr\n"
    )
    assert transition(state(TWO), state(udp_rr)) == ["-E -u 198.18.0.20:53 -s rr"]


# --------------------------------------------------------------------------- real servers


def test_server_down_and_up():
    up = state(virtual())
    down = state(virtual(), Overrides(down=frozenset({("web", "b")})))
    assert transition(up, down) == ["-d -t 198.18.0.10:80 -r 198.19.0.12:80"]
    assert transition(down, up) == ["-a -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 1"]


def test_quiesce_and_back():
    up = state(virtual())
    quiet = state(virtual(), Overrides(quiesced=frozenset({("web", "a")})))
    assert transition(up, quiet) == ["-e -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 0"]
    assert transition(quiet, up) == ["-e -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 1"]


def test_weight_change_from_runtime_and_from_config():
    base = state(virtual())
    heavier = state(virtual(), Overrides(weights={("web", "b"): 40}))
    assert transition(base, heavier) == ["-e -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 40"]
    cfg_weight = virtual(
        servers=server("a", "198.19.0.11") + server("b", "198.19.0.12", "  weight = 7\n")
    )
    assert transition(base, state(cfg_weight)) == ["-e -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 7"]


def test_down_wins_over_quiesce_and_weight():
    key = ("web", "a")
    ov = Overrides(down=frozenset({key}), quiesced=frozenset({key}), weights={key: 9})
    assert transition(state(virtual()), state(virtual(), ov)) == [
        "-d -t 198.18.0.10:80 -r 198.19.0.11:80"
    ]


def test_forwarding_change_nat_to_direct():
    # DR keeps the service's port, so a NAT server on 8080 becomes a new destination
    servers = server("a", "198.19.0.11") + server("b", "198.19.0.12", "  port = 8080\n")
    nat = state(virtual(servers=servers), net="nat")
    dr = state(virtual(servers=servers), net="direct")
    assert transition(nat, dr) == [
        "-d -t 198.18.0.10:80 -r 198.19.0.12:8080",
        "-e -t 198.18.0.10:80 -r 198.19.0.11:80 -g -w 1",
        "-a -t 198.18.0.10:80 -r 198.19.0.12:80 -g -w 1",
    ]


def test_sorry_server_in_and_out():
    body = virtual(extra=" sorry_server = 198.19.0.99\n")
    all_down = Overrides(down=frozenset({("web", "a"), ("web", "b")}))
    sorry = Overrides(down=all_down.down, sorry=frozenset({"web"}))
    before, after = state(body, all_down), state(body, sorry)
    assert transition(before, after) == ["-a -t 198.18.0.10:80 -r 198.19.0.99:80 -m -w 1"]
    # a real server is back: it comes in, the sorry server goes out first
    back = state(body, Overrides(down=frozenset({("web", "b")})))
    assert transition(after, back) == [
        "-d -t 198.18.0.10:80 -r 198.19.0.99:80",
        "-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 1",
    ]


def test_unknown_destination_in_kernel_is_removed():
    x = state(virtual())
    extra = IPVSState(
        tuple(
            s.__class__(**{**_fields(s), "destinations": (*s.destinations, _dest("198.19.0.50"))})
            for s in x.services
        )
    )
    assert transition(extra, x) == ["-d -t 198.18.0.10:80 -r 198.19.0.50:80"]


def _fields(s):
    return {f: getattr(s, f) for f in s.__slots__}


def _dest(addr: str):
    from compiler.emit.ipvsadm import Destination
    from compiler.model import Network

    return Destination(IPv4Address(addr), 80, Network.NAT, 1)


# --------------------------------------------------------------------------- fwmark


FWM = (
    "virtual http {\n active = 1\n address = 198.18.0.30 eth0:1\n fwmark = 80\n"
    + server("a", "198.19.0.11")
    + "}\n"
    + "virtual https {\n active = 1\n address = 198.18.0.30 eth0:1\n fwmark = 80\n port = 443\n"
    + server("a", "198.19.0.11")
    + "}\n"
)


def test_fwmark_service_keeps_server_ports():
    assert transition(IPVSState(), state(FWM, net="direct")) == [
        "-A -f 80 -s wlc",
        "-a -f 80 -r 198.19.0.11:80 -g -w 1",
        "-a -f 80 -r 198.19.0.11:443 -g -w 1",
    ]


def test_fwmark_edit_and_server_down():
    x = state(FWM, net="direct")
    y = state(
        FWM.replace(" fwmark = 80\n", " fwmark = 80\n scheduler = rr\n", 1),
        Overrides(down=frozenset({("https", "a")})),
        net="direct",
    )
    assert transition(x, y) == [
        "-d -f 80 -r 198.19.0.11:443",
        "-E -f 80 -s rr",
    ]


def test_fwmark_change_is_delete_and_add():
    x = state(FWM, net="direct")
    y = state(FWM.replace("fwmark = 80", "fwmark = 81"), net="direct")
    assert transition(x, y) == [
        "-D -f 80",
        "-A -f 81 -s wlc",
        "-a -f 81 -r 198.19.0.11:80 -g -w 1",
        "-a -f 81 -r 198.19.0.11:443 -g -w 1",
    ]


# --------------------------------------------------------------------------- order


def test_order_dest_deletes_service_deletes_edits_adds():
    x = state(TWO)
    y_body = virtual(
        extra=" scheduler = rr\n", servers=server("a", "198.19.0.11") + server("c", "198.19.0.13")
    ) + virtual("mail", "198.18.0.25", " port = 25\n", server("m", "198.19.0.21"))
    y = state(y_body, Overrides(weights={("web", "a"): 5}))
    assert transition(x, y) == [
        "-d -t 198.18.0.10:80 -r 198.19.0.12:80",
        "-D -u 198.18.0.20:53",
        "-E -t 198.18.0.10:80 -s rr",
        "-A -t 198.18.0.25:25 -s wlc",
        "-e -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 5",
        "-a -t 198.18.0.10:80 -r 198.19.0.13:80 -m -w 1",
        "-a -t 198.18.0.25:25 -r 198.19.0.21:25 -m -w 1",
    ]


def test_operations_are_typed():
    ops = reconcile(state(virtual(extra=" scheduler = rr\n")), state(TWO))
    assert [type(o) for o in ops] == [DeleteService, EditService]
    ops = reconcile(state(TWO), IPVSState())
    assert {type(o) for o in ops} == {AddService, AddDest}
    ops = reconcile(
        state(virtual(), Overrides(quiesced=frozenset({("web", "a")}))), state(virtual())
    )
    assert [type(o) for o in ops] == [EditDest]
    ops = reconcile(state(virtual(), Overrides(down=frozenset({("web", "a")}))), state(virtual()))
    assert [type(o) for o in ops] == [DeleteDest]


# --------------------------------------------------------------------------- timeouts, sync


def test_timeouts_zero_keeps_and_only_changes_are_set():
    want = desired_state(cfg(virtual(), head="tcp_timeout = 900\nudp_timeout = 300\n"))
    have = IPVSState(want.services, Timeouts(900, 120, 300))
    assert reconcile(want, have) == ()  # tcpfin 0 = keep the kernel's 120
    have = IPVSState(want.services, Timeouts(600, 120, 300))
    assert [str(o) for o in reconcile(want, have)] == ["--set 900 0 300"]
    assert reconcile(want, have) == (SetTimeouts(Timeouts(900, 0, 300)),)
    after = simulate(have, reconcile(want, have))
    assert after.timeouts == Timeouts(900, 120, 300)


def test_sync_daemon_master_then_backup():
    c = cfg(virtual(), head="syncdaemon = 1\nsyncd_iface = eth1\nsyncd_id = 263\n")
    master = desired_state(c, role=SyncState.MASTER)
    backup = desired_state(c, role=SyncState.BACKUP)
    empty = IPVSState(master.services, Timeouts(), ())
    assert [str(o) for o in reconcile(master, empty)] == [
        "--start-daemon master --mcast-interface eth1 --syncid 7"  # 263 & 0xff, as pulse
    ]
    running = simulate(empty, reconcile(master, empty))
    assert running.daemons == (SyncDaemon(SyncState.MASTER, "eth1", 7),)
    assert reconcile(master, running) == ()
    assert reconcile(backup, running) == (
        StopDaemon(SyncState.MASTER),
        StartDaemon(SyncDaemon(SyncState.BACKUP, "eth1", 7)),
    )


def test_sync_daemon_not_managed_without_syncdaemon():
    want = desired_state(cfg(virtual()))
    have = IPVSState(want.services, Timeouts(), (SyncDaemon(SyncState.BACKUP, "eth0", 1),))
    assert reconcile(want, have) == ()


def test_fos_config_wants_an_empty_table():
    fos = cfg("service = fos\n")
    assert transition(state(TWO), table_only(desired_state(fos))) == [
        "-D -t 198.18.0.10:80",
        "-D -u 198.18.0.20:53",
    ]
