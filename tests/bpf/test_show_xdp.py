"""``lvs-router show --dataplane xdp``: a reader finds a running program's pinned maps
from the lvs.cf it was built from and prints their counters, IPv6 virtuals included
(tests/bpf/lb6.cf: IPv6 and IPv4 services in one program)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane.libbpf import prog_run
from dataplane.plan import plan
from dataplane.xdp import XdpDataplane
from runtime.cli import main

from .conftest import HERE
from .packets import SYN, tcp6_packet, tcp_packet

pytestmark = pytest.mark.bpf
XDP_TX = 3
CONFIG = HERE / "lb6.cf"
MACS = {IPv6Address(f"2001:2:1::{i}"): bytes.fromhex(f"0200000006{i:02x}") for i in (1, 2, 3)}
MACS[IPv4Address("198.18.1.1")] = bytes.fromhex("020000000401")


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = Path(f"/sys/fs/bpf/lvs-router-show-{os.getpid()}")
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_show_reads_the_pinned_counters_of_ipv6_and_ipv4_services(
    pin_dir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = compile_file(str(CONFIG))
    assert result.ok
    # the sizes show uses: plan()'s defaults, as `lvs-router run` builds it
    running = XdpDataplane(plan(result.config, ipv6=True), pin_dir=pin_dir)
    try:
        running.sync(MACS)
        for sport in (4000, 4001, 4002):
            packet = tcp6_packet("2001:2:9::5", "2001:2::10", sport, 80, SYN)
            assert prog_run(running.prog_fd, packet).retval == XDP_TX
        packet = tcp_packet("198.18.9.5", "198.18.0.10", 4000, 80, SYN)
        assert prog_run(running.prog_fd, packet).retval == XDP_TX
        monkeypatch.setenv("COLUMNS", "200")
        assert main(["show", "--dataplane", "xdp", "--pin-dir", pin_dir, str(CONFIG)]) == 0
    finally:
        running.close()
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    web6 = [cell.strip() for cell in rows["web6"].split("│")]
    assert web6[2:5] == ["[2001:2::10]:80/tcp", "direct wrr", "3"], web6
    web4 = [cell.strip() for cell in rows["web4"].split("│")]
    assert web4[2] == "198.18.0.10:80/tcp" and web4[4] == "1", web4
    assert "│ 2001:2:1::1 " in out  # real servers listed with their IPv6 address
