"""Weighted Maglev tables: balance, minimal disruption, determinism (dataplane.maglev)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import maglev
from dataplane.maglev import EMPTY, Member

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
M = maglev.DEFAULT_SIZE


def members_of(weights: list[int]) -> list[Member]:
    return [Member(f"198.18.{i // 200}.{i % 200 + 1}:80", w) for i, w in enumerate(weights)]


def assert_balanced(tab: np.ndarray, members: list[Member], live: set[int]) -> None:
    counts = maglev.shares(tab, len(members))
    total = sum(members[i].weight for i in live)
    for i, m in enumerate(members):
        if i not in live:
            assert counts[i] == 0
            continue
        want = M * m.weight / total
        # within 1% of the weighted share (2 slots of rounding for very small shares)
        assert abs(counts[i] - want) <= max(0.01 * want, 2), (i, counts[i], want)
    assert (tab != EMPTY).all()


weights = st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=40)
slow = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(weights)
def test_load_follows_weights(ws: list[int]) -> None:
    members = members_of(ws)
    assert_balanced(maglev.build(members), members, set(range(len(ws))))


@slow
@given(weights, st.data())
def test_taking_one_out_moves_only_its_slots(ws: list[int], data: st.DataObject) -> None:
    members = members_of(ws)
    base = maglev.build(members)
    k = data.draw(st.integers(min_value=0, max_value=len(ws) - 1))
    after = maglev.without(base, members, {k})
    kept = base != k
    assert (after[kept] == base[kept]).all()
    assert not (after == k).any()
    assert_balanced(after, members, set(range(len(ws))) - {k})
    assert (maglev.table(members, {k}) == after).all()


def test_weight_zero_members_get_no_slots() -> None:
    members = members_of([3, 0, 1])
    counts = maglev.shares(maglev.build(members), 3)
    assert counts[1] == 0 and counts[0] + counts[2] == M
    assert (maglev.build(members_of([0, 0])) == EMPTY).all()
    assert (maglev.without(maglev.build(members), members, {0, 2}) == EMPTY).all()


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="prime"):
        maglev.build(members_of([1]), size=65536)
    with pytest.raises(ValueError, match="unique"):
        maglev.build([Member("a", 1), Member("a", 2)])
    with pytest.raises(ValueError, match=">= 0"):
        maglev.build([Member("a", -1)])


def test_diff_lists_only_changed_slots() -> None:
    members = members_of([1, 1, 1])
    base = maglev.build(members, size=251)
    after = maglev.without(base, members, {1})
    slots, values = maglev.diff(base, after)
    assert set(slots.tolist()) == set(np.flatnonzero(base == 1).tolist())
    assert (values != 1).all()
    slots, values = maglev.diff(None, base)
    assert len(slots) == 251 and (values == base).all()


_DIGEST = """
import hashlib, sys
from dataplane import maglev
ms = [maglev.Member(f"198.18.0.{i}:443", w) for i, w in enumerate([5, 1, 3, 7, 2], 1)]
t = maglev.table(ms, {2})
sys.stdout.write(hashlib.sha256(t.tobytes()).hexdigest())
"""


def test_identical_across_processes() -> None:
    ms = [Member(f"198.18.0.{i}:443", w) for i, w in enumerate([5, 1, 3, 7, 2], 1)]
    here = hashlib.sha256(maglev.table(ms, {2}).tobytes()).hexdigest()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == here


def _reference(members: list[Member], size: int) -> np.ndarray:
    """Maglev's population loop written the plain way (credits per round, each
    claim walks the member's permutation to an empty slot): what the two-phase
    build must equal slot for slot."""
    eligible = [i for i, m in enumerate(members) if m.weight > 0]
    table = [EMPTY] * size
    if not eligible:
        return np.array(table, dtype=np.int32)
    ws = [members[i].weight for i in eligible]
    top = max(ws)
    perms = [maglev._offset_skip(members[i].key, size) for i in eligible]
    nexts = [off for off, _ in perms]
    credit = [0] * len(eligible)
    free = size
    while free:
        for n in range(len(eligible)):
            credit[n] += ws[n]
            if credit[n] < top:
                continue
            credit[n] -= top
            slot = nexts[n]
            while table[slot] != EMPTY:
                slot = (slot + perms[n][1]) % size
            table[slot] = eligible[n]
            nexts[n] = (slot + perms[n][1]) % size
            free -= 1
            if not free:
                break
    return np.array(table, dtype=np.int32)


@slow
@given(
    st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=30),
    st.sampled_from([2, 3, 7, 61, 257, 1021, 4093]),
)
def test_two_phase_build_equals_the_plain_population_loop(ws: list[int], size: int) -> None:
    ms = members_of(ws)
    assert (maglev.build(ms, size) == _reference(ms, size)).all()


def test_tables_do_not_change_between_versions() -> None:
    """Routers running different versions must still agree: digests of tables built
    by the first (single-phase) implementation."""
    ms = [Member(f"198.18.{1 + i // 250}.{1 + i % 250}:80", 1 + i % 4) for i in range(100)]
    digest = hashlib.sha256(maglev.build(ms).tobytes()).hexdigest()
    assert digest == "17ee94b1e232fbd591a8599004e10a8fb9deefc61da5ba2f965ee86a518a577e"
    digest = hashlib.sha256(maglev.table(ms, {3, 50}).tobytes()).hexdigest()
    assert digest == "22d8041ae9c441407c111e3547122e33657f65200197e54ba062b932f843df69"


@pytest.mark.parametrize("weights", [[1] * 12, [1, 7, 2, 30, 1, 1, 5, 9, 3, 3, 0, 2]])
def test_two_phase_build_equals_the_plain_loop_at_full_size(weights: list[int]) -> None:
    """At M = 65537 the dense phase sorts only the head of each preference order and
    falls back to a full sort when a member runs past it: still the same table."""
    ms = members_of(weights)
    assert (maglev.build(ms) == _reference(ms, M)).all()
    out = {1, 3}
    assert (maglev.table(ms, out) == maglev.without(_reference(ms, M), ms, out)).all()


def _reference_without(
    base: np.ndarray, members: list[Member], out: set[int], size: int
) -> np.ndarray:
    """The turn rule over the freed slots written the plain way: credits per round
    among the members left, each claim walking the member's permutation from its start
    to a freed slot nobody claimed yet."""
    table = base.copy()
    freed = np.isin(base, list(out))
    table[freed] = EMPTY
    eligible = [i for i, m in enumerate(members) if m.weight > 0 and i not in out]
    free = int(freed.sum())
    if not eligible or not free:
        return table
    ws = [members[i].weight for i in eligible]
    top = max(ws)
    perms = [maglev._offset_skip(members[i].key, size) for i in eligible]
    nexts = [off for off, _ in perms]
    credit = [0] * len(eligible)
    open_ = freed.copy()
    while free:
        for n in range(len(eligible)):
            credit[n] += ws[n]
            if credit[n] < top:
                continue
            credit[n] -= top
            slot = nexts[n]
            while not open_[slot]:
                slot = (slot + perms[n][1]) % size
            open_[slot] = False
            table[slot] = eligible[n]
            nexts[n] = (slot + perms[n][1]) % size
            free -= 1
            if not free:
                break
    return table


@slow
@given(
    st.lists(st.integers(min_value=0, max_value=6), min_size=2, max_size=40),
    st.sampled_from([61, 257, 1021, 4093]),
    st.data(),
)
def test_without_equals_the_plain_loop_over_the_freed_slots(
    ws: list[int], size: int, data: st.DataObject
) -> None:
    """Any number taken out, from one to all: a few freed slots go by preference
    lists, many by walking permutations first; both are the plain turn rule."""
    ms = members_of(ws)
    out = set(data.draw(st.lists(st.integers(0, len(ws) - 1), unique=True)))
    base = maglev.build(ms, size)
    assert (maglev.without(base, ms, out, size) == _reference_without(base, ms, out, size)).all()


def test_without_many_out_at_full_size_equals_the_plain_loop() -> None:
    """A service with most of its servers still out (a daemon starting) at
    M = 65537: the walking phase of without gives the plain loop's table."""
    ms = members_of([1 + i % 3 for i in range(40)])
    base = maglev.build(ms)
    for out in ({*range(0, 40, 2)}, {*range(35)}, {5}):
        assert (maglev.without(base, ms, out) == _reference_without(base, ms, out, M)).all()
