"""The per-real-server state machine of piranha's nanny, without I/O or clocks.

One :class:`Nanny` per real server. The asyncio shell feeds it each check result
(:meth:`Nanny.observe`) and, when asked, a load reading (:meth:`Nanny.load`); it answers
with at most one :class:`Change` per input. The rules are piranha 0.8.6's ``run()`` loop
(spec §5.3, SS-U nanny.c:1026-1333):

* ``count_thresh = reentry / timeout`` in C integer division (truncated toward zero);
  ``reentry = 0`` means nanny's default of 180 s.
* The counter of consecutive good checks starts *at* ``count_thresh``: a server is out of
  the table when nanny starts and goes in on the first good check.
* A good check increments the counter. One failed check of a server in service takes it
  out and zeroes the counter; a failure while out also zeroes it. A server that is out
  returns once the counter (after the increment) reaches ``count_thresh``.
* On (re-)entry the weight starts at ``W >> 5`` (slow start, :mod:`.weights`); on
  adjustment ticks it doubles up to ``W``, after which load readings move it.
* Manual override (nanny's SIGUSR1/SIGUSR2, "opaque"/"rose-colored glasses"): force the
  server down or up and freeze checking; releasing it resumes with the counter at
  ``count_thresh``.

What "out" means is the director's decision: with ``quiesce_server`` it keeps the
server at weight 0 once it has been in the table (:func:`quiesces`), otherwise it
removes it. The machine reports only up/down and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.model import VirtualService

from . import weights

DEFAULT_REENTRY = 180  # nanny: "-a 0" (or none) means 180 s for LVS services


def c_div(a: int, b: int) -> int:
    """C's integer division: truncates toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def interval_of(timeout: int) -> int:
    """The check interval in whole seconds. nanny divides by it, so 0 crashed it and a
    negative one made poll() wait forever; the compiler reports both (LVS249) and the
    runtime runs such a virtual at 1 s rather than not at all."""
    return timeout if timeout >= 1 else 1


def count_thresh(reentry: int, timeout: int) -> int:
    """How many consecutive good checks bring a failed server back."""
    return c_div(reentry if reentry != 0 else DEFAULT_REENTRY, interval_of(timeout))


def quiesces(vs: VirtualService) -> bool:
    """Whether a failed server of ``vs`` stays in the table at weight 0 (``quiesce_server``)
    instead of being removed. As in nanny, this applies only to a server that has been
    in the table: a server that never passed a check is simply absent."""
    return vs.quiesce_server


@dataclass(frozen=True, slots=True)
class Change:
    """What one input changed: ``up`` is the new state (None: unchanged, only the weight
    moved); ``weight`` the weight now in force while up (None: the configured weight)."""

    up: bool | None
    weight: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Observed:
    """The answer to one check result: the change, if any, and whether the shell should
    now read the server's load and pass it to :meth:`Nanny.load`."""

    change: Change | None
    wants_load: bool


_NOTHING = Observed(None, False)  # the common answer, allocated once


class Nanny:
    """One real server's health state. ``weight``/``timeout``/``reentry`` are the lvs.cf
    values; ``load_monitor`` says whether load readings exist for this server."""

    __slots__ = (
        "_weight",
        "configured",
        "count",
        "entered",
        "interval",
        "load_monitor",
        "override",
        "thresh",
        "tick_every",
        "up",
    )

    def __init__(self, *, weight: int, timeout: int, reentry: int, load_monitor: bool) -> None:
        self.up = False
        self.entered = False  # has it been in service since the machine started?
        self.override: bool | None = None  # None: normal checking
        self.load_monitor = load_monitor
        self.retime(timeout=timeout, reentry=reentry)
        self.count = self.thresh
        self.configured = weight
        self._weight = weights.entry_weight(weight)

    # -- configuration (a reload keeps the state and takes the new values)

    def retime(self, *, timeout: int, reentry: int) -> None:
        self.interval = interval_of(timeout)
        self.thresh = count_thresh(reentry, timeout)
        # a tick when count % tick_every == 0 (every check above 20 s)
        self.tick_every = (
            1 if self.interval > weights.TICK_SECONDS else weights.TICK_SECONDS // self.interval
        )

    def configure_weight(self, weight: int) -> Change | None:
        """A new configured weight from a reload (piranha's reload ignored it). While up:
        a slow start in progress continues, capped at the new weight; a server at or
        above its old weight (slow start done, perhaps load-adjusted) takes the new
        weight, and load adjustment goes on from there. The change is reported so the
        director applies it."""
        old, self.configured = self.configured, weight
        if old == weight or not self.up:
            return None
        if self._weight < old:
            self._weight = max(0, min(self._weight, weight))
        else:
            self._weight = max(0, weight)
        return Change(None, self._shown(), f"configured weight {old} -> {weight}")

    @property
    def weight(self) -> int:
        """The weight in force while up (slow start and load included)."""
        return self._weight

    def _shown(self) -> int | None:
        return None if self._weight == self.configured else self._weight

    # -- inputs

    def observe(self, ok: bool, detail: str) -> Observed:
        """A check finished: ``ok`` and the probe's ``detail`` (why it failed)."""
        if self.override is not None:
            return _NOTHING
        change = None
        if ok:
            self.count += 1
            if not self.up and self.count >= self.thresh:
                self.up = True
                self._weight = weights.entry_weight(self.configured)
                change = Change(True, self._shown(), self._entry_reason())
        elif self.up:
            self.up = False
            self.count = 0
            return Observed(Change(False, None, detail or "check failed"), False)
        else:
            self.count = 0
        # weights.tick_due(), inlined: this runs for every check of every server
        if not self.up or self.count % self.tick_every:
            return _NOTHING if change is None else Observed(change, False)
        step = weights.slow_start_step(self._weight, self.configured)
        if step is not None:
            self._weight = step
            if change is None:
                return Observed(Change(None, self._shown(), f"slow start: weight {step}"), False)
            return Observed(Change(True, self._shown(), change.reason), False)
        return Observed(change, self.load_monitor)

    def load(self, figure: float | None) -> Change | None:
        """A load reading for the tick :meth:`observe` asked about (None: none could be
        read; the weight stays)."""
        if not self.up or figure is None or self.override is not None:
            return None
        new = weights.load_weight(self._weight, self.configured, figure)
        if new is None:
            return None
        self._weight = new
        return Change(None, self._shown(), f"load {figure:g}: weight {new}")

    def force(self, up: bool | None) -> Change | None:
        """Manual override: True/False force the server up (configured weight) or down
        and suspend checking; None resumes checking with the counter at the
        threshold, so the next good check (re-)adds a server that is out."""
        self.override = up
        if up is None:
            self.count = self.thresh
            return None
        if up and not self.up:
            self.up = True
            self._weight = self.configured
            return Change(True, self._shown(), "forced up")
        if not up and self.up:
            self.up = False
            return Change(False, None, "forced down")
        return None

    def _entry_reason(self) -> str:
        if not self.entered:
            self.entered = True
            return "first good check, entered"
        if self.thresh <= 1:
            return "good check, re-entered"
        return f"{self.thresh} consecutive good checks, re-entered"
