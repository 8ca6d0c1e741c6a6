"""Weighted Maglev lookup tables: pure code, no I/O, no clock.

A table has ``size`` slots (a prime, 65537 by default, as in the Maglev paper); each
slot holds the position of a real server in the ``members`` sequence, or ``EMPTY``
when no member can take traffic. The XDP program hashes a flow (or a source address,
for ``sh``) to a slot and forwards to the real server found there.

Construction (Eisenbud et al., NSDI'16, §3.4, with weights as turn frequencies):

* every member has a permutation of the slots, ``offset + j * skip (mod size)``, with
  ``offset`` and ``skip`` taken from a keyed BLAKE2b hash of the member's *key* (for
  us ``"RIP:PORT"``). Python's ``hash()`` is never used, so every process and every
  router computes the same table from the same members;
* members take turns claiming their most preferred empty slot. A member of weight
  ``w`` earns ``w`` credits per round and claims a slot each time its credit reaches
  the largest weight, so slot counts are proportional to weights (to within one
  slot per round boundary).

Taking servers out (failed, or quiesced with weight 0 at run time) does not rebuild
the table: :func:`table` starts from the table of the configured weights and hands
only the slots of the servers taken out to the others, by the same turn rule applied
to the freed slots. A live server therefore never loses a slot because another one
failed, and the result is still a pure function of (members, weights, taken-out set).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import cycle, islice
from math import gcd

import numpy as np

DEFAULT_SIZE = 65537
EMPTY = -1


@dataclass(frozen=True, slots=True)
class Member:
    """A real server as the table sees it: a stable key and a weight (0 = no slots)."""

    key: str
    weight: int


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _offset_skip(key: str, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(key.encode(), digest_size=16, person=b"lvs-maglev").digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little")
    return h1 % size, h2 % (size - 1) + 1


# When this few slots are left empty, _fill stops probing permutations one slot at a
# time (a nearly full table makes each probe walk long) and finishes by rank order.
DENSE_AT = 1 / 64


def _schedule(weights: Sequence[int], limit: int) -> list[int]:
    """The order in which members (positions in ``weights``) claim slots under the
    turn rule: each round every member earns its weight in credit and claims a slot
    each time its credit reaches the largest weight. The order repeats every
    ``max(weights)`` rounds (the credits are all back to 0 then), so one period, at
    most ``limit`` claims long, is all the fill needs; it depends on the weights only,
    never on the table."""
    g = 0
    for w in weights:
        g = gcd(g, w)
    reduced = [w // g for w in weights]
    top = max(reduced)
    credit = [0] * len(reduced)
    out: list[int] = []
    for _ in range(top):
        for n, w in enumerate(reduced):
            c = credit[n] + w
            if c >= top:
                credit[n] = c - top
                out.append(n)
                if len(out) == limit:
                    return out
            else:
                credit[n] = c
    return out


def _claim(
    members: Sequence[Member], eligible: Sequence[int], size: int, full: bytearray, left: int
) -> tuple[np.ndarray, np.ndarray]:
    """The turn rule over the slots that are not ``full``: the ``eligible`` members
    take turns (:func:`_schedule`) claiming their most preferred free slot until
    ``left`` (all the free) slots are claimed. Returns the slots claimed and, for each,
    the claimer's position in ``eligible``. ``full`` is used up.

    Two phases with one result. While many slots are free, each turn walks the
    member's permutation to its next free slot. Once only ``DENSE_AT`` of the table
    is free, every remaining free slot lies *after* each member's position in its
    permutation (the slots before it were full or claimed when it passed them, and a
    slot never becomes free again), so each member's next choice is simply the free
    slot of lowest rank in its permutation: the ranks are computed with numpy and the
    turns go on over those preference lists (:func:`_turns`). A whole build frees
    every slot; :func:`without` frees the slots of the members taken out, and when
    that is most of the table, walking is what keeps it as cheap as a build."""
    weights = [members[i].weight for i in eligible]
    order = _schedule(weights, left)
    perms = [_offset_skip(members[i].key, size) for i in eligible]
    skips = [skip for _off, skip in perms]
    nexts = [off for off, _skip in perms]  # each member's slot at j = 0
    owner = array("i", [0]) * size  # position in eligible; valid where claimed
    sparse = max(left - max(int(size * DENSE_AT), 1), 0)  # claims made by walking
    claimed = np.flatnonzero(np.frombuffer(full, dtype=np.uint8) == 0)  # all, in the end
    for n in islice(cycle(order), sparse):
        slot, skip = nexts[n], skips[n]
        while full[slot]:
            slot = (slot + skip) % size
        full[slot] = 1
        owner[slot] = n
        nexts[n] = (slot + skip) % size
    view = np.frombuffer(owner, dtype=np.int32)
    empties = np.flatnonzero(np.frombuffer(full, dtype=np.uint8) == 0)
    prefs = _Preferences(empties, perms, size, _head(len(empties), weights))
    for slot, n in _turns(prefs, order, sparse % len(order), left - sparse):
        view[slot] = n
    return claimed, view[claimed]


def _fill(members: Sequence[Member], eligible: Sequence[int], size: int) -> np.ndarray:
    """The whole table: the ``eligible`` members take turns claiming their most
    preferred empty slot (:func:`_claim` over an empty table)."""
    slots, owners = _claim(members, eligible, size, bytearray(size), size)
    table = np.empty(size, dtype=np.int32)
    table[slots] = np.array(eligible, dtype=np.int32)[owners]
    return table


class _Preferences:
    """Each permutation's order of preference among ``slots``: by the position
    ``j = (slot - offset) * skip^-1 (mod size)`` of each slot in it.

    A member claims about its weight's share of the slots, so only the head of each
    order is sorted (``head`` entries, found with argpartition); :meth:`full` sorts a
    member's whole order the first time its turns run past the head."""

    def __init__(self, slots: np.ndarray, perms: Sequence[tuple[int, int]], size: int, head: int):
        wide = slots.astype(np.int64)[None, :]
        offs = np.array([off for off, _skip in perms], dtype=np.int64)[:, None]
        invs = np.array([pow(skip, -1, size) for _off, skip in perms], dtype=np.int64)[:, None]
        # a row per permutation; the ranks in a row are distinct, so any sort gives
        # the one order
        self.rank = ((wide - offs) % size * invs % size).astype(np.int32)
        self.slots = slots
        if head < len(slots):
            part = np.argpartition(self.rank, head, axis=1)[:, :head]
            order = np.take_along_axis(self.rank, part, axis=1).argsort(axis=1)
            self.heads = slots[np.take_along_axis(part, order, axis=1)].tolist()
        else:
            self.heads = slots[np.argsort(self.rank, axis=1)].tolist()

    def full(self, n: int) -> list[int]:
        self.heads[n] = self.slots[np.argsort(self.rank[n])].tolist()
        return self.heads[n]


def _head(slots: int, weights: Sequence[int]) -> int:
    """How much of each preference order to sort up front: four times the largest
    member's share of ``slots``, and at least 64."""
    return max(64, 4 * slots * max(weights) // sum(weights))


def _turns(prefs: _Preferences, order: list[int], start: int, left: int) -> list[tuple[int, int]]:
    """The turn rule over preference lists: members claim in ``order`` (a period of
    :func:`_schedule`, from position ``start``) their most preferred unclaimed slot
    until ``left`` slots are claimed. Returns (slot, member position) pairs."""
    heads = prefs.heads
    ptr = [0] * len(heads)
    taken: set[int] = set()
    out = []
    k, period = start, len(order)
    while left:
        n = order[k]
        k += 1
        if k == period:
            k = 0
        pref, p = heads[n], ptr[n]
        while True:
            if p == len(pref):
                pref = prefs.full(n)
            if pref[p] not in taken:
                break
            p += 1
        slot = pref[p]
        ptr[n] = p + 1
        taken.add(slot)
        out.append((slot, n))
        left -= 1
    return out


def build(members: Sequence[Member], size: int = DEFAULT_SIZE) -> np.ndarray:
    """The table of ``members`` at their weights (members of weight 0 get none)."""
    if not is_prime(size):
        raise ValueError(f"Maglev table size must be prime, got {size}")
    if any(m.weight < 0 for m in members):
        raise ValueError("weights must be >= 0")
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        raise ValueError("member keys must be unique")
    eligible = [i for i, m in enumerate(members) if m.weight > 0]
    if not eligible:
        return np.full(size, EMPTY, dtype=np.int32)
    return _fill(members, eligible, size)


def without(
    base: np.ndarray, members: Sequence[Member], out: Collection[int], size: int | None = None
) -> np.ndarray:
    """``base`` with the slots of the members at positions ``out`` handed to the
    remaining members of weight > 0 (by their permutations and weights); every
    other slot keeps its member.

    The turn rule over the freed slots only (:func:`_claim`): a member's preference
    among them is the order of their positions ``j`` in its permutation. A few freed
    slots (one server of many out) go by preference lists, ``j = (slot - offset) *
    skip⁻¹ (mod size)``, without walking permutations; many (most servers still out,
    as while a daemon starts) by walking first, so the cost never exceeds a build's."""
    size = size or len(base)
    outs = np.fromiter(sorted(set(out)), dtype=np.int32)
    table = base.copy()
    freed = np.isin(base, outs)
    table[freed] = EMPTY
    gone = set(out)
    eligible = [i for i, m in enumerate(members) if m.weight > 0 and i not in gone]
    left = int(np.count_nonzero(freed))
    if not left or not eligible:
        return table
    full = bytearray((~freed).view(np.uint8).tobytes())
    slots, owners = _claim(members, eligible, size, full, left)
    table[slots] = np.array(eligible, dtype=np.int32)[owners]
    return table


def table(
    members: Sequence[Member], out: Collection[int] = (), size: int = DEFAULT_SIZE
) -> np.ndarray:
    """The table for ``members`` (configured weights) with ``out`` taken out."""
    base = build(members, size)
    return without(base, members, out, size) if out else base


def diff(old: np.ndarray | None, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slots whose value changes from ``old`` to ``new`` and their new values:
    what a batched map update has to write (everything when ``old`` is None)."""
    if old is None or len(old) != len(new):
        return np.arange(len(new), dtype=np.int32), new.astype(np.int32)
    changed = np.flatnonzero(old != new).astype(np.int32)
    return changed, new[changed].astype(np.int32)


def shares(tab: np.ndarray, n: int) -> np.ndarray:
    """Slot counts per member position (length ``n``)."""
    valid = tab[tab >= 0]
    return np.bincount(valid, minlength=n)
