"""Freeze windows and the expected duration of a plan: pure functions of the time given."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rollwave.plan.freeze import active_freeze, next_freeze, windows
from rollwave.spec.model import FreezeSpec

WEEKEND = FreezeSpec(cron="0 17 * * FRI", duration=64 * 3600, reason="weekend freeze")
YEAR_END = FreezeSpec(
    start=datetime(2026, 12, 23, tzinfo=UTC),
    end=datetime(2027, 1, 4, tzinfo=UTC),
    reason="year end",
)


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "expected_end"),
    [
        pytest.param(at(2026, 11, 27, 16, 59), None, id="friday-before-17h"),
        pytest.param(at(2026, 11, 27, 17, 0), at(2026, 11, 30, 9, 0), id="friday-17h-sharp"),
        pytest.param(at(2026, 11, 29, 12, 0), at(2026, 11, 30, 9, 0), id="sunday"),
        pytest.param(at(2026, 11, 30, 9, 0), None, id="monday-9h-ends"),
        pytest.param(at(2026, 12, 25, 12, 0), at(2027, 1, 4), id="christmas-in-fixed-window"),
    ],
)
def test_active_freeze(now: float, expected_end: float | None) -> None:
    """A cron window lasts its duration from each firing; a fixed window from start to end."""
    window = active_freeze([WEEKEND, YEAR_END], now)
    assert (window.end if window else None) == expected_end


def test_next_freeze_overlapping_a_plan() -> None:
    """The first window that begins before a plan would end is the one plan warns about."""
    wednesday = at(2026, 11, 25, 12, 0)
    assert next_freeze([WEEKEND], wednesday, 3600) is None
    upcoming = next_freeze([WEEKEND], wednesday, 3 * 86400)
    assert upcoming is not None
    assert upcoming.start == at(2026, 11, 27, 17, 0)
    assert upcoming.reason == "weekend freeze"


def test_windows_in_a_span_are_ordered() -> None:
    """Every window overlapping a span is listed once, by start."""
    found = windows([YEAR_END, WEEKEND], at(2026, 12, 1), at(2026, 12, 31))
    starts = [datetime.fromtimestamp(w.start, UTC).date().isoformat() for w in found]
    assert starts == ["2026-12-04", "2026-12-11", "2026-12-18", "2026-12-23", "2026-12-25"]


def test_timezone_of_a_cron_freeze() -> None:
    """A cron freeze fires in its own time zone."""
    berlin = FreezeSpec(cron="0 17 * * FRI", duration=3600, reason="x", timezone="Europe/Berlin")
    window = active_freeze([berlin], at(2026, 11, 27, 16, 30))  # 17:30 in Berlin (UTC+1)
    assert window is not None
    assert window.start == at(2026, 11, 27, 16, 0)
