"""IPv6 virtuals on the XDP side of the daemon, without a kernel: the plan the
backend asks for (feature ``ipv6`` only with an IPv6 virtual), where each server
lands in it, MAC lookups by interface and address, mixed-family sorting, and how
status and ``--real-mac`` spell IPv6 addresses."""

from __future__ import annotations

import argparse
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from compiler import compile_text
from dataplane.plan import plan
from dataplane.reconcile import SORRY_SERVER
from runtime.backends import XdpBackend
from runtime.daemon_cli import _mac_pair
from runtime.director import Director, with_sorry_servers, xdp_index, xdp_states
from runtime.neighbours import address_order, lookup
from runtime.status_view import hostport, render

pytestmark = pytest.mark.unit

V4 = """virtual web4 {
    active = 1
    address = 198.18.40.100 eth0
    port = 80
    scheduler = wrr
    server a {
        address = 198.18.40.11
        active = 1
    }
}
"""
V6 = """virtual web6 {
    active = 1
    address = 2001:2:0:40::100 eth0
    port = 80
    scheduler = wrr
    sorry_server = 2001:2:0:40::99
    server a {
        address = 2001:2:0:40::11
        active = 1
        weight = 2
    }
    server b {
        address = 2001:2:0:40::12
        active = 1
    }
}
"""


def config(text: str):
    result = compile_text("lvs.cf", "network = direct\n" + text)
    assert result.ok, result.diagnostics
    return result.config


@pytest.fixture
def backend():
    b = XdpBackend("lo", pin_dir="/nonexistent/never-used")
    yield b
    b.neighbours.close()


def test_the_ipv6_feature_only_with_an_ipv6_virtual(backend: XdpBackend) -> None:
    assert "ipv6" not in backend.plan(config(V4)).features
    assert "ipv6" in backend.plan(config(V6)).features
    mixed = backend.plan(config(V4 + V6))
    assert "ipv6" in mixed.features
    assert {s.vip.version for s in mixed.services} == {4, 6}


def test_every_server_of_a_mixed_config_has_its_real_index() -> None:
    cfg = config(V4 + V6)
    p = plan(with_sorry_servers(cfg), ipv6=True)
    index = xdp_index(cfg, p)
    addresses = {r.index: r.address for r in p.reals}
    assert addresses[index[("web4", "a")]] == IPv4Address("198.18.40.11")
    assert addresses[index[("web6", "a")]] == IPv6Address("2001:2:0:40::11")
    assert addresses[index[("web6", SORRY_SERVER)]] == IPv6Address("2001:2:0:40::99")
    # nothing checked yet: every server out, the sorry server in (no server is live)
    d = Director(cfg)
    states = xdp_states(d.desired(), p)
    assert states[index[("web6", "a")]].failed
    assert not states[index[("web6", SORRY_SERVER)]].failed
    d.server_event("web6", "a", True, None, "ok", 1.0)
    states = xdp_states(d.desired(), p)
    assert not states[index[("web6", "a")]].failed
    assert states[index[("web6", SORRY_SERVER)]].failed


def test_the_sorry_server_carries_its_lvs_cf_position() -> None:
    cfg = config(V6)
    (vs,) = with_sorry_servers(cfg).virtuals
    sorry = vs.servers[-1]
    assert sorry.name == SORRY_SERVER
    assert sorry.span == cfg.virtuals[0].spans["sorry_server"]
    assert str(sorry.spans["address"]).startswith("lvs.cf:7:")


def test_addresses_of_both_families_sort() -> None:
    mixed = [IPv6Address("2001:2::2"), IPv4Address("198.18.0.2"), IPv6Address("2001:2::1")]
    assert sorted(mixed, key=address_order) == [
        IPv4Address("198.18.0.2"),
        IPv6Address("2001:2::1"),
        IPv6Address("2001:2::2"),
    ]


def test_lookup_by_interface_and_address() -> None:
    gw = ip_address("fe80::1")
    rip = ip_address("2001:2::11")
    table = {(3, gw): b"\x02" * 6, (4, gw): b"\x04" * 6, (3, rip): b"\x11" * 6}
    assert lookup(table, (gw, 4)) == b"\x04" * 6  # a link-local hop: its interface's entry
    assert lookup(table, (gw, 5)) is None  # not the same router on another link
    assert lookup(table, (rip, 7)) == b"\x11" * 6  # a global address is one host
    assert lookup(table, (rip, None)) == b"\x11" * 6
    assert lookup(table, (ip_address("2001:2::12"), 3)) is None


def test_real_mac_takes_ipv6_addresses() -> None:
    assert _mac_pair("2001:2::11=02:00:00:00:00:11") == (
        IPv6Address("2001:2::11"),
        bytes.fromhex("020000000011"),
    )
    assert _mac_pair("[2001:2::11]=02-00-00-00-00-11")[0] == IPv6Address("2001:2::11")
    assert _mac_pair("198.18.0.11=02:00:00:00:00:11")[0] == IPv4Address("198.18.0.11")
    with pytest.raises(argparse.ArgumentTypeError):
        _mac_pair("2001:2::11")


def test_status_shows_ipv6_addresses_in_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    assert hostport("2001:2::11", 80) == "[2001:2::11]:80"
    assert hostport("198.18.0.11", 80) == "198.18.0.11:80"
    server = {
        "name": "a",
        "address": "2001:2::11",
        "port": 80,
        "state": "up",
        "in_dataplane": True,
        "weight": 1,
        "configured_weight": 1,
        "reason": "",
        "crashed": False,
        "last_ok": True,
        "last_detail": "",
        "last_latency_s": 0.001,
        "counters": None,
    }
    status = {
        "pid": 1,
        "uptime_s": 1.0,
        "reloads": {"ok": 0, "failed": 0},
        "dataplane": "xdp",
        "config": "lvs.cf",
        "virtuals": [
            {
                "name": "web6",
                "address": "2001:2::100",
                "port": 80,
                "protocol": "tcp",
                "fwmark": 0,
                "scheduler": "wrr",
                "forwarding": "direct",
                "sorry_server": None,
                "sorry_active": False,
                "counters": None,
                "servers": [server],
            }
        ],
    }
    render(status, width=200)
    out = capsys.readouterr().out
    assert "[2001:2::100]:80/tcp" in out and "[2001:2::11]:80" in out


def test_apply_refuses_at_the_line_before_touching_anything(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lvs-router apply --dataplane xdp``: what the XDP dataplane cannot serve as
    asked (here IPv6 NAT without the interface towards the real servers) is refused
    with its lvs.cf position before a MAC is looked for or a program loaded."""
    from runtime.cli import main

    cf = tmp_path / "lvs.cf"
    nat6 = V6.replace("scheduler = wrr", "scheduler = wrr\n    network = nat", 1)
    cf.write_text("network = direct\nnat_router = 2001:2:0:41::fe eth1\n" + nat6)
    pin_dir = tmp_path / "pins"
    argv = ["apply", "--dataplane", "xdp", "--interface", "lo", "--pin-dir", str(pin_dir)]
    assert main([*argv, str(cf)]) == 1
    err = capsys.readouterr().err
    assert f"{cf}:8:" in err and "NAT forwarding on the XDP dataplane needs" in err, err
    assert "nothing applied" in err
    assert not pin_dir.exists()
    assert main([*argv, "--real-mac", "2001:2::11=02:00", str(cf)]) == 2
