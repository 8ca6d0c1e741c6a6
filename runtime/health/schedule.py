"""Batched timing for thousands of health checks: no timer per check. Pure: the time
is always passed in.

Two structures replace the one-timer-per-check of a plain scheduler, each swept by a
single timer of the event loop:

* :class:`SlotRing` holds the servers of one check interval. A server's checks start
  on a fixed grid, ``epoch + fraction * period + k * period``; since the grid repeats
  every period, the ring keeps its servers sorted by ``fraction`` once and a cursor
  walks round it. Nothing is scheduled per check: a sweep hands out every slot that
  has come due since the last one, in time order.
* :class:`DeadlineQueue` holds the timeouts of one length. Every entry is pushed at
  "now + the same timeout", so a new entry always belongs at the back: a deque in
  time order, with no heap and no cancellation. A sweep pops the entries that are
  due; an entry whose check already ended is simply dropped then (its owner knows it
  is stale: see :class:`~runtime.health.probes.TcpCheck`).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class DeadlineQueue(Generic[T]):
    """``(deadline, item)`` entries in the order pushed, for deadlines that only grow
    (one timeout length, pushed at the current time). An entry pushed with a deadline
    earlier than one before it (a clock that stepped back) keeps its deadline but
    waits behind that one: it comes due late, never early."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, deadline: float, item: T) -> bool:
        """Add an entry at the back; True when the queue was empty (its sweep timer
        then needs arming)."""
        entries = self._entries
        entries.append((deadline, item))
        return len(entries) == 1

    def head(self) -> float | None:
        """The deadline at the front, None when empty."""
        entries = self._entries
        return entries[0][0] if entries else None

    def due(self, now: float) -> list[tuple[float, T]]:
        """Remove and return, in order, the entries from the front whose deadline is
        ``<= now``."""
        entries = self._entries
        out = []
        while entries and entries[0][0] <= now:
            out.append(entries.popleft())
        return out

    def clear(self) -> None:
        self._entries.clear()


class SlotRing(Generic[K]):
    """The members of one check interval (``period``) on their grid. A member with
    ``fraction`` f (0 <= f < 1) has slots ``epoch + f * period + k * period`` for
    every integer k >= 0. :meth:`due` returns the slots reached since the last call,
    each member at most once per period. Members are hashable; ties of fraction are
    broken by order of arrival."""

    __slots__ = (
        "_count",
        "_cursor",
        "_epoch",
        "_keys",
        "_members",
        "_order",
        "_period",
        "_start",
    )

    def __init__(self, epoch: float, period: float) -> None:
        self._epoch = epoch
        self._period = period
        self._order: list[tuple[float, int]] = []  # sorted (fraction, arrival)
        self._members: list[K] = []  # in the same order
        self._keys: dict[K, tuple[float, int]] = {}
        self._count = 0  # arrivals, for ties
        # the next member to visit is _members[i] in period k: _cursor = (k, i)
        self._cursor = (0, 0)
        self._start: float | None = None  # a start() to apply once there are members

    @property
    def period(self) -> float:
        return self._period

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._keys

    def slot(self, fraction: float, k: int) -> float:
        """Slot ``k`` of a member at ``fraction`` (the arithmetic :meth:`due` uses)."""
        period = self._period
        return self._epoch + fraction * period + k * period

    def add(self, member: K, fraction: float) -> None:
        """Put ``member`` on the ring. The first slot handed out for it is its first one
        after the cursor: in this period if the sweeps have not reached its place yet,
        else in the next."""
        if member in self._keys:
            raise ValueError(f"{member!r} is already on the ring")
        key = (fraction, self._count)
        self._count += 1
        at = bisect.bisect(self._order, key)
        self._order.insert(at, key)
        self._members.insert(at, member)
        self._keys[member] = key
        k, i = self._cursor
        if at < i:
            self._cursor = (k, i + 1)

    def remove(self, member: K) -> None:
        """Take ``member`` off the ring (no more slots); one not on it is ignored."""
        key = self._keys.pop(member, None)
        if key is None:
            return
        at = bisect.bisect_left(self._order, key)
        del self._order[at]
        del self._members[at]
        k, i = self._cursor
        if at < i:
            self._cursor = (k, i - 1)

    def next_slot(self) -> float | None:
        """When the next slot comes due; None when the ring is empty."""
        if not self._members:
            return None
        self._started()
        k, i = self._cursor
        if i >= len(self._members):
            k, i = k + 1, 0
        return self.slot(self._order[i][0], k)

    def start(self, now: float) -> None:
        """Move the cursor to the first slot at or after ``now``, skipping the earlier
        ones without handing them out (for a ring made after its epoch). On an empty
        ring this waits for the first members."""
        self._start = now
        self._started()

    def _started(self) -> None:
        if self._start is not None and self._members:
            self._seek(self._start)
            self._start = None

    def _seek(self, t: float) -> None:
        """Put the cursor on the first slot ``>= t``."""
        if t <= self._epoch:
            self._cursor = (0, 0)
            return
        order, n = self._order, len(self._order)
        k = math.floor((t - self._epoch) / self._period)
        fraction = (t - self._epoch - k * self._period) / self._period
        i = bisect.bisect_left(order, (fraction, -1))
        # a member's floating-point slot may fall either side of ``t``
        while i > 0 and self.slot(order[i - 1][0], k) >= t:
            i -= 1
        while i < n and self.slot(order[i][0], k) < t:
            i += 1
        self._cursor = (k, i)

    def due(self, now: float) -> list[tuple[K, float]]:
        """Every (member, slot) with the slot ``<= now`` not handed out before, in slot
        order; the cursor moves past them. After a stall of more than a period each
        member comes once, with its latest slot: missed slots are skipped, not
        queued."""
        members, order = self._members, self._order
        n = len(members)
        if not n:
            return []
        self._started()
        epoch, period = self._epoch, self._period
        k, i = self._cursor
        if i >= n:
            k, i = k + 1, 0
        if epoch + order[i][0] * period + k * period <= now - period:
            # a stall of more than a period: only the last period's slots count
            self._seek(math.nextafter(now - period, math.inf))
            k, i = self._cursor
            if i >= n:
                k, i = k + 1, 0
        out = []
        while True:
            slot = epoch + order[i][0] * period + k * period
            if slot > now:
                break
            out.append((members[i], slot))
            i += 1
            if i == n:
                k, i = k + 1, 0
        self._cursor = (k, i)
        return out
