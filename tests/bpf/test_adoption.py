"""Pinned maps: a second program (a restarted daemon, a new config) adopts the
tracked flows, persistence templates and counters of the first."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane.libbpf import prog_run
from dataplane.plan import plan
from dataplane.xdp import RealState, XdpDataplane

from .conftest import HERE, MACS, SIZES
from .packets import ACK, SYN, TCP, tcp_packet

pytestmark = pytest.mark.bpf
XDP_TX = 3


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = Path(f"/sys/fs/bpf/lvs-router-test-{os.getpid()}")
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_second_program_adopts_flows_and_counters(pin_dir: str) -> None:
    p = plan(compile_file(str(HERE / "lb.cf")).config, SIZES)
    first = XdpDataplane(p, pin_dir=pin_dir)
    first.sync(MACS)
    syn = tcp_packet("198.18.9.5", "198.18.0.10", 41000, 80, SYN)
    out = prog_run(first.prog_fd, syn)
    assert out.retval == XDP_TX
    real_mac = out.data[:6]
    assert first.pin_program().endswith("/lb_ingress")
    assert sorted(os.listdir(pin_dir)) == sorted(
        ["conntrack", "globals", "global_stats", "lb_ingress", "persist", "real_stats",
         "reals", "rings", "service_stats", "services", "vips"]
    )  # fmt: skip
    first.close()

    second = XdpDataplane(p, pin_dir=pin_dir)
    key = (IPv4Address("198.18.9.5"), 41000, IPv4Address("198.18.0.10"), 80, TCP)
    assert key in second.maps.flows()
    assert second.maps.service_counters(0).packets == 1
    # the new process writes the same tables; even with the flow's server quiesced
    # meanwhile, the adopted flow stays where it was
    rid = second.maps.flows()[key][0]
    second.sync(MACS, {rid: RealState(weight=0)})
    out = prog_run(second.prog_fd, tcp_packet("198.18.9.5", "198.18.0.10", 41000, 80, ACK))
    assert out.retval == XDP_TX and out.data[:6] == real_mac
    assert second.maps.global_counters()["ct_hit"] == 1
    second.close()
