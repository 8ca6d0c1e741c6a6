"""The connection table (dataplane/bpf/conntrack.h) through BPF_PROG_RUN: LRU
replacement within a set, a flow's entry found from any CPU, a set held by a writer
read as a miss (never half an entry), service hints that can only be wrong by being
slow, and the refill of a resized table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from dataplane.bpf.render import CT_WAYS, ct_sets
from dataplane.maps import (
    FlowKey,
    FlowState,
    ServiceKey,
    be16,
    be32,
    ct_entries,
    ct_hash,
    fill_ct_sets,
    svc_hint_slot,
    svc_hints,
)
from dataplane.xdp import RealState

from .conftest import MACS, SIZES, Lb
from .packets import ACK, TCP
from .test_golden_packets import CLIENT, WEB, _state, expect_direct, web_flow  # noqa: F401

pytestmark = pytest.mark.bpf
XDP_TX = 3
SETS = ct_sets(SIZES)


def set_of(sport: int, src: str = CLIENT) -> int:
    return ct_hash(IPv4Address(src), IPv4Address(WEB), sport, 80, TCP) & (SETS - 1)


def ports_in_one_set(n: int, start: int = 20000) -> tuple[int, list[int]]:
    """``n`` client ports whose web flows share one set of the connection table."""
    by_set: dict[int, list[int]] = {}
    for sport in range(start, 65536):
        ports = by_set.setdefault(set_of(sport), [])
        ports.append(sport)
        if len(ports) == n:
            return set_of(sport), ports
    raise AssertionError("no set with enough ports")


def key(sport: int) -> tuple:
    return (IPv4Address(CLIENT), sport, IPv4Address(WEB), 80, TCP)


@pytest.fixture
def on_cpu() -> Iterator:
    """Run the next BPF_PROG_RUN calls on a given CPU (the kernel runs an XDP test
    run on the calling CPU); the affinity is restored afterwards."""
    saved = os.sched_getaffinity(0)

    def pin(cpu: int) -> None:
        os.sched_setaffinity(0, {cpu})

    yield pin
    os.sched_setaffinity(0, saved)


def test_a_full_set_evicts_its_least_recently_used_flow(lb: Lb) -> None:
    """Nine flows for one set of eight: the ninth replaces the way least recently
    used (not the oldest inserted: that one saw a packet since), and the evicted
    flow's next packet is scheduled again by Maglev, to the same real server."""
    index, ports = ports_in_one_set(CT_WAYS + 1)
    first, lru, *others, ninth = ports
    macs = {}
    for sport in ports[:-1]:
        packet, real = web_flow(lb, sport)
        out = lb.run(packet)
        assert out.retval == XDP_TX
        macs[sport] = out.data[:6]
        assert macs[sport] == MACS[real.address]
    assert lb.run(web_flow(lb, first, ACK)[0]).retval == XDP_TX  # first: recent again
    assert lb.dp.maps.global_counters()["ct_evicted"] == 0
    assert len(lb.dp.maps.ct_set("conntrack", index).stamp) == CT_WAYS

    assert lb.run(web_flow(lb, ninth)[0]).retval == XDP_TX
    flows = lb.dp.maps.flows()
    assert key(lru) not in flows
    assert all(key(p) in flows for p in (first, *others, ninth))
    c = lb.dp.maps.global_counters()
    assert (c["ct_evicted"], c["ct_hit"]) == (1, 1)

    ack, real = web_flow(lb, lru, ACK)
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, macs[lru])
    c = lb.dp.maps.global_counters()
    assert (c["ct_miss_non_syn"], c["ct_evicted"]) == (1, 2)
    assert lb.dp.maps.flows()[key(lru)][0] == real.index
    # the way it took was the least recently used then: the second one inserted
    assert key(others[0]) not in lb.dp.maps.flows()


def test_a_flow_started_on_one_cpu_is_found_on_the_other(lb: Lb, on_cpu) -> None:
    """One table for all CPUs: on veth a flow's packets run on whichever CPU sends
    them, with RSS on the queue's CPU; the entry is the same wherever."""
    if len(os.sched_getaffinity(0)) < 2:
        raise AssertionError("this test needs two CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    syn, real = web_flow(lb, 40900)
    on_cpu(cpus[0])
    assert lb.run(syn).retval == XDP_TX
    lb.set_state({real.index: RealState(weight=0)})
    on_cpu(cpus[1])
    ack = web_flow(lb, 40900, ACK)[0]
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, MACS[real.address])
    assert lb.dp.maps.global_counters()["ct_hit"] == 1  # quiesced: only its entry sends it


def test_a_set_held_by_a_writer_reads_as_a_miss(lb: Lb) -> None:
    """While another CPU inserts into a set (seq odd), a reader takes nothing from it:
    a tracked flow's packet is scheduled again instead (the same real while the table
    is unchanged; here a crafted entry would send it elsewhere), and an insert gives
    up (ct_busy) rather than write into a set it does not hold."""
    sport = 41000
    index = set_of(sport)
    syn, real = web_flow(lb, sport)
    assert lb.run(syn).retval == XDP_TX
    other = next(r for r in lb.service("web").reals if r.index != real.index)
    held = lb.dp.maps.ct_set("conntrack", index)
    way = next(i for i in range(CT_WAYS) if held.key[i].sport == be16(sport))
    held.val[way].real = other.index  # what a half-written entry could say
    held.val[way].addr = be32(other.address)
    held.seq += 1  # odd: a writer holds the set
    lb.dp.maps.write_ct_set("conntrack", index, held)

    ack = web_flow(lb, sport, ACK)[0]
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, MACS[real.address])
    c = lb.dp.maps.global_counters()
    assert (c["ct_hit"], c["ct_miss_non_syn"], c["ct_busy"]) == (0, 1, 1)
    assert lb.dp.maps.ct_set("conntrack", index).val[way].real == other.index  # untouched

    held.seq += 1  # the writer is done: the entry it wrote counts
    lb.dp.maps.write_ct_set("conntrack", index, held)
    out = lb.run(ack)
    assert out.retval == XDP_TX and out.data == expect_direct(ack, MACS[other.address])
    assert lb.dp.maps.global_counters()["ct_hit"] == 1


def test_a_wrong_service_hint_costs_a_lookup_not_a_misforward(lb: Lb) -> None:
    """service_hints is only a hint: one pointing at another service's index (a
    collision, a stale slot) or at nothing falls back to the services hash."""
    web, dns = lb.service("web"), lb.service("dns")
    slot = svc_hint_slot(ServiceKey(be32(web.vip), be16(80), TCP, 0), svc_hints(SIZES))
    hints = lb.dp.maps._t["service_hints"]
    assert hints[hints.Key(slot)].value == web.index + 1  # written with the service
    for wrong in (dns.index + 1, len(lb.plan.services) + 1, 0):
        lb.dp.maps.reset_counters()
        hints[hints.Key(slot)] = hints.Leaf(wrong)
        packet, real = web_flow(lb, 42000 + wrong)
        out = lb.run(packet)
        assert out.retval == XDP_TX and out.data == expect_direct(packet, MACS[real.address])
        assert lb.dp.maps.service_counters(web.index).packets == 1
        assert lb.dp.maps.service_counters(dns.index).packets == 0


def test_a_smaller_table_keeps_the_youngest_of_a_set() -> None:
    """fill_ct_sets (the refill after a resize): entries land in their set of the new
    geometry; a set offered more than it holds keeps the most recently used, and
    their LRU order."""
    entries = []
    for sport in range(1, 4000):
        k = FlowKey(be32(IPv4Address(CLIENT)), be32(IPv4Address(WEB)), be16(sport), be16(80), TCP)
        entries.append((sport, k, FlowState(real=sport % 7 + 1, used=1)))  # age = sport
    raw, kept = fill_ct_sets(4, entries)
    assert kept == 4 * CT_WAYS
    back = ct_entries(raw)
    assert len(back) == kept
    by_set: dict[int, list[tuple[int, int]]] = {}
    for age, k, v in back:
        sport = int.from_bytes(bytes(k)[8:10], "big")
        assert v.real == sport % 7 + 1
        assert (
            set_of(sport) & 3 == ct_hash(IPv4Address(CLIENT), IPv4Address(WEB), sport, 80, TCP) & 3
        )
        by_set.setdefault(set_of(sport) & 3, []).append((age, sport))
    for index, got in by_set.items():
        offered = sorted(p for p in range(1, 4000) if set_of(p) & 3 == index)
        assert sorted(p for _age, p in got) == offered[:CT_WAYS]  # youngest = smallest age
        assert [p for _age, p in sorted(got)] == offered[:CT_WAYS]  # LRU order kept
