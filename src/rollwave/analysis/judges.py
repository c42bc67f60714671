"""Judges: is the new version fit to go on?  [pure]

Two judges, fed numbers, answering with verdicts that carry a status, a
reason code (machines match on it) and a message (people read it). No
I/O, no clock, no randomness, no logging: measurements come in, verdicts
go out.

**Threshold** (:class:`ThresholdJudge`): one measurement per interval for
one check, ``None`` when the source had no data. With ``max: 0.01,
failure_limit: 2, inconclusive_limit: 3, inconclusive: fail``::

    value   failures  no-data  status   reason
    0.004   0         0        running  WithinBounds
    0.020   1         0        running  ThresholdExceeded   1 of 2: one bad interval is tolerated
    0.003   0         0        running  WithinBounds        a pass resets the count
    None    0         1        inconclusive  NoData         still judging, nothing to judge now
    0.030   1         0        running  ThresholdExceeded   a conclusive value ends a no-data streak
    None    1         1        inconclusive  NoData         no data neither resets nor adds a failure
    0.050   2         0        failed   ThresholdExceeded   2 consecutive failures

    and three ``None`` in a row: ``inconclusive`` decides — fail: failed,
    pause: pause (an operator decides), pass: the streak is forgiven and
    the check goes on judging (inconclusive, reason InconclusivePassed).

``running`` and ``inconclusive`` are not final (the check goes on);
``passed``, ``failed`` and ``pause`` are (:attr:`CheckStatus.final`).

Bounds are inclusive (``value == max`` passes); NaN counts as no data.
Once failed or paused a judge's verdict no longer changes. At the end of
the bake, :meth:`ThresholdJudge.finish` turns a running check into
passed, unless it never had a conclusive measurement: then the
``inconclusive`` outcome decides (fail → failed, pause → pause, pass →
passed).

**Canary** (:func:`canary_judge`): for each metric, the canary's samples
against the baseline's, a two-sided Mann-Whitney U test (Kayenta's
approach). Per metric::

    fewer than min_samples on either side       nodata
    p >= 1 - confidence                          pass  (no difference shown)
    different, canary higher                     high  (pass when higher is harmless)
    different, canary lower                      low   (pass when lower is harmless)

The direction of harm comes from ``directions`` (``increase``: higher is
worse; ``decrease``: lower is worse; ``either``), else from the name:
``latency*`` and ``error*`` → increase, ``throughput`` and
``request_rate`` → decrease, anything else → either. The score is
100 × passed / judged (nodata metrics are not judged): with 4 metrics, one
nodata and one high latency, 100 × 2/3 = 66.7. The verdict is ``pass``
when score ≥ pass_score, ``marginal`` when ≥ marginal, else ``fail``;
``inconclusive`` (no score) when every metric is nodata.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

from rollwave.spec.model import AnalysisCheck

__all__ = [
    "CANARY_FAILED",
    "CANARY_INCONCLUSIVE",
    "CANARY_MARGINAL",
    "CANARY_PASSED",
    "COMPLETED",
    "DIRECTIONS",
    "INCONCLUSIVE",
    "INCONCLUSIVE_PASSED",
    "NO_DATA",
    "THRESHOLD_EXCEEDED",
    "WITHIN_BOUNDS",
    "CanaryOutcome",
    "CanaryVerdict",
    "CheckStatus",
    "CheckVerdict",
    "MetricClass",
    "MetricResult",
    "ThresholdJudge",
    "canary_judge",
    "default_direction",
]

# Reason codes of a threshold check.
WITHIN_BOUNDS = "WithinBounds"
THRESHOLD_EXCEEDED = "ThresholdExceeded"
NO_DATA = "NoData"
INCONCLUSIVE = "Inconclusive"
INCONCLUSIVE_PASSED = "InconclusivePassed"
COMPLETED = "Completed"

# Reason codes of a canary verdict.
CANARY_PASSED = "CanaryPassed"
CANARY_MARGINAL = "CanaryMarginal"
CANARY_FAILED = "CanaryFailed"
CANARY_INCONCLUSIVE = "CanaryInconclusive"

DIRECTIONS = ("increase", "decrease", "either")


def _num(value: float) -> str:
    return f"{value:.4g}"


# ------------------------------------------------------------------------ threshold


class CheckStatus(enum.StrEnum):
    RUNNING = "running"  # still judging; the last interval was measured
    INCONCLUSIVE = "inconclusive"  # still judging; the last interval had no data
    PASSED = "passed"  # the bake ended and the check held (from finish())
    FAILED = "failed"
    PAUSE = "pause"  # inconclusive too long, and the check asks an operator to decide

    @property
    def final(self) -> bool:
        """True once the verdict no longer changes: passed, failed or pause."""
        return self in (CheckStatus.PASSED, CheckStatus.FAILED, CheckStatus.PAUSE)


@dataclass(frozen=True)
class CheckVerdict:
    """A check's state after one measurement (or at the end of the bake)."""

    check: str
    status: CheckStatus
    reason: str
    message: str
    value: float | None
    failures: int  # consecutive bound violations
    no_data: int  # consecutive intervals without data


class ThresholdJudge:
    """Judge one check's measurements against its ``max``/``min`` (see the module docstring)."""

    def __init__(self, check: AnalysisCheck) -> None:
        self.check = check
        self._failures = 0
        self._no_data = 0
        self._measured = 0
        self._final: CheckVerdict | None = None

    def observe(self, value: float | None) -> CheckVerdict:
        """Judge one interval's measurement; None (or NaN) is an interval without data."""
        if self._final is not None:
            return self._final
        if value is None or math.isnan(value):
            return self._observe_no_data()
        self._measured += 1
        self._no_data = 0
        violation = self._violation(value)
        if violation is None:
            self._failures = 0
            return self._verdict(
                CheckStatus.RUNNING,
                WITHIN_BOUNDS,
                f"check {self.check.name}: {_num(value)} within {self._bounds()}",
                value,
            )
        self._failures += 1
        limit = self.check.failure_limit
        if self._failures >= limit:
            return self._decide(
                CheckStatus.FAILED,
                THRESHOLD_EXCEEDED,
                f"check {self.check.name}: {violation}"
                + (f" ({self._failures} consecutive intervals)" if limit > 1 else ""),
                value,
            )
        return self._verdict(
            CheckStatus.RUNNING,
            THRESHOLD_EXCEEDED,
            f"check {self.check.name}: {violation} ({self._failures} of {limit} "
            "consecutive failures allowed before it fails)",
            value,
        )

    def finish(self) -> CheckVerdict:
        """The bake is over: a check still judging has passed, unless it never measured anything."""
        if self._final is not None:
            return self._final
        if self._measured == 0:
            return self._inconclusive("no data in the whole bake")
        return self._decide(
            CheckStatus.PASSED,
            COMPLETED,
            f"check {self.check.name}: held {self._bounds()} for the whole bake",
            None,
        )

    def _observe_no_data(self) -> CheckVerdict:
        self._no_data += 1
        limit = self.check.inconclusive_limit
        if self._no_data < limit:
            return self._verdict(
                CheckStatus.INCONCLUSIVE,
                NO_DATA,
                f"check {self.check.name}: no data ({self._no_data} of {limit} "
                "consecutive intervals allowed)",
                None,
            )
        if self.check.inconclusive == "pass":
            self._no_data = 0
            return self._verdict(
                CheckStatus.INCONCLUSIVE,
                INCONCLUSIVE_PASSED,
                f"check {self.check.name}: no data for {limit} consecutive intervals; "
                "inconclusive: pass lets it go on",
                None,
                no_data=limit,
            )
        return self._inconclusive(f"no data for {limit} consecutive intervals")

    def _inconclusive(self, why: str) -> CheckVerdict:
        outcome = self.check.inconclusive
        status = {
            "fail": CheckStatus.FAILED,
            "pause": CheckStatus.PAUSE,
            "pass": CheckStatus.PASSED,
        }[outcome]
        return self._decide(
            status,
            INCONCLUSIVE,
            f"check {self.check.name}: {why} (inconclusive: {outcome})",
            None,
        )

    def _violation(self, value: float) -> str | None:
        if self.check.max is not None and value > self.check.max:
            return f"{_num(value)} above max {_num(self.check.max)}"
        if self.check.min is not None and value < self.check.min:
            return f"{_num(value)} below min {_num(self.check.min)}"
        return None

    def _bounds(self) -> str:
        parts = []
        if self.check.min is not None:
            parts.append(f"min {_num(self.check.min)}")
        if self.check.max is not None:
            parts.append(f"max {_num(self.check.max)}")
        return " and ".join(parts)

    def _verdict(
        self,
        status: CheckStatus,
        reason: str,
        message: str,
        value: float | None,
        *,
        no_data: int | None = None,
    ) -> CheckVerdict:
        return CheckVerdict(
            check=self.check.name,
            status=status,
            reason=reason,
            message=message,
            value=value,
            failures=self._failures,
            no_data=self._no_data if no_data is None else no_data,
        )

    def _decide(
        self, status: CheckStatus, reason: str, message: str, value: float | None
    ) -> CheckVerdict:
        self._final = self._verdict(status, reason, message, value)
        return self._final


# --------------------------------------------------------------------------- canary


class MetricClass(enum.StrEnum):
    PASS = "pass"  # noqa: S105  (a verdict, not a password)
    HIGH = "high"
    LOW = "low"
    NODATA = "nodata"


class CanaryOutcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105  (a verdict, not a password)
    MARGINAL = "marginal"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class MetricResult:
    """One metric's comparison: its class, the test's p-value, medians and sample counts.

    ``shift`` is the difference seen (``high``, ``low`` or ``none``), even
    when harmless; ``classification`` is ``pass`` for a harmless shift.
    """

    metric: str
    classification: MetricClass
    direction: str
    shift: str
    p_value: float | None
    canary_median: float | None
    baseline_median: float | None
    canary_samples: int
    baseline_samples: int
    message: str


@dataclass(frozen=True)
class CanaryVerdict:
    outcome: CanaryOutcome
    score: float | None
    reason: str
    message: str
    metrics: tuple[MetricResult, ...]


def default_direction(metric: str) -> str:
    """``increase`` for latency* and error*, ``decrease`` for throughput and request_rate, else ``either``."""
    name = metric.lower()
    if name.startswith(("latency", "error")):
        return "increase"
    if name in ("throughput", "request_rate"):
        return "decrease"
    return "either"


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _judge_metric(
    metric: str,
    canary: Sequence[float],
    baseline: Sequence[float],
    direction: str,
    alpha: float,
    min_samples: int,
) -> MetricResult:
    c = [float(v) for v in canary if math.isfinite(v)]
    b = [float(v) for v in baseline if math.isfinite(v)]
    c_median, b_median = _median(c), _median(b)

    def result(cls: MetricClass, shift: str, p: float | None, message: str) -> MetricResult:
        return MetricResult(
            metric, cls, direction, shift, p, c_median, b_median, len(c), len(b), message
        )

    if len(c) < min_samples or len(b) < min_samples:
        return result(
            MetricClass.NODATA,
            "none",
            None,
            f"{metric}: {len(c)} canary and {len(b)} baseline samples, "
            f"{min_samples} needed on each side",
        )
    test = mannwhitneyu(c, b, alternative="two-sided")
    p = float(test.pvalue)
    medians = f"canary median {_num(c_median or 0.0)} vs baseline {_num(b_median or 0.0)}"
    if math.isnan(p) or p >= alpha:
        return result(
            MetricClass.PASS, "none", p, f"{metric}: no difference ({medians}, p={p:.3g})"
        )
    # U counts the pairs where the canary's value is the larger: above half of all pairs, it runs high.
    higher = float(test.statistic) > len(c) * len(b) / 2
    shift = "high" if higher else "low"
    harmful = direction == "either" or (direction == "increase") == higher
    if not harmful:
        return result(
            MetricClass.PASS,
            shift,
            p,
            f"{metric}: {shift}er but harmless ({medians}, p={p:.3g}, {direction} is worse)",
        )
    cls = MetricClass.HIGH if higher else MetricClass.LOW
    return result(cls, shift, p, f"{metric}: {shift} ({medians}, p={p:.3g} < {alpha:.3g})")


def canary_judge(
    canary: Mapping[str, Sequence[float]],
    baseline: Mapping[str, Sequence[float]],
    *,
    directions: Mapping[str, str] | None = None,
    confidence: float = 0.95,
    pass_score: float = 95.0,
    marginal: float = 75.0,
    min_samples: int = 10,
) -> CanaryVerdict:
    """Compare the canary's samples with the baseline's, metric by metric (see the module docstring).

    The metrics judged are those of ``canary`` then those only in
    ``baseline``; a metric missing on one side is nodata. Non-finite samples
    are dropped before counting.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, not {min_samples}")
    directions = directions or {}
    for metric, direction in directions.items():
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction of {metric} must be one of {', '.join(DIRECTIONS)}, not {direction!r}"
            )
    alpha = 1 - confidence
    names = list(dict.fromkeys([*canary, *baseline]))
    results = tuple(
        _judge_metric(
            name,
            canary.get(name, ()),
            baseline.get(name, ()),
            directions.get(name, default_direction(name)),
            alpha,
            min_samples,
        )
        for name in names
    )
    judged = [r for r in results if r.classification is not MetricClass.NODATA]
    if not judged:
        return CanaryVerdict(
            CanaryOutcome.INCONCLUSIVE,
            None,
            CANARY_INCONCLUSIVE,
            "canary: no metric had enough samples to judge"
            + (f" ({results[0].message})" if len(results) == 1 else ""),
            results,
        )
    passed = sum(1 for r in judged if r.classification is MetricClass.PASS)
    score = 100.0 * passed / len(judged)
    failing = [r.metric for r in judged if r.classification is not MetricClass.PASS]
    summary = f"canary score {score:.1f} ({passed} of {len(judged)} metrics pass"
    summary += f"; failing: {', '.join(failing)})" if failing else ")"
    if score >= pass_score:
        return CanaryVerdict(
            CanaryOutcome.PASS, score, CANARY_PASSED, f"{summary} >= pass {pass_score:g}", results
        )
    if score >= marginal:
        return CanaryVerdict(
            CanaryOutcome.MARGINAL,
            score,
            CANARY_MARGINAL,
            f"{summary}: below pass {pass_score:g}, at least marginal {marginal:g}",
            results,
        )
    return CanaryVerdict(
        CanaryOutcome.FAIL, score, CANARY_FAILED, f"{summary} < marginal {marginal:g}", results
    )
