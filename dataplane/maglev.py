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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
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


def _fill(
    table: list[int],
    members: Sequence[Member],
    eligible: Sequence[int],
    size: int,
    free: int,
) -> None:
    """Let the ``eligible`` members take turns claiming empty slots of ``table``
    (mutated in place) until ``free`` slots have been claimed."""
    weights = [members[i].weight for i in eligible]
    g = 0
    for w in weights:
        g = gcd(g, w)
    weights = [w // g for w in weights]
    top = max(weights)
    offsets, skips, nexts, credit = [], [], [], [0] * len(eligible)
    for i in eligible:
        off, skip = _offset_skip(members[i].key, size)
        offsets.append(off)
        skips.append(skip)
        nexts.append(off)  # the slot at j = 0 of the permutation
    order = range(len(eligible))
    while free:
        for n in order:
            c = credit[n] + weights[n]
            if c < top:
                credit[n] = c
                continue
            credit[n] = c - top
            slot, skip = nexts[n], skips[n]
            while table[slot] != EMPTY:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = eligible[n]
            slot += skip
            nexts[n] = slot - size if slot >= size else slot
            free -= 1
            if not free:
                return


def build(members: Sequence[Member], size: int = DEFAULT_SIZE) -> np.ndarray:
    """The table of ``members`` at their weights (members of weight 0 get none)."""
    if not is_prime(size):
        raise ValueError(f"Maglev table size must be prime, got {size}")
    if any(m.weight < 0 for m in members):
        raise ValueError("weights must be >= 0")
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        raise ValueError("member keys must be unique")
    table = [EMPTY] * size
    eligible = [i for i, m in enumerate(members) if m.weight > 0]
    if eligible:
        _fill(table, members, eligible, size, size)
    return np.array(table, dtype=np.int32)


def without(
    base: np.ndarray, members: Sequence[Member], out: Collection[int], size: int | None = None
) -> np.ndarray:
    """``base`` with the slots of the members at positions ``out`` handed to the
    remaining members of weight > 0 (by their permutations and weights); every
    other slot keeps its member.

    Same result as running the turn rule over the freed slots only, computed without
    walking whole permutations: a member's preference among the freed slots is the
    order of their positions ``j`` in its permutation, ``j = (slot - offset) *
    skip⁻¹ (mod size)``."""
    size = size or len(base)
    outs = np.fromiter(sorted(set(out)), dtype=np.int32)
    table = base.copy()
    freed = np.flatnonzero(np.isin(base, outs))
    table[freed] = EMPTY
    eligible = [i for i, m in enumerate(members) if m.weight > 0 and i not in set(out)]
    if not len(freed) or not eligible:
        return table
    prefs = []
    for i in eligible:
        off, skip = _offset_skip(members[i].key, size)
        inv = pow(skip, -1, size)
        rank = ((freed.astype(np.int64) - off) % size) * inv % size
        prefs.append(freed[np.argsort(rank, kind="stable")].tolist())
    weights = [members[i].weight for i in eligible]
    g = 0
    for w in weights:
        g = gcd(g, w)
    weights = [w // g for w in weights]
    top = max(weights)
    credit = [0] * len(eligible)
    ptr = [0] * len(eligible)
    taken: set[int] = set()
    owners: list[int] = []
    left = len(freed)
    while left:
        for n in range(len(eligible)):
            c = credit[n] + weights[n]
            if c < top:
                credit[n] = c
                continue
            credit[n] = c - top
            pref, p = prefs[n], ptr[n]
            while pref[p] in taken:
                p += 1
            slot = pref[p]
            ptr[n] = p + 1
            taken.add(slot)
            owners.append(slot)
            owners.append(eligible[n])
            left -= 1
            if not left:
                break
    pairs = np.array(owners, dtype=np.int64).reshape(-1, 2)
    table[pairs[:, 0]] = pairs[:, 1]
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
