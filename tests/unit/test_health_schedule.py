"""The pure scheduling structures of the health monitor: the slot ring of one interval
and the deadline queue of one timeout length (runtime/health/schedule.py)."""

from __future__ import annotations

import math
import random

import pytest

from runtime.health.schedule import DeadlineQueue, SlotRing

pytestmark = pytest.mark.unit


# -- DeadlineQueue


def test_deadline_queue_hands_out_due_entries_in_order() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    assert q.head() is None and q.due(100.0) == []
    assert q.push(1.0, "a") is True  # was empty: arm a sweep
    assert q.push(1.5, "b") is False
    assert q.push(2.0, "c") is False
    assert q.head() == 1.0
    assert q.due(0.999) == []
    assert q.due(1.5) == [(1.0, "a"), (1.5, "b")]  # a deadline equal to now is due
    assert len(q) == 1 and q.head() == 2.0
    assert q.due(5.0) == [(2.0, "c")]
    assert q.head() is None and len(q) == 0
    assert q.push(6.0, "d") is True


def test_deadline_queue_entry_pushed_out_of_order_is_late_never_early() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    q.push(2.0, "a")
    q.push(1.0, "early")  # a clock that stepped back: waits behind "a"
    assert q.due(1.5) == []
    assert q.due(2.0) == [(2.0, "a"), (1.0, "early")]


def test_deadline_queue_same_item_many_times_and_clear() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    for t in (1.0, 2.0, 3.0):
        q.push(t, "x")  # a check re-armed for its read: the old entry stays, stale
    assert [t for t, _ in q.due(2.5)] == [1.0, 2.0]
    q.clear()
    assert len(q) == 0 and q.due(10.0) == []


# -- SlotRing


def sweep(ring: SlotRing[str], until: float, step: float) -> list[tuple[str, float]]:
    """Sweep every ``step`` seconds from 0 to ``until`` and collect what comes."""
    out = []
    t = 0.0
    while t <= until + 1e-12:
        out.extend(ring.due(t))
        t += step
    return out


def test_ring_hands_out_each_slot_once_in_time_order() -> None:
    ring: SlotRing[str] = SlotRing(epoch=10.0, period=2.0)
    for name, f in (("c", 0.75), ("a", 0.0), ("b", 0.25)):
        ring.add(name, f)
    assert ring.next_slot() == 10.0
    assert ring.due(9.99) == []
    assert ring.due(10.5) == [("a", 10.0), ("b", 10.5)]
    assert ring.next_slot() == 11.5
    assert ring.due(10.5) == []  # nothing twice
    assert ring.due(13.0) == [("c", 11.5), ("a", 12.0), ("b", 12.5)]
    assert ring.due(14.0) == [("c", 13.5), ("a", 14.0)]  # a slot equal to now is due
    assert ring.next_slot() == 14.5


def test_ring_slots_are_the_grid_whatever_the_sweep_step() -> None:
    rng = random.Random(3)
    members = {f"s{i}": rng.random() for i in range(200)}
    expected = sorted(
        (10.0 + f * 1.0 + k * 1.0, name)
        for name, f in members.items()
        for k in range(5)
        if 10.0 + f + k <= 15.0
    )
    for step in (0.001, 0.0137, 0.3):
        ring: SlotRing[str] = SlotRing(epoch=10.0, period=1.0)
        for name, f in members.items():
            ring.add(name, f)
        got = []
        t = 9.0
        while t <= 15.0:
            got.extend(ring.due(t))
            t += step
        got.extend(ring.due(15.0))
        assert [(slot, name) for name, slot in got] == expected
        assert [slot for _, slot in got] == sorted(slot for _, slot in got)


def test_ring_equal_fractions_come_in_order_of_arrival() -> None:
    ring: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    for name in ("x", "y", "z"):
        ring.add(name, 0.5)
    assert ring.due(0.5) == [("x", 0.5), ("y", 0.5), ("z", 0.5)]
    with pytest.raises(ValueError):
        ring.add("y", 0.1)


def test_ring_member_added_behind_the_cursor_waits_for_the_next_period() -> None:
    ring: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    ring.add("a", 0.2)
    ring.add("c", 0.8)
    assert ring.due(0.5) == [("a", 0.2)]
    ring.add("early", 0.1)  # its place this period is behind the cursor
    ring.add("late", 0.6)  # still ahead of it
    assert ring.due(1.0) == [("late", 0.6), ("c", 0.8)]
    assert ring.due(1.25) == [("early", 1.1), ("a", 1.2)]


def test_ring_removal_before_and_after_the_cursor() -> None:
    ring: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    for name, f in (("a", 0.1), ("b", 0.3), ("c", 0.5), ("d", 0.7)):
        ring.add(name, f)
    assert ring.due(0.4) == [("a", 0.1), ("b", 0.3)]
    ring.remove("a")  # behind the cursor
    ring.remove("d")  # ahead of it
    ring.remove("nobody")  # ignored
    assert "a" not in ring and "b" in ring and len(ring) == 2
    assert ring.due(1.4) == [("c", 0.5), ("b", 1.3)]
    ring.remove("b")
    ring.remove("c")
    assert ring.next_slot() is None and ring.due(9.0) == []
    ring.add("b", 0.3)  # back after a reload: its next slot from the cursor on
    assert ring.due(9.0)[-1:] == [("b", 8.3)]


def test_ring_reload_moves_a_member_between_intervals() -> None:
    one: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    three: SlotRing[str] = SlotRing(epoch=0.0, period=3.0)
    one.add("s", 0.5)
    assert one.due(0.6) == [("s", 0.5)]
    assert one.due(1.6) == [("s", 1.5)]
    one.remove("s")  # timeout 1 -> 3
    three.start(1.6)  # a ring made after its epoch (empty: applied on the first add)
    three.add("s", 0.5)
    assert one.due(10.0) == []
    assert three.due(1.6) == []
    assert three.next_slot() == 4.5  # slots 1.5 + 3k: the first at or after 1.6
    assert three.due(5.0) == [("s", 4.5)]
    assert three.due(8.0) == [("s", 7.5)]


def test_ring_start_skips_slots_before_now() -> None:
    ring: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    for name, f in (("a", 0.1), ("b", 0.5), ("c", 0.9)):
        ring.add(name, f)
    ring.start(2.5)
    assert ring.next_slot() == 2.5  # at or after
    assert ring.due(3.2) == [("b", 2.5), ("c", 2.9), ("a", 3.1)]


def test_ring_after_a_long_stall_each_member_comes_once_at_its_latest_slot() -> None:
    ring: SlotRing[str] = SlotRing(epoch=0.0, period=1.0)
    for name, f in (("a", 0.1), ("b", 0.5), ("c", 0.9)):
        ring.add(name, f)
    assert ring.due(0.2) == [("a", 0.1)]
    got = ring.due(7.6)  # 7 periods without a sweep
    assert got == [("c", 6.9), ("a", 7.1), ("b", 7.5)]
    assert ring.due(7.95) == [("c", 7.9)]


def test_ring_slot_arithmetic_is_the_monitors_grid() -> None:
    epoch, period = 1234.5678, 1.0
    ring: SlotRing[str] = SlotRing(epoch, period)
    f = 0.123456789
    ring.add("s", f)
    got = [slot for t in (0.5, 1.5, 2.5) for _, slot in ring.due(epoch + t)]
    assert got == [epoch + f * period + k * period for k in range(3)]
    assert all(math.isfinite(s) for s in got)
    assert sweep(ring, 0.0, 1.0) == []  # times before the epoch hand out nothing
