"""dataplane.xdp_cli helpers that need no kernel."""

from __future__ import annotations

from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest

from dataplane.xdp_cli import EXIT_USAGE, apply_xdp, parse_macs

pytestmark = pytest.mark.unit


def test_parse_macs() -> None:
    assert parse_macs(["198.18.1.1=02:00:00:00:01:01", "198.18.1.2=02-00-00-00-01-02"]) == {
        IPv4Address("198.18.1.1"): bytes.fromhex("020000000101"),
        IPv4Address("198.18.1.2"): bytes.fromhex("020000000102"),
    }
    with pytest.raises(ValueError, match="not a MAC"):
        parse_macs(["198.18.1.1=02:00"])


def test_apply_refuses_nat_without_nat_interface_before_touching_the_kernel(
    tmp_path, capsys
) -> None:
    cf = tmp_path / "nat.cf"
    cf.write_text(
        "network = nat\nnat_router = 198.18.0.254 eth1:1\n"
        "virtual v {\n active = 1\n address = 198.18.0.1 eth0:1\n}\n"
    )
    args = SimpleNamespace(config=str(cf), interface="eth9", real_mac=[], xdp_mode="native")
    assert apply_xdp(args) == EXIT_USAGE
    assert "network = nat needs --nat-interface" in capsys.readouterr().err
