"""HealthMonitor in a network namespace, checking a real server in another namespace
(tests/netns/servers.py over a veth): TCP and UDP checks, the server process stopped
(TCP refused, UDP ICMP port unreachable) and started again (re-entry after reentry)."""

from __future__ import annotations

import asyncio

import pytest

from compiler import compile_text
from runtime.health.monitor import HealthMonitor, ServerEvent
from tests.netns.topo import Topology, inside

pytestmark = pytest.mark.netns

CONFIG = """service = lvs
primary = 198.18.0.1
network = direct
virtual web {
  active = 1
  address = 198.18.0.10 eth0:1
  port = 8080
  send = "hello\\n"
  expect = "rs1"
  timeout = 1
  reentry = 2
  server rs1 {
    address = 198.18.0.2
    active = 1
  }
}
virtual dns {
  active = 1
  address = 198.18.0.10 eth0:1
  port = 53
  protocol = udp
  send = "q"
  expect = "rs1"
  timeout = 1
  reentry = 2
  server rs1 {
    address = 198.18.0.2
    active = 1
  }
}
"""


def test_tcp_and_udp_checks_across_namespaces() -> None:
    result = compile_text("netns.cf", CONFIG)
    assert result.ok, [d.message for d in result.errors]
    with Topology("health") as topo:
        director, real = topo.netns("director"), topo.netns("rs")
        topo.veth(director, "eth0", real, "eth0")
        director.addr("eth0", "198.18.0.1/24")
        real.addr("eth0", "198.18.0.2/24")
        server = topo.serve(real, name="rs1", tcp=[8080], udp=[53], bind="198.18.0.2")
        events: list[ServerEvent] = []

        async def go() -> None:
            nonlocal server
            flag = asyncio.Event()

            def on_event(e: ServerEvent) -> None:
                events.append(e)
                flag.set()

            async def until(count: int) -> None:
                async def wait() -> None:
                    while len(events) < count:
                        flag.clear()
                        await flag.wait()

                await asyncio.wait_for(wait(), 20)

            mon = HealthMonitor(result.config, on_event)
            await mon.start()
            try:
                await until(2)
                assert {(e.virtual, e.up) for e in events} == {("web", True), ("dns", True)}

                server.terminate()
                server.wait(10)
                await until(4)
                downs = {e.virtual: e.reason for e in events[2:]}
                assert downs == {
                    "web": "connect: connection refused",
                    "dns": "read: connection refused (ICMP port unreachable)",
                }

                server = topo.serve(real, name="rs1", tcp=[8080], udp=[53], bind="198.18.0.2")
                await until(6)
                assert {(e.virtual, e.up, e.reason) for e in events[4:]} == {
                    ("web", True, "2 consecutive good checks, re-entered"),
                    ("dns", True, "2 consecutive good checks, re-entered"),
                }
                snap = {s.virtual: s for s in mon.snapshot()}
                assert snap["web"].last_detail == "reply b'rs1'"
                assert snap["dns"].last_detail == "reply b'rs1'"
            finally:
                await mon.stop()

        with inside(director):
            asyncio.run(go())
