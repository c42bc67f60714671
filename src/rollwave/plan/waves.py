"""Wave and capacity arithmetic, in one place, with worked numbers. Pure.

Waves are cumulative checkpoints over a service's N targets to change::

    N   waves                   cumulative        wave sizes
    20  [1, 10%, 50%, 100%]     1, 2, 10, 20      1, 1, 8, 10
    5   [1, 10%, 50%, 100%]     1, 1, 3, 5        1, 2, 2   (10% of 5 = 1 adds nothing: dropped)
    3   [1, 50%, 100%]          1, 2, 3           1, 1, 1
    1   [1, 10%, 50%, 100%]     1                 1
    7   [2, 5]                  -> invalid: the waves end at 5, not 7

A count c means c targets in all (capped at N); a percentage p means
ceil(p x N / 100). ``max_unavailable`` as a percentage rounds down
(Kubernetes' rule) and is at least 1; as a count it is capped at N::

    N    max_unavailable   bound
    20   10%               2
    5    10%               1   (0.5 rounds down to 0, raised to the floor of 1)
    20   25                20
"""

from __future__ import annotations

from collections.abc import Sequence

from rollwave.spec.units import Count, Percent

__all__ = [
    "cumulative_counts",
    "kept_waves",
    "max_unavailable",
    "percent_ceil",
    "percent_floor",
    "wave_count",
    "wave_sizes",
]


def _scaled(percent: float) -> int:
    # Percentages are kept to 1/1000 of a percent so that 10% of 20 is exactly 2.
    return round(percent * 1000)


def percent_ceil(percent: float, total: int) -> int:
    """ceil(percent x total / 100), exactly: ``percent_ceil(10, 20) == 2``, ``percent_ceil(10, 5) == 1``."""
    return -(-_scaled(percent) * total // 100_000)


def percent_floor(percent: float, total: int) -> int:
    """floor(percent x total / 100), exactly: ``percent_floor(10, 5) == 0``."""
    return _scaled(percent) * total // 100_000


def cumulative_counts(waves: Sequence[Count | Percent], total: int) -> list[int]:
    """The number of targets done after each wave, with waves that add nothing dropped.

    Raises ValueError when the counts decrease or do not end at ``total``
    (the spec loader reports both as invalid input before this runs).
    """
    return [count for _, count in kept_waves(waves, total)]


def wave_count(wave: Count | Percent, total: int) -> int:
    """Targets done after one wave entry alone: a count capped at N, or ceil(p x N / 100)."""
    if isinstance(wave, Count):
        return min(wave.value, total)
    return min(percent_ceil(wave.value, total), total)


def kept_waves(waves: Sequence[Count | Percent], total: int) -> list[tuple[int, int]]:
    """``(spec index, cumulative count)`` of each wave that adds at least one target.

    ``kept_waves([1, 10%, 50%, 100%], 5) == [(0, 1), (2, 3), (3, 5)]``: the
    10% entry (index 1) adds nothing for 5 targets and is dropped.
    """
    kept: list[tuple[int, int]] = []
    done = 0
    for index, wave in enumerate(waves):
        count = (
            min(wave.value, total)
            if isinstance(wave, Count)
            else min(percent_ceil(wave.value, total), total)
        )
        if count < done:
            raise ValueError(f"waves decrease: {done} then {count}")
        if count > done:
            kept.append((index, count))
            done = count
    if total and done != total:
        raise ValueError(f"the waves end at {done}, not at all {total} targets")
    return kept


def wave_sizes(waves: Sequence[Count | Percent], total: int) -> list[int]:
    """How many targets each kept wave adds: ``wave_sizes([1, 10%, 50%, 100%], 20) == [1, 1, 8, 10]``."""
    counts = cumulative_counts(waves, total)
    return [count - before for before, count in zip([0, *counts], counts, strict=False)]


def max_unavailable(bound: Count | Percent, total: int) -> int:
    """The capacity bound for ``total`` targets: percentages round down, never below 1."""
    if total <= 0:
        return 0
    value = (
        min(bound.value, total) if isinstance(bound, Count) else percent_floor(bound.value, total)
    )
    return max(1, min(value, total))
