"""When is a target healthy: consecutive successes, a stable streak, a deadline.  [pure]

A :class:`HealthTracker` is fed one observation at a time (the time it was
made, pass or fail, and the prober's detail) and answers with a
:class:`Verdict`. It does no I/O and reads no clock: ``now`` comes in with
each observation, so the rules are tested with plain numbers.

The rules, with ``successes=3, min_healthy=10, deadline=60, started_at=0``
and one probe a second::

    t    probe   streak  passing since  verdict
    0    fail    0       -              pending  (ProbeFailing)
    1    pass    1       1              pending  (Stabilizing)
    2    pass    2       1              pending  (Stabilizing)
    3    pass    3       1              pending  3 passes, but passing 2s < 10s
    4    fail    0       -              pending  the streak starts over
    5    pass    1       5              pending
    ...
    15   pass    11      5              healthy  11 >= 3 passes and 15 - 5 >= 10s

    and without a streak long enough by t = 60: failed (HealthDeadlineExceeded),
    the message naming the last failure, e.g.
    ``not healthy after 60s: GET http://127.0.0.1:8001/healthz -> 503``.

An observation that completes the streak wins over the deadline it lands
on; once a verdict is healthy or failed it no longer changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "HEALTHY",
    "HEALTH_DEADLINE_EXCEEDED",
    "PROBE_FAILING",
    "STABILIZING",
    "HealthStatus",
    "HealthTracker",
    "Verdict",
    "format_seconds",
]

# Reason codes: machines match on these, people read the message.
HEALTHY = "Healthy"
HEALTH_DEADLINE_EXCEEDED = "HealthDeadlineExceeded"
PROBE_FAILING = "ProbeFailing"  # pending: the last probe failed (or none ran yet)
STABILIZING = "Stabilizing"  # pending: passing, but not yet long or often enough


class HealthStatus(enum.StrEnum):
    PENDING = "pending"
    HEALTHY = "healthy"
    FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """The tracker's answer after one observation."""

    status: HealthStatus
    reason: str
    message: str

    @property
    def done(self) -> bool:
        """True once the verdict is final (healthy or failed)."""
        return self.status is not HealthStatus.PENDING


def format_seconds(seconds: float) -> str:
    """``60.0 -> '60s'``, ``1.5 -> '1.5s'``, ``0.25 -> '0.25s'``: durations in messages."""
    text = f"{seconds:.2f}".rstrip("0").rstrip(".")
    return f"{text}s"


class HealthTracker:
    """Consecutive passes plus a minimum stable time, before a deadline.

    ``successes``: consecutive passing probes needed (at least 1).
    ``min_healthy``: seconds the target must have been passing without a
    single failure, counted from the first pass of the current streak.
    ``deadline``: seconds after ``started_at`` by which the target must be
    healthy, else it has failed.
    """

    def __init__(
        self, successes: int, min_healthy: float, deadline: float, started_at: float
    ) -> None:
        if successes < 1:
            raise ValueError(f"successes must be at least 1, not {successes}")
        if min_healthy < 0:
            raise ValueError(f"min_healthy must not be negative, not {min_healthy}")
        if deadline <= 0:
            raise ValueError(f"deadline must be positive, not {deadline}")
        self.successes = successes
        self.min_healthy = min_healthy
        self.deadline = deadline
        self.started_at = started_at
        self._streak = 0
        self._streak_since: float | None = None
        self._last_failure = ""
        self._last_ok = False
        self._final: Verdict | None = None

    @property
    def streak(self) -> int:
        """Consecutive passes so far."""
        return self._streak

    def observe(self, now: float, ok: bool, detail: str) -> Verdict:
        """Record one probe made at ``now`` and judge the target."""
        if self._final is not None:
            return self._final
        self._last_ok = ok
        if ok:
            if self._streak == 0:
                self._streak_since = now
            self._streak += 1
        else:
            self._streak = 0
            self._streak_since = None
            self._last_failure = detail

        if ok and self._streak >= self.successes and self._passing_for(now) >= self.min_healthy:
            self._final = Verdict(
                HealthStatus.HEALTHY,
                HEALTHY,
                f"healthy: {_passes(self._streak)} over {format_seconds(self._passing_for(now))}",
            )
            return self._final

        if now - self.started_at >= self.deadline:
            self._final = Verdict(
                HealthStatus.FAILED,
                HEALTH_DEADLINE_EXCEEDED,
                f"not healthy after {format_seconds(self.deadline)}: {self._why_not(now)}",
            )
            return self._final

        reason = STABILIZING if ok else PROBE_FAILING
        return Verdict(HealthStatus.PENDING, reason, self._why_not(now))

    def _passing_for(self, now: float) -> float:
        if self._streak_since is None:
            return 0.0
        return max(0.0, now - self._streak_since)

    def _why_not(self, now: float) -> str:
        if not self._last_ok:
            return self._last_failure or "no probe passed"
        if self._streak < self.successes:
            text = f"{self._streak} of {self.successes} consecutive passes"
        else:
            text = (
                f"passing for {format_seconds(self._passing_for(now))} "
                f"of the {format_seconds(self.min_healthy)} required"
            )
        return text + (f" (last failure: {self._last_failure})" if self._last_failure else "")


def _passes(count: int) -> str:
    return f"{count} consecutive pass" if count == 1 else f"{count} consecutive passes"
