"""The health tracker's rules: consecutive passes, a stable streak, a deadline."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rollwave.health.verdict import (
    HEALTH_DEADLINE_EXCEEDED,
    HEALTHY,
    PROBE_FAILING,
    STABILIZING,
    HealthStatus,
    HealthTracker,
    Verdict,
    format_seconds,
)

P, F = True, False
FAIL_503 = "GET http://127.0.0.1:8001/healthz -> 503"


@dataclass(frozen=True)
class Case:
    successes: int
    min_healthy: float
    deadline: float
    probes: list[tuple[float, bool]]  # (time, passed), started_at = 0
    statuses: str  # one letter per probe: p(ending), h(ealthy), f(ailed)
    reason: str
    message: str


CASES = {
    "one pass is enough when successes=1": Case(
        1, 0, 60, [(0, P)], "h", HEALTHY, "healthy: 1 consecutive pass over 0s"
    ),
    "three consecutive passes": Case(
        3, 0, 60, [(0, P), (1, P), (2, P)], "pph", HEALTHY, "healthy: 3 consecutive passes over 2s"
    ),
    "a failure resets the count": Case(
        3,
        0,
        60,
        [(0, P), (1, P), (2, F), (3, P), (4, P), (5, P)],
        "ppppph",
        HEALTHY,
        "healthy: 3 consecutive passes over 2s",
    ),
    "enough passes but not yet min_healthy": Case(
        2,
        10,
        60,
        [(1, P), (2, P), (5, P), (11, P)],
        "ppph",
        HEALTHY,
        "healthy: 4 consecutive passes over 10s",
    ),
    "a failure restarts the min_healthy streak": Case(
        2,
        10,
        60,
        [(1, P), (9, P), (10, F), (12, P), (21, P), (22, P)],
        "ppppph",
        HEALTHY,
        "healthy: 3 consecutive passes over 10s",
    ),
    "never passing fails at the deadline naming the last failure": Case(
        1,
        0,
        3,
        [(0, F), (1, F), (2, F), (3, F)],
        "pppf",
        HEALTH_DEADLINE_EXCEEDED,
        f"not healthy after 3s: {FAIL_503}",
    ),
    "passing but not long enough at the deadline": Case(
        1,
        10,
        5,
        [(0, F), (1, P), (5, P)],
        "ppf",
        HEALTH_DEADLINE_EXCEEDED,
        f"not healthy after 5s: passing for 4s of the 10s required (last failure: {FAIL_503})",
    ),
    "the observation completing the streak wins over the deadline": Case(
        2, 0, 5, [(4, P), (5, P)], "ph", HEALTHY, "healthy: 2 consecutive passes over 1s"
    ),
    "the deadline counts from started_at, not the first probe": Case(
        1, 0, 1.5, [(1.5, F)], "f", HEALTH_DEADLINE_EXCEEDED, f"not healthy after 1.5s: {FAIL_503}"
    ),
    "a final verdict does not change": Case(
        1,
        0,
        2,
        [(0, F), (2, F), (3, P)],
        "pff",
        HEALTH_DEADLINE_EXCEEDED,
        f"not healthy after 2s: {FAIL_503}",
    ),
}

LETTER = {"p": HealthStatus.PENDING, "h": HealthStatus.HEALTHY, "f": HealthStatus.FAILED}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tracker_rules(case: Case) -> None:
    """Each observation gets the status the rules give it, and the final verdict says why."""
    tracker = HealthTracker(case.successes, case.min_healthy, case.deadline, started_at=0)
    verdicts = [tracker.observe(t, ok, "ok" if ok else FAIL_503) for t, ok in case.probes]
    assert [v.status for v in verdicts] == [LETTER[c] for c in case.statuses]
    assert (verdicts[-1].reason, verdicts[-1].message) == (case.reason, case.message)


@pytest.mark.parametrize(
    ("ok", "reason"), [(True, STABILIZING), (False, PROBE_FAILING)], ids=["passing", "failing"]
)
def test_pending_reason(ok: bool, reason: str) -> None:
    """A pending verdict tells a failing probe from a passing one that is not yet stable."""
    tracker = HealthTracker(successes=2, min_healthy=0, deadline=60, started_at=0)
    verdict = tracker.observe(1, ok, "detail")
    assert verdict == Verdict(HealthStatus.PENDING, reason, verdict.message)
    assert not verdict.done


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"successes": 0}, "successes must be at least 1, not 0"),
        ({"min_healthy": -1}, "min_healthy must not be negative, not -1"),
        ({"deadline": 0}, "deadline must be positive, not 0"),
    ],
    ids=["successes", "min_healthy", "deadline"],
)
def test_invalid_parameters(kwargs: dict[str, float], text: str) -> None:
    """Nonsensical parameters are refused when the tracker is built."""
    params = {"successes": 1, "min_healthy": 0.0, "deadline": 1.0, "started_at": 0.0} | kwargs
    with pytest.raises(ValueError, match=text):
        HealthTracker(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"), [(60.0, "60s"), (1.5, "1.5s"), (0.25, "0.25s"), (0, "0s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    """Durations in messages read as people write them."""
    assert format_seconds(seconds) == text
