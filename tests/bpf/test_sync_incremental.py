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
