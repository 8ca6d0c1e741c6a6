"""nanny's weight arithmetic: slow start after (re-)entry and the load-monitor formula.

Pure functions over integers and floats, in the order piranha 0.8.6's nanny applies
them (spec §5.5, SS-U nanny.c ``adjustWeight`` 883-962, ``run`` 1191-1200):

* a server that enters (or re-enters) the table starts at ``W >> 5`` (at least 1);
* every *adjustment tick* (about every 20 s, see :func:`tick_due`) while the weight is
  below the configured weight doubles it, capped at the configured weight; no load is
  read in that phase;
* afterwards each tick reads the real server's 1-minute load ``L`` and moves the weight
  by ``W/2 * cbrt(|1 - L|)`` (up when ``L < 1``, down when ``L > 1``) inside
  ``[W, scale * W]``, but only when the move is at least ``W/4``.

C integer conversions are kept: the new weight is the double result truncated toward
zero, which is why a configured weight of 1 never moves under load (0.5 * cbrt(..) < 1).
"""

from __future__ import annotations

import math
import re

SCALE = 10  # nanny -S; lvsd never passes it
TICK_SECONDS = 20  # nanny adjusts weights "every 20 seconds" in units of checks


def tick_due(interval: int, count: int) -> bool:
    """Whether the check that left the consecutive-success counter at ``count`` is an
    adjustment tick: every check when the interval exceeds 20 s, else every
    ``20 // interval``-th value of the counter (nanny.c:1286-1287)."""
    if interval > TICK_SECONDS:
        return True
    return count % (TICK_SECONDS // interval) == 0


def entry_weight(weight: int) -> int:
    """The weight a server is (re-)added with: 0.8's slow start begins at ``W >> 5``,
    at least 1. A configured weight of 0 stays 0 (piranha put such a server in at
    weight 1; we keep the administrator's quiesced server quiesced)."""
    if weight <= 0:
        return 0
    return max(weight >> 5, 1)


def slow_start_step(last: int, weight: int) -> int | None:
    """The next slow-start weight, or None once the configured weight is reached (from
    then on the load formula applies)."""
    if last >= weight:
        return None
    return min(max(last, 1) << 1, weight)


def load_weight(last: int, weight: int, load: float, scale: int = SCALE) -> int | None:
    """The weight after a load reading, or None when nanny leaves it unchanged.

    ``load`` is the 1-minute load average; a negative figure (no reading) and exactly
    1.0 change nothing. The result stays in ``[weight, scale * weight]`` and is applied
    only when it moves by at least ``weight / 4``."""
    if load < 0 or load == 1.0 or weight <= 0:
        return None
    factor = weight / 2.0
    if load < 1.0:
        new = math.trunc(last + factor * (1.0 - load) ** (1.0 / 3.0))
        new = min(new, scale * weight)
    else:
        new = math.trunc(last - factor * (load - 1.0) ** (1.0 / 3.0))
        new = max(new, weight)
    if abs(new - last) >= weight / 4.0:
        return new
    return None


def parse_load(output: str) -> float | None:
    """The 1-minute load from ``uptime``/``rup``/``ruptime`` output, nanny 0.8's way:
    find ``load``, then the first ``:`` after it, skip two characters and read digits
    and dots up to a ``,`` or a blank. None when that shape is not there (nanny logs
    "bad load average returned" and leaves the weight alone). An empty number, which
    nanny's strtod read as 0.0, is also None here."""
    start = output.find("load")
    if start < 0:
        return None
    colon = output.find(":", start)
    if colon < 0:
        return None
    i = colon + 2
    j = i
    while j < len(output) and output[j] in "0123456789.":
        j += 1
    if j >= len(output) or output[j] not in ", ":
        return None
    number = _STRTOD.match(output, i, j)  # strtod reads the longest number it can
    return float(number.group()) if number else None


_STRTOD = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
