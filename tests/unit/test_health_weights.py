"""nanny's weight arithmetic (spec §5.5): slow start, the load formula, ticks, parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.health import weights

pytestmark = pytest.mark.unit


# -- adjustment ticks: interval > 20 or count % (20 / interval) == 0


@pytest.mark.parametrize(
    ("interval", "count", "due"),
    [
        (21, 7, True),  # longer than 20 s: every check
        (60, 1, True),
        (20, 3, True),  # 20 // 20 = 1: every check
        (11, 5, True),  # 20 // 11 = 1
        (10, 4, True),  # every second check
        (10, 5, False),
        (6, 9, True),  # 20 // 6 = 3
        (6, 10, False),
        (1, 20, True),
        (1, 19, False),
        (7, 0, True),  # count 0 is a multiple
    ],
)
def test_tick_due(interval: int, count: int, due: bool) -> None:
    assert weights.tick_due(interval, count) is due


# -- slow start (0.8's Wensong patch): W >> 5, at least 1, doubling to W


@pytest.mark.parametrize(("w", "w0"), [(1, 1), (10, 1), (31, 1), (32, 1), (64, 2), (100, 3)])
def test_entry_weight_is_w_shifted_by_5_at_least_1(w: int, w0: int) -> None:
    assert weights.entry_weight(w) == w0


def test_entry_weight_keeps_a_configured_zero() -> None:
    # piranha added such a server at weight 1; we leave it quiesced
    assert weights.entry_weight(0) == 0


def test_slow_start_doubles_up_to_the_configured_weight() -> None:
    seen, w = [], weights.entry_weight(100)
    while (nxt := weights.slow_start_step(w, 100)) is not None:
        seen.append(nxt)
        w = nxt
    assert seen == [6, 12, 24, 48, 96, 100]
    assert weights.slow_start_step(100, 100) is None


def test_slow_start_is_over_at_or_above_the_weight() -> None:
    assert weights.slow_start_step(15, 10) is None  # load-raised
    assert weights.slow_start_step(0, 0) is None


# -- the load formula


def test_low_load_raises_by_half_w_times_cube_root() -> None:
    # W=8: factor 4; L=0 -> 4 * 1 = +4
    assert weights.load_weight(8, 8, 0.0) == 12
    # L=0.875 -> cbrt(0.125) = 0.5 -> 8 + 2 = 10 ; W/4 = 2 -> applied
    assert weights.load_weight(8, 8, 0.875) == 10


def test_high_load_lowers_but_never_below_w() -> None:
    # L=9 -> cbrt(8) = 2 -> 40 - 4*2 = 32
    assert weights.load_weight(40, 8, 9.0) == 32
    assert weights.load_weight(9, 8, 9.0) is None  # would be 1, clamped to 8: move 1 < 2
    assert weights.load_weight(12, 8, 9.0) == 8  # clamped to W, move 4 >= 2


def test_capped_at_scale_times_w() -> None:
    assert weights.load_weight(78, 8, 0.0) == 80
    assert weights.load_weight(80, 8, 0.0) is None


def test_small_moves_are_ignored() -> None:
    # W=8: threshold 2; L=0.99 -> 4 * cbrt(0.01) = 0.86 -> trunc(8.86) = 8: no move
    assert weights.load_weight(8, 8, 0.99) is None


def test_load_of_exactly_one_or_negative_changes_nothing() -> None:
    assert weights.load_weight(8, 8, 1.0) is None
    assert weights.load_weight(8, 8, -1.0) is None


def test_weight_one_never_moves() -> None:
    # 0.5 * cbrt(..) < 1 truncates away, as the spec notes
    for load in (0.0, 0.5, 2.0, 9.0):
        assert weights.load_weight(1, 1, load) is None


def test_truncation_toward_zero() -> None:
    # W=4, factor 2, L=0 -> 4 + 2 = 6 exactly; L=0.5 -> 2*0.7937 = 1.587 -> trunc 5
    assert weights.load_weight(4, 4, 0.0) == 6
    assert weights.load_weight(4, 4, 0.5) == 5
    # down: 10 - 2*cbrt(0.5)=1.587 -> 8.41 -> 8
    assert weights.load_weight(10, 4, 1.5) == 8


@given(
    last=st.integers(1, 400),
    w=st.integers(1, 40),
    load=st.floats(0, 50, allow_nan=False),
)
def test_formula_properties(last: int, w: int, load: float) -> None:
    new = weights.load_weight(last, w, load)
    if new is None:
        return
    assert abs(new - last) >= w / 4
    if load < 1:
        assert new <= max(last, weights.SCALE * w)
        assert new == min(math.trunc(last + w / 2 * (1 - load) ** (1 / 3)), weights.SCALE * w)
    else:
        assert new >= w
        assert new == max(math.trunc(last - w / 2 * (load - 1) ** (1 / 3)), w)


# -- parsing uptime / rup / ruptime output


@pytest.mark.parametrize(
    ("text", "load"),
    [
        (" 10:14:03 up 12 days,  3:02,  2 users,  load average: 0.42, 0.35, 0.30\n", 0.42),
        ("host1    up  3 days,  1:02,  load average: 2.50, 1.00, 0.50", 2.5),
        ("web1  up 10+02:11,  0 users,  load 1.20, 0.90, 0.70", None),  # no ':' after load
        ("web1  up 10+02:11,  0 users,  load: 1.20, 0.90", 1.2),
        ("no figures here", None),
        ("load average: abc, 1", None),  # nanny: "bad load average returned"
        ("load average: 0.5.1, 1", 0.5),  # strtod reads what it can
        ("load average: 3", None),  # must end at ',' or blank
        ("load average: 3 ", 3.0),
    ],
)
def test_parse_load(text: str, load: float | None) -> None:
    assert weights.parse_load(text) == load
