"""Freeze windows and the expected duration of a plan. Pure: time comes in as an argument.

A freeze is either a cron expression with a duration (``0 17 * * FRI`` for
64h: every weekend) or a fixed window (``start``/``end``). A deployment may
not start while a window is open; ``plan`` warns about the next window that
overlaps the time the plan is expected to take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from rollwave.plan.planner import Plan
from rollwave.spec.model import FreezeSpec, Spec

__all__ = ["FreezeWindow", "active_freeze", "estimate_duration", "next_freeze", "windows"]


@dataclass(frozen=True)
class FreezeWindow:
    start: float  # epoch seconds
    end: float
    reason: str
    index: int  # position in the spec's freeze list

    def to_dict(self) -> dict[str, object]:
        return {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "reason": self.reason,
            "freeze": self.index + 1,
        }


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def windows(freezes: Sequence[FreezeSpec], start: float, end: float) -> list[FreezeWindow]:
    """Every freeze window that overlaps ``[start, end)``, by start time."""
    found: list[FreezeWindow] = []
    for index, freeze in enumerate(freezes):
        if freeze.cron is None:
            assert freeze.start is not None
            assert freeze.end is not None
            a, b = _epoch(freeze.start), _epoch(freeze.end)
            if a < end and b > start:
                found.append(FreezeWindow(a, b, freeze.reason, index))
            continue
        assert freeze.duration is not None
        zone = ZoneInfo(freeze.timezone)
        # The last firing at or before `start` may still be open; a microsecond past `start`
        # makes a firing at exactly `start` count as that one. Later firings follow it.
        cursor = croniter(
            freeze.cron, datetime.fromtimestamp(start, zone) + timedelta(microseconds=1)
        )
        previous = float(cursor.get_prev(float))
        if previous + freeze.duration > start:
            found.append(FreezeWindow(previous, previous + freeze.duration, freeze.reason, index))
        while True:
            begin = float(cursor.get_next(float))
            if begin >= end:
                break
            found.append(FreezeWindow(begin, begin + freeze.duration, freeze.reason, index))
    return sorted(found, key=lambda w: (w.start, w.index))


def active_freeze(freezes: Sequence[FreezeSpec], now: float) -> FreezeWindow | None:
    """The open window that ends last (the one that decides "until when"), or None."""
    open_now = [w for w in windows(freezes, now, now + 1e-6) if w.start <= now < w.end]
    return max(open_now, key=lambda w: w.end) if open_now else None


def next_freeze(freezes: Sequence[FreezeSpec], now: float, duration: float) -> FreezeWindow | None:
    """The first window that overlaps a plan starting ``now`` and lasting ``duration`` seconds."""
    found = windows(freezes, now, now + max(duration, 1.0))
    return found[0] if found else None


def estimate_duration(plan: Plan, spec: Spec) -> float:
    """A rough upper estimate of how long the plan takes, in seconds.

    Per target: the drain timeout, ``successes`` health intervals and
    ``min_healthy``; per wave: ceil(targets / max_unavailable) such rounds,
    plus the bake. Services of one stage run together under ``parallel``.
    """
    per_service: dict[str, float] = {}
    for service in plan.services:
        config = spec.services[service.name]
        drain = config.traffic.drain if config.traffic else 0.0
        health = config.health
        target = (
            drain
            + 2.0
            + ((health.interval * health.successes + health.min_healthy) if health else 0.0)
        )
        total = 0.0
        for wave in service.waves:
            rounds = math.ceil(len(wave.targets) / max(1, wave.max_unavailable))
            total += rounds * target + wave.bake
        per_service[service.name] = total
    if plan.order == "parallel":
        stages: dict[int, float] = {}
        for service in plan.services:
            stages[service.stage] = max(stages.get(service.stage, 0.0), per_service[service.name])
        return sum(stages.values())
    return sum(per_service.values())
