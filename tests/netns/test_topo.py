"""The topology helper itself: namespaces come and go, servers answer across a veth."""

from __future__ import annotations

import pytest

from tests.netns.topo import PREFIX, Topology, sh

pytestmark = pytest.mark.netns

CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
name = s.recv(100); s.sendall(b"ping"); echo = s.recv(100); s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(b"x", (sys.argv[1], 53)); print(name.decode(), echo.decode(), u.recv(100).decode())
"""


def test_servers_answer_across_a_veth_and_everything_is_removed() -> None:
    with Topology("selftest") as t:
        a, b = t.netns("client"), t.netns("server")
        t.veth(a, "eth0", b, "eth0")
        a.addr("eth0", "198.18.200.1/24")
        b.addr("eth0", "198.18.200.2/24")
        t.serve(b, name="rs1", tcp=[80], udp=[53])
        assert a.python(CLIENT, "198.18.200.2").split() == ["rs1", "ping", "rs1"]
        names = [ns.name for ns in t.spaces]
    left = sh("ip", "netns", "list")
    assert not any(n in left for n in names)
    assert all(n.startswith(PREFIX + "-") for n in names)
