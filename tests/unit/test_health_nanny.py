"""The nanny state machine against spec §5.3 and §5.5 (SS-U nanny.c run(), adjustWeight)."""

from __future__ import annotations

import pytest

from runtime.health.nanny import Change, Nanny, c_div, count_thresh, interval_of

pytestmark = pytest.mark.unit

GOOD, BAD = True, False


def machine(weight: int = 1, timeout: int = 10, reentry: int = 180, load: bool = False) -> Nanny:
    return Nanny(weight=weight, timeout=timeout, reentry=reentry, load_monitor=load)


def feed(n: Nanny, *results: bool) -> list[Change | None]:
    return [n.observe(ok, "connect: connection refused").change for ok in results]


# -- count_thresh = reentry / timeout, C integer division, reentry 0 means 180


@pytest.mark.parametrize(
    ("reentry", "timeout", "thresh"),
    [(180, 10, 18), (15, 6, 2), (20, 6, 3), (5, 10, 0), (0, 10, 18), (0, 7, 25), (-15, 10, -1)],
)
def test_count_thresh(reentry: int, timeout: int, thresh: int) -> None:
    assert count_thresh(reentry, timeout) == thresh


def test_c_division_truncates_toward_zero() -> None:
    assert c_div(-7, 2) == -3
    assert c_div(7, -2) == -3
    assert c_div(7, 2) == 3


def test_a_non_positive_timeout_runs_at_one_second() -> None:
    assert interval_of(0) == 1
    assert interval_of(-5) == 1
    assert count_thresh(30, 0) == 30


# -- start-up: out of service, in on the first good check


def test_starts_down_and_enters_on_the_first_good_check() -> None:
    n = machine(reentry=180, timeout=10)
    assert not n.up
    assert n.count == n.thresh == 18
    [change] = feed(n, GOOD)
    assert change == Change(True, None, "first good check, entered")
    assert n.up


def test_failures_at_start_need_the_full_reentry() -> None:
    # a server that fails its first check has its counter zeroed like any other
    n = machine(reentry=30, timeout=10)  # thresh 3
    assert feed(n, BAD) == [None]
    assert feed(n, GOOD, GOOD) == [None, None]
    [change] = feed(n, GOOD)
    assert change is not None and change.up is True
    assert change.reason == "first good check, entered"


# -- one failure takes an active server out


def test_one_failure_removes_an_active_server() -> None:
    n = machine()
    feed(n, GOOD, GOOD, GOOD)
    [change] = feed(n, BAD)
    assert change == Change(False, None, "connect: connection refused")
    assert not n.up and n.count == 0


def test_no_event_while_up_and_healthy_or_down_and_failing() -> None:
    n = machine(timeout=7)  # 20 // 7 = 2 ... weight 1, no slow start, no load: no ticks seen
    assert feed(n, GOOD)[0] is not None
    assert feed(n, GOOD, GOOD, GOOD) == [None, None, None]
    assert feed(n, BAD)[0] is not None
    assert feed(n, BAD, BAD) == [None, None]


# -- re-entry after reentry / timeout consecutive good checks


def test_reentry_after_thresh_consecutive_good_checks() -> None:
    n = machine(reentry=15, timeout=6)  # 15 / 6 = 2
    feed(n, GOOD, BAD)
    assert feed(n, GOOD) == [None]
    [change] = feed(n, GOOD)
    assert change == Change(True, None, "2 consecutive good checks, re-entered")


def test_a_failure_while_out_restarts_the_count() -> None:
    n = machine(reentry=30, timeout=10)  # 3
    feed(n, GOOD, BAD, GOOD, GOOD, BAD)
    assert n.count == 0 and not n.up
    assert feed(n, GOOD, GOOD) == [None, None]
    assert feed(n, GOOD)[0] == Change(True, None, "3 consecutive good checks, re-entered")


def test_reentry_shorter_than_timeout_returns_on_the_first_good_check() -> None:
    n = machine(reentry=5, timeout=10)  # 0
    feed(n, GOOD, BAD)
    assert feed(n, GOOD)[0] == Change(True, None, "good check, re-entered")


def test_reentry_zero_means_180_seconds() -> None:
    n = machine(reentry=0, timeout=60)  # 180 / 60 = 3
    feed(n, GOOD, BAD)
    assert feed(n, GOOD, GOOD) == [None, None]
    assert feed(n, GOOD)[0] is not None


def test_default_timing_needs_18_good_checks() -> None:
    n = machine()
    feed(n, GOOD, BAD)
    assert all(c is None for c in feed(n, *[GOOD] * 17))
    assert feed(n, GOOD)[0] is not None


# -- slow start on (re-)entry and adjustment ticks


def test_entry_weight_and_doubling_on_ticks() -> None:
    # timeout 10: a tick whenever the counter is even; thresh 18, start count 18
    n = machine(weight=10, timeout=10, reentry=180)
    [change] = feed(n, GOOD)  # count 19: entry, no tick
    assert change == Change(True, 1, "first good check, entered")
    [change] = feed(n, GOOD)  # count 20: tick
    assert change == Change(None, 2, "slow start: weight 2")
    assert feed(n, GOOD) == [None]
    assert [c.weight for c in feed(n, GOOD, GOOD, GOOD, GOOD) if c] == [4, 8]
    [last] = [c for c in feed(n, GOOD, GOOD) if c]
    assert last.weight is None  # = the configured 10
    assert n.weight == 10


def test_entry_and_tick_in_one_check_give_one_change() -> None:
    # after a failure the counter restarts at 0; re-entry at count 18 is a tick (18 % 2)
    n = machine(weight=100, timeout=10, reentry=180)
    feed(n, GOOD, BAD)
    changes = [c for c in feed(n, *[GOOD] * 18) if c]
    assert changes == [Change(True, 6, "18 consecutive good checks, re-entered")]


def test_ticks_every_check_above_20_seconds() -> None:
    n = machine(weight=64, timeout=30, reentry=30)
    assert feed(n, GOOD)[0] == Change(True, 4, "first good check, entered")  # 2, doubled
    assert [c.weight for c in feed(n, GOOD, GOOD, GOOD, GOOD) if c] == [8, 16, 32, None]


def test_reentry_restarts_slow_start() -> None:
    n = machine(weight=64, timeout=30, reentry=30)
    feed(n, *[GOOD] * 8)
    assert n.weight == 64
    feed(n, BAD)
    assert feed(n, GOOD)[0] == Change(True, 4, "good check, re-entered")


def test_load_is_asked_for_on_ticks_after_slow_start_only() -> None:
    n = machine(weight=8, timeout=30, reentry=30, load=True)
    asked = [n.observe(GOOD, "").wants_load for _ in range(6)]
    # 1 -> 2 (entry tick), 4, 8: three slow-start ticks, then load on every tick
    assert asked == [False, False, False, True, True, True]


def test_load_is_not_asked_without_a_load_monitor() -> None:
    n = machine(weight=8, timeout=30, reentry=30, load=False)
    assert not any(n.observe(GOOD, "").wants_load for _ in range(8))


def test_load_readings_move_the_weight() -> None:
    n = machine(weight=8, timeout=30, reentry=30, load=True)
    for _ in range(4):
        n.observe(GOOD, "")
    assert n.load(0.0) == Change(None, 12, "load 0: weight 12")
    assert n.load(None) is None  # unreadable: unchanged
    assert n.load(1.0) is None
    assert n.load(9.0) == Change(None, None, "load 9: weight 8")  # back to configured


def test_load_ignored_while_down() -> None:
    n = machine(weight=8, timeout=30, reentry=30, load=True)
    n.observe(GOOD, "")
    n.observe(BAD, "x")
    assert n.load(0.0) is None


def test_down_event_has_no_weight() -> None:
    n = machine(weight=50, timeout=30, reentry=30)
    feed(n, GOOD, GOOD)
    assert feed(n, BAD)[0] == Change(False, None, "connect: connection refused")


def test_configured_weight_zero_stays_zero() -> None:
    n = machine(weight=0, timeout=30, reentry=30, load=True)
    assert feed(n, GOOD)[0] == Change(True, None, "first good check, entered")
    assert n.weight == 0
    assert n.load(0.0) is None


# -- a reload's new values


def test_reload_weight_while_up_is_reported() -> None:
    n = machine(weight=4, timeout=30, reentry=30)
    feed(n, GOOD, GOOD, GOOD)
    assert n.weight == 4
    assert n.configure_weight(6) == Change(None, None, "configured weight 4 -> 6")
    assert n.weight == 6


def test_reload_weight_during_slow_start_caps_it() -> None:
    n = machine(weight=64, timeout=30, reentry=30)
    feed(n, GOOD)  # 4
    assert n.configure_weight(3) == Change(None, None, "configured weight 64 -> 3")
    assert n.weight == 3


def test_reload_weight_while_down_is_silent() -> None:
    n = machine(weight=4)
    assert n.configure_weight(9) is None
    assert n.configured == 9


def test_retime_keeps_state_and_changes_threshold() -> None:
    n = machine(reentry=180, timeout=10)
    feed(n, GOOD, BAD)
    n.retime(timeout=10, reentry=20)
    assert n.thresh == 2 and not n.up
    assert feed(n, GOOD, GOOD)[1] is not None


# -- manual override (SIGUSR1 / SIGUSR2 / SIGHUP)


def test_force_down_freezes_checks() -> None:
    n = machine(weight=5, timeout=30, reentry=30)
    feed(n, GOOD, GOOD, GOOD)
    assert n.force(False) == Change(False, None, "forced down")
    assert feed(n, GOOD, GOOD) == [None, None]
    assert not n.up


def test_force_up_uses_the_configured_weight_and_ignores_failures() -> None:
    n = machine(weight=64, timeout=30, reentry=180)
    assert n.force(True) == Change(True, None, "forced up")
    assert feed(n, BAD, BAD) == [None, None]
    assert n.up and n.weight == 64


def test_release_resumes_with_the_counter_at_the_threshold() -> None:
    n = machine(weight=1, timeout=10, reentry=180)
    feed(n, GOOD, BAD)
    n.force(False)
    assert n.force(None) is None
    assert n.count == 18
    assert feed(n, GOOD)[0] is not None  # back on the first good check


def test_force_to_the_current_state_changes_nothing() -> None:
    n = machine()
    assert n.force(False) is None
    n = machine()
    feed(n, GOOD)
    assert n.force(True) is None
