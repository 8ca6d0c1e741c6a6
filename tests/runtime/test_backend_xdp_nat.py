"""`lvs-router run --dataplane xdp` refuses NAT virtuals without ``--nat-interface``,
with the lvs.cf position: the reply path needs the interface towards the real
servers, and loading anyway would drop every NAT packet. With it, they pass (the live
daemon with NAT: tests/netns/test_daemon_xdp_nat.py)."""

from __future__ import annotations

import pytest

from compiler import compile_text
from runtime.backends import BackendError, XdpBackend

CF = """primary = 198.18.0.1
network = direct
nat_router = 198.19.0.1 eth1:1
virtual web {
     active = 1
     address = 198.18.0.100 eth0:1
     port = 80
     network = nat
     server a {
         address = 198.19.0.11
         active = 1
     }
}
"""


def test_a_nat_virtual_without_a_nat_interface_is_refused_at_its_network_line() -> None:
    result = compile_text("lvs.cf", CF)
    assert result.ok
    backend = XdpBackend("lo", pin_dir="/nonexistent/never-used")
    with pytest.raises(BackendError) as err:
        backend.load(result.config)
    assert "virtual web: NAT forwarding on the XDP dataplane needs" in err.value.message
    assert str(err.value.span).startswith("lvs.cf:8:")
    assert "--nat-interface" in (err.value.help or "")


def test_with_a_nat_interface_a_nat_virtual_passes_the_check() -> None:
    result = compile_text("lvs.cf", CF)
    backend = XdpBackend("lo", pin_dir="/nonexistent/never-used", nat_interface="lo")
    assert "nat" in backend.plan(result.config).features


def test_direct_routing_passes_the_check() -> None:
    result = compile_text("lvs.cf", CF.replace("network = nat", "network = direct"))
    plan = XdpBackend("lo", pin_dir="/nonexistent/never-used").plan(result.config)
    assert "nat" not in plan.features
