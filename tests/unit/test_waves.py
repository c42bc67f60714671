"""rollwave.plan.waves: the wave and capacity arithmetic of DESIGN.md, number by number."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollwave.plan.waves import (
    cumulative_counts,
    kept_waves,
    max_unavailable,
    percent_ceil,
    percent_floor,
    wave_count,
    wave_sizes,
)
from rollwave.spec.units import Count, Percent

C = Count
P = Percent

CANARY = [C(1), P(10), P(50), P(100)]  # the waves of DESIGN.md's example


# --------------------------------------------------------------------------- percentages


@pytest.mark.parametrize(
    ("percent", "total", "expected"),
    [
        pytest.param(10, 20, 2, id="10%-of-20-is-exactly-2"),
        pytest.param(10, 5, 1, id="10%-of-5-rounds-up-to-1"),
        pytest.param(33, 3, 1, id="33%-of-3-is-0.99-up-to-1"),
        pytest.param(34, 3, 2, id="34%-of-3-is-1.02-up-to-2"),
        pytest.param(50, 5, 3, id="50%-of-5-is-2.5-up-to-3"),
        pytest.param(100, 7, 7, id="100%-is-all"),
        pytest.param(0, 7, 0, id="0%-is-none"),
        pytest.param(1, 10_000, 100, id="1%-of-10000-exact"),
        pytest.param(0.1, 1000, 1, id="0.1%-of-1000-exact"),
        pytest.param(12.5, 8, 1, id="12.5%-of-8-exact"),
        pytest.param(33.333, 3, 1, id="33.333%-of-3-is-0.99999"),
        pytest.param(7, 100, 7, id="7%-of-100-float-noise-ignored"),
        pytest.param(10, 0, 0, id="of-nothing-is-nothing"),
    ],
)
def test_percent_ceil(percent: float, total: int, expected: int) -> None:
    """percent_ceil is the exact ceiling of percent x total / 100, free of float noise."""
    assert percent_ceil(percent, total) == expected


@pytest.mark.parametrize(
    ("percent", "total", "expected"),
    [
        pytest.param(10, 20, 2, id="10%-of-20-is-exactly-2"),
        pytest.param(10, 5, 0, id="10%-of-5-rounds-down-to-0"),
        pytest.param(33, 3, 0, id="33%-of-3-is-0.99-down-to-0"),
        pytest.param(34, 3, 1, id="34%-of-3-is-1.02-down-to-1"),
        pytest.param(25, 10, 2, id="25%-of-10-is-2.5-down-to-2"),
        pytest.param(29, 100, 29, id="29%-of-100-float-noise-ignored"),
        pytest.param(100, 7, 7, id="100%-is-all"),
        pytest.param(5, 10_000, 500, id="5%-of-10000-exact"),
    ],
)
def test_percent_floor(percent: float, total: int, expected: int) -> None:
    """percent_floor is the exact floor of percent x total / 100, free of float noise."""
    assert percent_floor(percent, total) == expected


def test_float_arithmetic_would_be_wrong_here() -> None:
    """The naive float formula misrounds 7% and 29% of 100, which the integer scaling gets right."""
    assert math.ceil(7 / 100 * 100) == 8  # 7.000000000000001
    assert math.floor(29 / 100 * 100) == 28  # 28.999999999999996
    assert percent_ceil(7, 100) == 7
    assert percent_floor(29, 100) == 29


@settings(max_examples=200, deadline=None)
@given(
    percent=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False),
    total=st.integers(min_value=0, max_value=100_000),
)
def test_percent_rounding_is_exact_to_a_thousandth(percent: Decimal, total: int) -> None:
    """For percentages written with up to three decimals both roundings equal exact rational arithmetic."""
    exact = Fraction(percent) * total / 100
    assert percent_ceil(float(percent), total) == math.ceil(exact)
    assert percent_floor(float(percent), total) == math.floor(exact)


# --------------------------------------------------------------------------- one wave entry


@pytest.mark.parametrize(
    ("wave", "total", "expected"),
    [
        pytest.param(C(1), 20, 1, id="count"),
        pytest.param(C(25), 20, 20, id="count-capped-at-N"),
        pytest.param(C(20), 20, 20, id="count-equal-to-N"),
        pytest.param(P(10), 20, 2, id="percent-of-20"),
        pytest.param(P(10), 5, 1, id="percent-rounds-up"),
        pytest.param(P(100), 5, 5, id="all"),
        pytest.param(C(3), 0, 0, id="empty-service"),
    ],
)
def test_wave_count(wave: Count | Percent, total: int, expected: int) -> None:
    """A count means that many targets capped at N; a percentage means ceil(p x N / 100)."""
    assert wave_count(wave, total) == expected


# --------------------------------------------------------------------------- wave lists


WAVE_TABLE = [
    # waves, N, kept (spec index, cumulative), sizes
    pytest.param(CANARY, 20, [(0, 1), (1, 2), (2, 10), (3, 20)], [1, 1, 8, 10], id="design-N20"),
    pytest.param(CANARY, 5, [(0, 1), (2, 3), (3, 5)], [1, 2, 2], id="design-N5-drops-10%"),
    pytest.param([C(1), P(50), P(100)], 3, [(0, 1), (1, 2), (2, 3)], [1, 1, 1], id="design-N3"),
    pytest.param(CANARY, 1, [(0, 1)], [1], id="design-N1-one-wave"),
    pytest.param(CANARY, 2, [(0, 1), (3, 2)], [1, 1], id="N2-10%-and-50%-dropped"),
    pytest.param([P(100)], 7, [(0, 7)], [7], id="single-wave"),
    pytest.param([C(2), C(50), P(100)], 7, [(0, 2), (1, 7)], [2, 5], id="count-capped-at-N"),
    pytest.param([C(10), P(10), P(100)], 100, [(0, 10), (2, 100)], [10, 90], id="equal-dropped"),
    pytest.param(
        [C(1), P(1), P(10), P(50), P(100)],
        10_000,
        [(0, 1), (1, 100), (2, 1000), (3, 5000), (4, 10_000)],
        [1, 99, 900, 4000, 5000],
        id="bench-waves-N10000",
    ),
    pytest.param([C(3), P(100)], 0, [], [], id="empty-service-no-waves"),
]


@pytest.mark.parametrize(("waves", "total", "kept", "sizes"), WAVE_TABLE)
def test_kept_waves(
    waves: list[Count | Percent], total: int, kept: list[tuple[int, int]], sizes: list[int]
) -> None:
    """kept_waves gives (spec index, cumulative count) of each wave that adds a target."""
    assert kept_waves(waves, total) == kept


@pytest.mark.parametrize(("waves", "total", "kept", "sizes"), WAVE_TABLE)
def test_cumulative_counts(
    waves: list[Count | Percent], total: int, kept: list[tuple[int, int]], sizes: list[int]
) -> None:
    """cumulative_counts is the count column of kept_waves: targets done after each kept wave."""
    assert cumulative_counts(waves, total) == [count for _, count in kept]


@pytest.mark.parametrize(("waves", "total", "kept", "sizes"), WAVE_TABLE)
def test_wave_sizes(
    waves: list[Count | Percent], total: int, kept: list[tuple[int, int]], sizes: list[int]
) -> None:
    """wave_sizes are the differences of the cumulative counts and sum to N."""
    assert wave_sizes(waves, total) == sizes
    assert sum(sizes) == total


@pytest.mark.parametrize(
    ("waves", "total", "message"),
    [
        pytest.param(
            [C(2), C(5)], 7, "the waves end at 5, not at all 7 targets", id="design-short"
        ),
        pytest.param([P(10), P(50)], 20, "the waves end at 10, not at all 20", id="short-percent"),
        pytest.param([C(5), C(3), P(100)], 10, "waves decrease: 5 then 3", id="counts-decrease"),
        pytest.param([P(50), P(20), P(100)], 10, "waves decrease: 5 then 2", id="percent-decrease"),
        pytest.param([C(5), P(10), P(100)], 40, "waves decrease: 5 then 4", id="mixed-decrease"),
    ],
)
def test_bad_waves_raise(waves: list[Count | Percent], total: int, message: str) -> None:
    """Waves that decrease or stop short of N raise ValueError from every list function."""
    for function in (kept_waves, cumulative_counts, wave_sizes):
        with pytest.raises(ValueError, match=message):
            function(waves, total)


# --------------------------------------------------------------------------- capacity bound


@pytest.mark.parametrize(
    ("bound", "total", "expected"),
    [
        pytest.param(P(10), 20, 2, id="design-10%-of-20"),
        pytest.param(P(10), 5, 1, id="design-10%-of-5-floor-of-1"),
        pytest.param(C(25), 20, 20, id="design-count-capped-at-N"),
        pytest.param(P(25), 10, 2, id="percent-rounds-down"),
        pytest.param(P(33), 3, 1, id="33%-of-3-is-0.99-raised-to-1"),
        pytest.param(P(34), 3, 1, id="34%-of-3-is-1.02-down-to-1"),
        pytest.param(P(29), 100, 29, id="29%-of-100-exact"),
        pytest.param(P(100), 9, 9, id="all-at-once"),
        pytest.param(P(5), 10_000, 500, id="5%-of-10000"),
        pytest.param(C(1), 1, 1, id="one-of-one"),
        pytest.param(C(3), 20, 3, id="count-as-is"),
        pytest.param(C(0), 4, 1, id="zero-count-raised-to-1"),
        pytest.param(P(10), 0, 0, id="empty-service"),
    ],
)
def test_max_unavailable(bound: Count | Percent, total: int, expected: int) -> None:
    """A percentage rounds down and is at least 1; a count is taken as is, capped at N."""
    assert max_unavailable(bound, total) == expected
