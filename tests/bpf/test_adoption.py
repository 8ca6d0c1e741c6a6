"""Pinned maps: a second program (a restarted daemon, a new config) adopts the
tracked flows, persistence templates and counters of the first."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane.libbpf import map_info, obj_get, prog_run
from dataplane.maps import shapes
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
        ["conntrack", "globals", "global_stats", "lb_ingress", "nat_config", "nat_rev",
         "persist", "real_conns", "real_ports", "real_stats", "real_weights", "reals", "rings",
         "service_hints", "service_info", "service_stats", "services", "vips"]
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


def test_size_change_replaces_the_pinned_maps_and_keeps_the_flows(
    pin_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """More services and a bigger conntrack table: the misfit pins are replaced (bcc
    would otherwise adopt them at their old size), tracked flows are copied over,
    counters restart, and a warning says which maps and what was lost."""
    config = compile_file(str(HERE / "lb.cf")).config
    first = XdpDataplane(plan(config, SIZES), pin_dir=pin_dir)
    first.sync(MACS)
    assert first.replaced == []
    syn = tcp_packet("198.18.9.5", "198.18.0.10", 41001, 80, SYN)
    out = prog_run(first.prog_fd, syn)
    assert out.retval == XDP_TX
    real_mac = out.data[:6]
    first.close()

    bigger = dataclasses.replace(SIZES, max_services=16, ct_size=2039)
    caplog.set_level(logging.WARNING, logger="dataplane.xdp")
    second = XdpDataplane(plan(config, bigger), pin_dir=pin_dir)
    replaced = {r.name: r for r in second.replaced}
    assert sorted(replaced) == [
        "conntrack", "nat_rev", "rings", "service_hints", "service_info", "service_stats",
        "services", "vips"
    ]  # fmt: skip
    assert replaced["conntrack"].copied == 1
    assert replaced["service_stats"].copied is None
    assert replaced["rings"].new.max_entries == 16 * bigger.ring_size
    for name in ("rings", "conntrack"):  # the pins now have the new shape
        fd = obj_get(f"{pin_dir}/{name}")
        assert map_info(fd).max_entries == shapes(bigger)[name].max_entries
        os.close(fd)
    text = caplog.text
    old_sets, new_sets = shapes(SIZES)["conntrack"], shapes(bigger)["conntrack"]
    assert (old_sets.max_entries, new_sets.max_entries) == (128, 256)  # sets of 8 flows
    assert f"conntrack has 128 entries of 4+{old_sets.value_size} bytes" in text
    assert "replaced, 1 entries copied" in text
    assert "service_stats" in text and "per-service counters dropped" in text

    second.sync(MACS)
    assert second.maps.service_counters(0).packets == 0
    ack = tcp_packet("198.18.9.5", "198.18.0.10", 41001, 80, ACK)
    out = prog_run(second.prog_fd, ack)
    assert out.retval == XDP_TX and out.data[:6] == real_mac
    assert second.maps.global_counters()["ct_hit"] == 1
    # the last slot of the new, longer rings map is written and read by the program
    last = max(s.index for s in second.plan.services)
    assert second.maps.ring_slot(last, bigger.ring_size - 1) != 0
    second.close()

    third = XdpDataplane(plan(config, bigger), pin_dir=pin_dir)
    assert third.replaced == []
    assert (IPv4Address("198.18.9.5"), 41001, IPv4Address("198.18.0.10"), 80, TCP) in (
        third.maps.flows()
    )
    third.close()


def test_a_reader_never_replaces_pinned_maps(pin_dir: str) -> None:
    """`lvs-router show` builds the program only to read the counters: with other
    sizes in its config it must leave the running program's maps alone."""
    config = compile_file(str(HERE / "lb.cf")).config
    first = XdpDataplane(plan(config, SIZES), pin_dir=pin_dir)
    first.sync(MACS)
    prog_run(first.prog_fd, tcp_packet("198.18.9.5", "198.18.0.10", 41002, 80, SYN))
    fd = obj_get(f"{pin_dir}/conntrack")
    before = map_info(fd)
    os.close(fd)
    reader = XdpDataplane(
        plan(config, dataclasses.replace(SIZES, ct_size=2039)),
        pin_dir=pin_dir,
        replace_misfits=False,
    )
    assert reader.replaced == []
    fd = obj_get(f"{pin_dir}/conntrack")
    assert map_info(fd) == before
    os.close(fd)
    assert reader.maps.service_counters(0).packets == 1
    reader.close()
    first.close()


def test_a_resize_refills_the_ipv6_connection_table_and_templates(pin_dir: str) -> None:
    """conntrack6 is refilled into its new geometry like conntrack (by ct6_hash), and
    persist6's templates are copied: IPv6 flows keep their real servers, and an
    established wlc flow keeps its count."""
    from ipaddress import IPv6Address

    from .packets import tcp6_packet
    from .test_ipv6_sched import MACS as MACS6

    config = compile_file(str(HERE / "lc6.cf")).config
    first = XdpDataplane(plan(config, SIZES, ipv6=True), pin_dir=pin_dir)
    first.sync(MACS6)
    client, flows = "2001:2:9::5", {}
    for vip, sport in [("2001:2::21", 42000 + i) for i in range(30)] + [("2001:2::24", 43000)]:
        out = prog_run(first.prog_fd, tcp6_packet(client, vip, sport, 80, SYN))
        assert out.retval == XDP_TX
        flows[(vip, sport)] = out.data[:6]
    before = first.maps.flows6()
    conns = first.maps.real_conns()
    templates = first.maps.templates6()
    assert len(before) == 31 and sum(conns.values()) == 31 and len(templates) == 1
    first.close()

    bigger = dataclasses.replace(SIZES, ct_size=4093, persist_size=1021)
    second = XdpDataplane(plan(config, bigger, ipv6=True), pin_dir=pin_dir)
    replaced = {r.name: r for r in second.replaced}
    assert replaced["conntrack6"].copied == 31
    assert replaced["persist6"].copied == 1
    assert second.maps.flows6() == before
    assert second.maps.templates6() == templates
    assert second.maps.real_conns() == conns
    second.sync(MACS6)
    for (vip, sport), mac in flows.items():
        out = prog_run(second.prog_fd, tcp6_packet(client, vip, sport, 80, ACK))
        assert out.retval == XDP_TX and out.data[:6] == mac
    assert second.maps.global_counters()["ct_hit"] == 31
    assert (IPv6Address(client), 42000, IPv6Address("2001:2::21"), 80, TCP) in before
    second.close()


def test_a_service_moved_to_another_index_leaves_no_stale_entry(pin_dir: str) -> None:
    """A new config puts an IPv6 virtual first: the IPv4 service moves from index 0 to
    1. Its tracked flow names index 0, whose service_info entry the new sync clears, so
    the flow's next packet finds its service by key and keeps its real server (by the
    same Maglev keys), instead of being scheduled by index 0's table, now the IPv6
    service's (the daemon test of a reload adding IPv6 saw its connection reset)."""
    from ipaddress import IPv6Address

    four = """network = direct
virtual web4 {
 active = 1
 address = 198.18.0.10 eth0:1
 port = 80
 scheduler = wrr
 server a {
  address = 198.18.1.1
  active = 1
 }
 server b {
  address = 198.18.1.2
  active = 1
 }
}
"""
    six = four.replace("virtual web4 {", "virtual web6 {\n address = 2001:2::10 eth0\n", 1)
    six = six.replace(" address = 198.18.0.10 eth0:1\n", "", 1)
    six = six.replace("198.18.1.", "2001:2:1::") + four.replace("network = direct\n", "")
    from compiler import compile_text

    macs = {IPv4Address(f"198.18.1.{i}"): bytes.fromhex(f"02000000010{i}") for i in (1, 2)}
    macs |= {IPv6Address(f"2001:2:1::{i}"): bytes.fromhex(f"02000000060{i}") for i in (1, 2)}
    first = XdpDataplane(plan(compile_text("4.cf", four).config, SIZES), pin_dir=pin_dir)
    first.sync(macs)
    sent = {}
    for sport in range(42000, 42020):
        out = prog_run(first.prog_fd, tcp_packet("198.18.9.5", "198.18.0.10", sport, 80, SYN))
        sent[sport] = out.data[:6]
    assert set(sent.values()) == {macs[IPv4Address("198.18.1.1")], macs[IPv4Address("198.18.1.2")]}
    first.close()

    p = plan(compile_text("6.cf", six).config, SIZES, ipv6=True)
    assert [(s.name, s.index) for s in p.services] == [("web6", 0), ("web4", 1)]
    second = XdpDataplane(p, pin_dir=pin_dir)
    second.sync(macs)
    for sport, mac in sent.items():
        out = prog_run(second.prog_fd, tcp_packet("198.18.9.5", "198.18.0.10", sport, 80, ACK))
        assert out.retval == XDP_TX and out.data[:6] == mac
    g = second.maps.global_counters()
    assert g["ct_hit"] == 0 and g["rescheduled"] == 0  # each found web4 by its key again
    assert second.maps.clear_service_info({1}) == []  # nothing stale left
    second.close()
