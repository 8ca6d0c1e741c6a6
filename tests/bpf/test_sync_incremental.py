"""``XdpDataplane.sync`` writes only what changed, and the maps still end up exactly
as a sync of the final state from scratch would leave them.

Real maps of a program compiled once with small sizes (a 1021-slot ring), read back
whole and compared with what the plan and the state say: the tables computed here
with :func:`dataplane.maglev.table` (no cache), the reals from the plan, and a
second program synced once with the final state."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import compile_text
from dataplane import maglev
from dataplane.maps import RealEntry
from dataplane.plan import REAL_F_FAILED, REAL_F_QUIESCED, Plan, Sizes, plan
from dataplane.xdp import RealState, XdpDataplane

pytestmark = pytest.mark.bpf

SIZES = Sizes(max_services=8, max_reals=32, ring_size=1021, ct_size=1021, persist_size=509)
SERVICE = """virtual v%d {
 active = 1
 address = 198.18.0.%d eth0:1
 port = %d
 scheduler = %s
%s}
"""
SERVER = " server s%d {\n  address = 198.18.1.%d\n  active = 1\n  weight = %d\n }\n"


def config() -> str:
    """Four services of five servers; servers 198.18.1.1-5 are in two services each
    (one real index per service), weights 1-3, wrr and rr (equal table weights)."""
    out = ["network = direct\n"]
    for s in range(4):
        servers = "".join(SERVER % (k, 1 + (s * 3 + k) % 8, 1 + (s + k) % 3) for k in range(5))
        out.append(SERVICE % (s, 10 + s // 2, 80 + s, "rr" if s == 3 else "wrr", servers))
    return "".join(out)


@pytest.fixture(scope="module")
def lb_plan() -> Plan:
    result = compile_text("sync.cf", config())
    assert result.ok, result.diagnostics
    return plan(result.config, SIZES)


@pytest.fixture(scope="module")
def dp(lb_plan: Plan) -> Iterator[XdpDataplane]:
    d = XdpDataplane(lb_plan, pin_dir=None)
    yield d
    d.close()


def macs_of(p: Plan, seed: int = 0) -> dict[IPv4Address, bytes]:
    return {r.address: bytes([2, 0, 0, seed, 1, r.address.packed[3]]) for r in p.reals}


def rings(d: XdpDataplane) -> np.ndarray:
    """The whole rings map, one row per service."""
    t = d.bpf[b"rings"]
    out = np.zeros(SIZES.max_services * SIZES.ring_size, dtype=np.uint32)
    for k, v in t.items():
        out[k.value] = v.value
    return out.reshape(SIZES.max_services, SIZES.ring_size)


def reals(d: XdpDataplane) -> list[RealEntry]:
    return [d.maps.real(i) for i in range(1, SIZES.max_reals)]


def snapshot(d: XdpDataplane) -> tuple:
    return (rings(d).tobytes(), reals(d), d.maps.services(), d.maps.vips())


def expected_tables(p: Plan, state: dict[int, RealState]) -> np.ndarray:
    """Each service's table straight from maglev.table (no dataplane, no cache)."""
    out = np.zeros((SIZES.max_services, SIZES.ring_size), dtype=np.uint32)
    for svc in p.services:
        members, taken = [], []
        for i, r in enumerate(svc.reals):
            st = state.get(r.index, RealState())
            w = r.table_weight if st.weight is None else svc.table_weight(st.weight)
            if st.failed or w == 0:
                taken.append(i)
                w = r.table_weight
            members.append(maglev.Member(r.key, w))
        positions = maglev.table(members, taken, SIZES.ring_size)
        ids = np.array([r.index for r in svc.reals] + [0], dtype=np.uint32)
        out[svc.index] = ids[positions]
    return out


def expected_reals(
    p: Plan, macs: dict[IPv4Address, bytes], state: dict[int, RealState]
) -> list[RealEntry]:
    out = [RealEntry(IPv4Address(0), bytes(6), 0)] * (SIZES.max_reals - 1)  # never written
    for r in p.reals:
        st = state.get(r.index, RealState())
        weight = r.weight if st.weight is None else st.weight
        flags = (REAL_F_FAILED if st.failed else 0) | (REAL_F_QUIESCED if weight == 0 else 0)
        out[r.index - 1] = RealEntry(r.address, macs[r.address], flags)
    return out


def test_random_changes_end_as_a_sync_from_scratch(lb_plan: Plan, dp: XdpDataplane) -> None:
    rng = random.Random(20261126)
    state: dict[int, RealState] = {}
    macs = macs_of(lb_plan)
    dp.sync(macs, state)
    indexes = [r.index for r in lb_plan.reals]
    addresses = sorted({r.address for r in lb_plan.reals})
    for step in range(40):
        for _ in range(rng.choice((1, 1, 1, 2, 4))):
            what = rng.random()
            index = rng.choice(indexes)
            if what < 0.4:
                state[index] = RealState(failed=True)
            elif what < 0.55:
                state[index] = RealState(weight=rng.choice((0, 1, 2, 5)))
            elif what < 0.85:
                state.pop(index, None)
            elif what < 0.95:
                addr = rng.choice(addresses)
                macs[addr] = bytes([2, 0, 0, step % 256, 2, addr.packed[3]])
            else:
                state.clear()
        dp.sync(macs, dict(state))
        assert (rings(dp) == expected_tables(lb_plan, state)).all(), (step, state)
        assert reals(dp) == expected_reals(lb_plan, macs, state), (step, state)
    # a second program synced once with the final state holds the same maps
    fresh = XdpDataplane(lb_plan, pin_dir=None)
    try:
        fresh.sync(macs, dict(state))
        assert snapshot(fresh) == snapshot(dp)
    finally:
        fresh.close()


def test_unchanged_sync_writes_nothing(lb_plan: Plan, dp: XdpDataplane) -> None:
    macs = macs_of(lb_plan)
    state = {lb_plan.services[1].reals[2].index: RealState(failed=True)}
    dp.sync(macs, state)
    before = dp.maps.writes
    dp.sync(macs, dict(state))
    dp.sync(macs, dict(state))
    assert dp.maps.writes == before
    # one server down: its entry and its service's table, nothing else
    victim = lb_plan.services[2].reals[0].index
    dp.sync(macs, {**state, victim: RealState(failed=True)})
    assert dp.maps.writes == before + 2
    assert dp.maps.real(victim).flags == REAL_F_FAILED
    # a MAC change: that address's reals only (one per service it is in), no table
    addr = lb_plan.services[0].reals[0].address
    holders = [r.index for r in lb_plan.reals if r.address == addr]
    before = dp.maps.writes
    dp.sync({**macs, addr: b"\x02\xaa\xbb\xcc\xdd\xee"}, {**state, victim: RealState(failed=True)})
    assert dp.maps.writes == before + len(holders)
    assert all(dp.maps.real(i).mac == b"\x02\xaa\xbb\xcc\xdd\xee" for i in holders)


def test_writes_that_bypass_sync_are_repaired(lb_plan: Plan, dp: XdpDataplane) -> None:
    """A write through ``maps`` that sync did not make (a test, ``remove``) makes the
    next sync compare with the maps again instead of trusting its memory."""
    macs = macs_of(lb_plan)
    dp.sync(macs, {})
    want = snapshot(dp)
    svc = lb_plan.services[0]
    dp.maps.delete_service(svc.vip, svc.port, svc.proto)
    dp.maps.set_real(svc.reals[0].index, svc.reals[0].address, b"\x02\0\0\0\0\0", REAL_F_FAILED)
    dp.maps.write_ring(svc.index, np.arange(10, dtype=np.int32), np.zeros(10, dtype=np.int32))
    assert snapshot(dp) != want
    dp.sync(macs, {})
    assert snapshot(dp) == want


@pytest.fixture
def pin_dir() -> Iterator[str]:
    path = Path(f"/sys/fs/bpf/lvs-router-test-sync-{os.getpid()}")
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_first_sync_after_adoption_compares_with_the_maps(lb_plan: Plan, pin_dir: str) -> None:
    """A restarted daemon remembers nothing it wrote: its first sync reads the
    adopted reals and rewrites only those that differ."""
    macs = macs_of(lb_plan)
    down = lb_plan.services[3].reals[1].index
    first = XdpDataplane(lb_plan, pin_dir=pin_dir)
    try:
        first.sync(macs, {down: RealState(failed=True)})
    finally:
        first.close()
    second = XdpDataplane(lb_plan, pin_dir=pin_dir)
    try:
        written = []
        set_real = second.maps.set_real

        def counted(index: int, *args: object) -> None:
            written.append(index)
            set_real(index, *args)

        second.maps.set_real = counted  # type: ignore[method-assign]
        second.sync(macs, {})
        assert written == [down]  # the server back up; every other entry was right
        assert (rings(second) == expected_tables(lb_plan, {})).all()
        assert reals(second) == expected_reals(lb_plan, macs, {})
    finally:
        second.close()


# ------------------------------------------------------------------ touched reals only


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 99),  # which real (modulo their number)
                st.sampled_from(["fail", "up", "weight", "mac"]),
                st.sampled_from([0, 1, 2, 5]),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_touched_syncs_end_as_a_sync_from_scratch(lb_plan: Plan, dp: XdpDataplane, steps) -> None:
    """``sync(..., touched=...)`` visits only the reals named (and those at an
    address whose MAC changed) and their services, yet after every step the maps
    hold exactly what the plan and the whole state say."""
    macs = macs_of(lb_plan)
    state: dict[int, RealState] = {}
    dp.sync(macs, state)  # whole: the start of this sequence
    indexes = [r.index for r in lb_plan.reals]
    for step, changes in enumerate(steps):
        touched = set()
        for which, what, weight in changes:
            index = indexes[which % len(indexes)]
            if what == "mac":
                addr = lb_plan.reals[which % len(indexes)].address
                macs[addr] = bytes([2, 0, 1, step, weight, addr.packed[3]])
                continue  # not named: sync finds the reals behind a changed MAC itself
            touched.add(index)
            if what == "fail":
                state[index] = RealState(failed=True)
            elif what == "up":
                state.pop(index, None)
            else:
                state[index] = RealState(weight=weight)
        before = dp.maps.writes
        dp.sync(macs, dict(state), touched=touched)
        held = {r.index for r in lb_plan.reals if r.index in touched}
        services = {s.index for s in lb_plan.services for r in s.reals if r.index in held}
        # at most one write per real at a touched index or a changed MAC, one per table
        assert dp.maps.writes - before <= len(lb_plan.reals) + len(services)
        assert (rings(dp) == expected_tables(lb_plan, state)).all(), (step, state)
        assert reals(dp) == expected_reals(lb_plan, macs, state), (step, state)


def test_a_touched_sync_visits_only_its_services(lb_plan: Plan, dp: XdpDataplane) -> None:
    """One server down: its entry and its own service's table are the only writes,
    and no other service's table is even looked at."""
    macs = macs_of(lb_plan)
    dp.sync(macs, {})
    looked: list[int] = []
    table_key = dp._table_key

    def spy(svc, state):
        looked.append(svc.index)
        return table_key(svc, state)

    dp._table_key = spy  # type: ignore[method-assign]
    try:
        victim = lb_plan.services[2].reals[1].index
        before = dp.maps.writes
        dp.sync(macs, {victim: RealState(failed=True)}, touched={victim})
        assert looked == [2]
        assert dp.maps.writes == before + 2
        assert dp.maps.real(victim).flags == REAL_F_FAILED
    finally:
        del dp._table_key


# ------------------------------------------------------------------ director -> XdpBackend

DAEMON_CF = """network = direct
virtual web {
 active = 1
 address = 198.18.0.20 eth0:1
 port = 80
 scheduler = wrr
 sorry_server = 198.18.1.50
 server a {
  address = 198.18.1.1
  active = 1
  weight = 3
 }
 server b {
  address = 198.18.1.2
  active = 1
 }
 server b2 {
  address = 198.18.1.2
  active = 1
  weight = 4
 }
 server c {
  address = 198.18.1.3
  active = 1
  weight = 2
 }
}
virtual dns {
 active = 1
 address = 198.18.0.20 eth0:1
 port = 53
 protocol = udp
 scheduler = rr
 quiesce_server = 1
 send = "x"
 expect = "y"
 server a {
  address = 198.18.1.1
  active = 1
 }
 server d {
  address = 198.18.1.4
  active = 1
  weight = 3
 }
}
virtual api {
 active = 1
 address = 198.18.0.21 eth0:1
 port = 443
 scheduler = sh
 server e {
  address = 198.18.1.5
  active = 1
  weight = 2
 }
 server c {
  address = 198.18.1.3
  active = 1
 }
}
"""
DAEMON_KEYS = [
    ("web", "a"),
    ("web", "b"),
    ("web", "b2"),
    ("web", "c"),
    ("dns", "a"),
    ("dns", "d"),
    ("api", "e"),
    ("api", "c"),
]


@pytest.fixture(scope="module")
def daemon_lb():
    from runtime.director import with_sorry_servers

    result = compile_text("daemon.cf", DAEMON_CF)
    assert result.ok, result.diagnostics
    cfg = result.config
    p = plan(with_sorry_servers(cfg), SIZES)
    d = XdpDataplane(p, pin_dir=None)
    yield cfg, p, d
    d.close()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(DAEMON_KEYS),
                st.booleans(),
                st.sampled_from([None, None, 0, 1, 6]),
            ),
            min_size=1,
            max_size=5,
        ),
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_health_events_applied_incrementally_end_as_a_sync_from_scratch(
    daemon_lb, batches, adopt: bool
) -> None:
    """The daemon's path: health events into the director, each batch's decision
    applied by the XDP backend, which after the first apply hands the dataplane only
    the reals of the servers whose placement changed (shared reals, a sorry server, a
    quiesced server, slow-start weights included). After every apply the maps hold
    exactly what a sync of that decision from scratch writes."""
    from runtime.backends import XdpBackend
    from runtime.director import Director, Placement, xdp_states

    cfg, p, d = daemon_lb
    macs = macs_of(p)
    backend = XdpBackend("lo", static_macs=macs)
    backend._dp = d  # the program is loaded already; nothing to attach in this test
    touched_seen: list[object] = []
    sync = d.sync

    def recording(macs_, state=None, *, touched=None, **kw):
        touched_seen.append(touched)
        return sync(macs_, state, touched=touched, **kw)

    d.sync = recording  # type: ignore[method-assign]
    try:
        adopted = {("web", "a"): Placement(True, 3), ("dns", "d"): Placement(True, 3)}
        director = Director(cfg, adopted if adopt else {})
        backend.apply(director.desired())  # whole: the daemon's start
        now = 0.0
        for batch in batches:
            for key, up, weight in batch:
                now += 1
                director.server_event(*key, up, weight, "event", now)
            desired = director.desired()
            backend.apply(desired)
            state = {
                i: RealState(failed=s.failed, weight=s.weight)
                for i, s in xdp_states(desired, p).items()
            }
            assert (rings(d) == expected_tables(p, state)).all(), (batch, state)
            assert reals(d) == expected_reals(p, macs, state), (batch, state)
        assert touched_seen[0] is None
        assert all(t is not None for t in touched_seen[1:])  # every later apply: changes only
    finally:
        del d.sync
        backend.neighbours.close()
    # a program that never saw the history, synced once with the last decision
    fresh = XdpDataplane(p, pin_dir=None)
    try:
        fresh.sync(macs, state)
        assert snapshot(fresh) == snapshot(d)
    finally:
        fresh.close()


def test_many_reals_at_once_are_written_in_one_batch() -> None:
    """A start's first round (every server coming in at once) writes the real
    entries in one batched update; they read back as one by one would leave them."""
    text = ["network = direct\n"]
    for s in range(2):
        servers = "".join(SERVER % (k, 1 + k + 60 * s, 1 + k % 3) for k in range(60))
        text.append(SERVICE % (s, 30, 80 + s, "wrr", servers))
    result = compile_text("many.cf", "".join(text))
    assert result.ok, result.diagnostics
    sizes = Sizes(max_services=8, max_reals=128, ring_size=1021, ct_size=1021, persist_size=509)
    p = plan(result.config, sizes)
    d = XdpDataplane(p, pin_dir=None)
    try:
        macs = macs_of(p)
        down = {r.index: RealState(failed=True) for r in p.reals}
        d.sync(macs, down)
        # all but three come in; one of them quiesced
        state = {r.index: RealState(failed=True) for r in p.reals[:3]}
        state[p.reals[5].index] = RealState(weight=0)
        before = d.maps.writes
        d.sync(macs, state, touched=[r.index for r in p.reals])
        assert d.maps.writes == before + 1 + len(p.services)  # one batch, two tables
        got = [d.maps.real(i) for i in range(1, len(p.reals) + 1)]
        want = []
        for r in p.reals:
            st = state.get(r.index, RealState())
            flags = (REAL_F_FAILED if st.failed else 0) | (REAL_F_QUIESCED if st.weight == 0 else 0)
            want.append(RealEntry(r.address, macs[r.address], flags))
        assert got == want
        fresh = XdpDataplane(p, pin_dir=None)
        try:
            fresh.sync(macs, state)
            assert [fresh.maps.real(i) for i in range(1, len(p.reals) + 1)] == got
        finally:
            fresh.close()
    finally:
        d.close()
