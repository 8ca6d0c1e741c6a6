"""One compiled XDP program (every feature) shared by the golden-packet tests.

Each test gets it with empty flow tables, zeroed counters and the maps written
from tests/bpf/lb.cf with every real server healthy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane.libbpf import RunResult, prog_run
from dataplane.plan import Plan, Sizes, plan
from dataplane.xdp import RealState, XdpDataplane

HERE = Path(__file__).resolve().parent
SIZES = Sizes(max_services=8, max_reals=16, ct_size=1021, persist_size=509)
MACS = {IPv4Address(f"198.18.1.{i}"): bytes.fromhex(f"0200000001{i:02x}") for i in (1, 2, 3)}


@dataclass
class Lb:
    dp: XdpDataplane
    plan: Plan

    def run(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.prog_fd, packet)

    def set_state(self, state: dict[int, RealState]) -> None:
        self.dp.sync(MACS, state)

    def service(self, name: str):
        return next(s for s in self.plan.services if s.name == name)

    def real(self, service: str, name: str):
        return next(r for r in self.service(service).reals if r.name == name)


@pytest.fixture(scope="session")
def compiled() -> Iterator[Lb]:
    result = compile_file(str(HERE / "lb.cf"))
    assert result.ok
    p = plan(result.config, SIZES)
    dp = XdpDataplane(p, pin_dir=None)
    yield Lb(dp, p)
    dp.close()


@pytest.fixture
def lb(compiled: Lb) -> Lb:
    compiled.dp.maps.clear_flows()
    compiled.dp.maps.reset_counters()
    compiled.set_state({})
    return compiled
