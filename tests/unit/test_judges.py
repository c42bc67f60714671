"""Judges: threshold checks over intervals, and canary against baseline (Mann-Whitney, Kayenta scoring)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pytest

from rollwave.analysis.judges import (
    CANARY_FAILED,
    CANARY_INCONCLUSIVE,
    CANARY_MARGINAL,
    CANARY_PASSED,
    COMPLETED,
    INCONCLUSIVE,
    INCONCLUSIVE_PASSED,
    NO_DATA,
    THRESHOLD_EXCEEDED,
    WITHIN_BOUNDS,
    CanaryOutcome,
    CheckStatus,
    MetricClass,
    ThresholdJudge,
    canary_judge,
    default_direction,
)
from rollwave.spec.model import AnalysisCheck, CanarySpec

# One letter per interval: running, inconclusive, failed, passed, pause (z).
LETTER = {
    CheckStatus.RUNNING: "r",
    CheckStatus.INCONCLUSIVE: "i",
    CheckStatus.FAILED: "f",
    CheckStatus.PASSED: "P",
    CheckStatus.PAUSE: "z",
}
NAN = math.nan


def check(
    *,
    upper: float | None = 0.01,
    lower: float | None = None,
    failure_limit: int = 1,
    inconclusive_limit: int = 3,
    inconclusive: Literal["fail", "pass", "pause"] = "fail",
) -> AnalysisCheck:
    return AnalysisCheck(
        name="error-rate",
        prometheus="http://127.0.0.1:9090",
        query="q",
        max=upper,
        min=lower,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        inconclusive=inconclusive,
    )


@dataclass(frozen=True)
class Case:
    check: AnalysisCheck
    values: Sequence[float | None]
    statuses: str  # one letter per value
    reason: str  # of the last verdict
    message: str  # of the last verdict


THRESHOLD_CASES = {
    "within bounds keeps running": Case(
        check(), [0.001, 0.01], "rr", WITHIN_BOUNDS, "check error-rate: 0.01 within max 0.01"
    ),
    "one failure fails at failure_limit 1": Case(
        check(), [0.02], "f", THRESHOLD_EXCEEDED, "check error-rate: 0.02 above max 0.01"
    ),
    "consecutive failures up to the limit": Case(
        check(failure_limit=3),
        [0.02, 0.03, 0.05],
        "rrf",
        THRESHOLD_EXCEEDED,
        "check error-rate: 0.05 above max 0.01 (3 consecutive intervals)",
    ),
    "a failure below the limit says how many are allowed": Case(
        check(failure_limit=3),
        [0.02],
        "r",
        THRESHOLD_EXCEEDED,
        "check error-rate: 0.02 above max 0.01 (1 of 3 consecutive failures allowed before it fails)",
    ),
    "a pass resets the failure count": Case(
        check(failure_limit=2),
        [0.02, 0.005, 0.02, 0.005, 0.02],
        "rrrrr",
        THRESHOLD_EXCEEDED,
        "check error-rate: 0.02 above max 0.01 (1 of 2 consecutive failures allowed before it fails)",
    ),
    "no data neither resets nor adds a failure": Case(
        check(failure_limit=2),
        [0.02, None, 0.03],
        "rif",
        THRESHOLD_EXCEEDED,
        "check error-rate: 0.03 above max 0.01 (2 consecutive intervals)",
    ),
    "below min fails": Case(
        check(upper=None, lower=10.0),
        [12.0, 9.5],
        "rf",
        THRESHOLD_EXCEEDED,
        "check error-rate: 9.5 below min 10",
    ),
    "min and max both hold": Case(
        check(upper=20.0, lower=10.0),
        [10.0, 20.0],
        "rr",
        WITHIN_BOUNDS,
        "check error-rate: 20 within min 10 and max 20",
    ),
    "infinity is a value, above any max": Case(
        check(), [math.inf], "f", THRESHOLD_EXCEEDED, "check error-rate: inf above max 0.01"
    ),
    "NaN is no data": Case(
        check(),
        [NAN],
        "i",
        NO_DATA,
        "check error-rate: no data (1 of 3 consecutive intervals allowed)",
    ),
    "inconclusive limit with fail": Case(
        check(inconclusive_limit=2, inconclusive="fail"),
        [None, None],
        "if",
        INCONCLUSIVE,
        "check error-rate: no data for 2 consecutive intervals (inconclusive: fail)",
    ),
    "inconclusive limit with pause": Case(
        check(inconclusive_limit=2, inconclusive="pause"),
        [None, None],
        "iz",
        INCONCLUSIVE,
        "check error-rate: no data for 2 consecutive intervals (inconclusive: pause)",
    ),
    "inconclusive limit with pass goes on judging": Case(
        check(inconclusive_limit=2, inconclusive="pass"),
        [None, None, None, 0.02],
        "iiif",
        THRESHOLD_EXCEEDED,
        "check error-rate: 0.02 above max 0.01",
    ),
    "inconclusive pass names the forgiven streak": Case(
        check(inconclusive_limit=2, inconclusive="pass"),
        [None, None],
        "ii",
        INCONCLUSIVE_PASSED,
        "check error-rate: no data for 2 consecutive intervals; inconclusive: pass lets it go on",
    ),
    "a measurement breaks a no-data streak": Case(
        check(inconclusive_limit=2),
        [None, 0.001, None, 0.001, None],
        "iriri",
        NO_DATA,
        "check error-rate: no data (1 of 2 consecutive intervals allowed)",
    ),
    "a failed check stays failed": Case(
        check(), [0.5, 0.0, None], "fff", THRESHOLD_EXCEEDED, "check error-rate: 0.5 above max 0.01"
    ),
    "a paused check stays paused": Case(
        check(inconclusive_limit=1, inconclusive="pause"),
        [None, 0.0],
        "zz",
        INCONCLUSIVE,
        "check error-rate: no data for 1 consecutive intervals (inconclusive: pause)",
    ),
}


@pytest.mark.parametrize("case", THRESHOLD_CASES.values(), ids=THRESHOLD_CASES.keys())
def test_threshold_judge(case: Case) -> None:
    """Each interval's verdict follows the bounds, the failure limit and the inconclusive limit and outcome."""
    judge = ThresholdJudge(case.check)
    verdicts = [judge.observe(v) for v in case.values]
    assert "".join(LETTER[v.status] for v in verdicts) == case.statuses
    assert verdicts[-1].reason == case.reason
    assert verdicts[-1].message == case.message
    assert verdicts[-1].check == "error-rate"


def test_threshold_verdict_counts_streaks() -> None:
    """A verdict carries the value and the current failure and no-data streaks."""
    judge = ThresholdJudge(check(failure_limit=3, inconclusive_limit=3))
    first = judge.observe(0.02)
    assert (first.value, first.failures, first.no_data) == (0.02, 1, 0)
    second = judge.observe(None)
    assert (second.value, second.failures, second.no_data) == (None, 1, 1)
    third = judge.observe(0.0)
    assert (third.value, third.failures, third.no_data) == (0.0, 0, 0)


@pytest.mark.parametrize(
    ("values", "inconclusive", "status", "reason"),
    [
        pytest.param(
            [0.001], "fail", CheckStatus.PASSED, COMPLETED, id="measured and held: passed"
        ),
        pytest.param(
            [0.02],
            "fail",
            CheckStatus.FAILED,
            THRESHOLD_EXCEEDED,
            id="already failed: stays failed",
        ),
        pytest.param(
            [None, 0.001, None], "fail", CheckStatus.PASSED, COMPLETED, id="some data held: passed"
        ),
        pytest.param([None], "fail", CheckStatus.FAILED, INCONCLUSIVE, id="never measured, fail"),
        pytest.param([], "pause", CheckStatus.PAUSE, INCONCLUSIVE, id="never measured, pause"),
        pytest.param([None], "pass", CheckStatus.PASSED, INCONCLUSIVE, id="never measured, pass"),
    ],
)
def test_threshold_finish(
    values: list[float | None],
    inconclusive: Literal["fail", "pass", "pause"],
    status: CheckStatus,
    reason: str,
) -> None:
    """At the end of the bake a check still judging passes if it measured anything, else its inconclusive outcome decides."""
    judge = ThresholdJudge(check(inconclusive=inconclusive))
    for value in values:
        judge.observe(value)
    verdict = judge.finish()
    assert (verdict.status, verdict.reason) == (status, reason)
    assert verdict.status.final


def test_final_statuses() -> None:
    """Only passed, failed and pause are final; running and inconclusive go on."""
    assert {s for s in CheckStatus if s.final} == {
        CheckStatus.PASSED,
        CheckStatus.FAILED,
        CheckStatus.PAUSE,
    }


# --------------------------------------------------------------------------- canary


def gauss(seed: int, mean: float, sd: float, n: int = 30) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def judge(
    canary: dict[str, list[float]],
    baseline: dict[str, list[float]],
    **kwargs: object,
) -> tuple[CanaryOutcome, float | None, dict[str, MetricClass]]:
    verdict = canary_judge(canary, baseline, **kwargs)  # type: ignore[arg-type]
    return verdict.outcome, verdict.score, {m.metric: m.classification for m in verdict.metrics}


def test_identical_distributions_pass() -> None:
    """Samples drawn from the same distributions on both sides pass every metric: score 100."""
    canary = {
        "latency_p99": gauss(1, 0.120, 0.015),
        "error_rate": gauss(2, 0.010, 0.002),
        "request_rate": gauss(3, 50.0, 5.0),
    }
    baseline = {
        "latency_p99": gauss(11, 0.120, 0.015),
        "error_rate": gauss(12, 0.010, 0.002),
        "request_rate": gauss(13, 50.0, 5.0),
    }
    verdict = canary_judge(
        canary, baseline, directions={}, confidence=0.95, pass_score=95, marginal=75, min_samples=10
    )
    assert verdict.outcome is CanaryOutcome.PASS
    assert verdict.reason == CANARY_PASSED
    assert verdict.score == 100.0
    assert {m.classification for m in verdict.metrics} == {MetricClass.PASS}
    assert verdict.message == "canary score 100.0 (3 of 3 metrics pass) >= pass 95"


@pytest.mark.parametrize(
    ("metric", "factor", "classification", "shift"),
    [
        pytest.param("latency_p99", 1.3, MetricClass.HIGH, "high", id="higher latency fails"),
        pytest.param("latency_p99", 0.7, MetricClass.PASS, "low", id="lower latency is harmless"),
        pytest.param("error_rate", 1.5, MetricClass.HIGH, "high", id="more errors fail"),
        pytest.param("error_rate", 0.5, MetricClass.PASS, "low", id="fewer errors are harmless"),
        pytest.param("request_rate", 0.7, MetricClass.LOW, "low", id="less throughput fails"),
        pytest.param("throughput", 1.3, MetricClass.PASS, "high", id="more throughput is harmless"),
        pytest.param(
            "cpu_seconds", 1.3, MetricClass.HIGH, "high", id="an unknown metric fails higher"
        ),
        pytest.param("cpu_seconds", 0.7, MetricClass.LOW, "low", id="and lower"),
    ],
)
def test_shift_is_harmful_only_in_the_bad_direction(
    metric: str, factor: float, classification: MetricClass, shift: str
) -> None:
    """A shifted canary fails only when the metric moved in its harmful direction."""
    baseline = gauss(21, 100.0, 10.0)
    canary = [v * factor for v in gauss(22, 100.0, 10.0)]
    verdict = canary_judge({metric: canary}, {metric: baseline}, min_samples=10)
    (result,) = verdict.metrics
    assert result.classification is classification
    assert result.shift == shift
    assert result.p_value is not None
    assert result.p_value < 0.05
    expected = CanaryOutcome.PASS if classification is MetricClass.PASS else CanaryOutcome.FAIL
    assert verdict.outcome is expected


@pytest.mark.parametrize(
    ("direction", "factor", "classification"),
    [
        pytest.param(
            "decrease", 1.3, MetricClass.PASS, id="latency declared decrease: higher is harmless"
        ),
        pytest.param("decrease", 0.7, MetricClass.LOW, id="latency declared decrease: lower fails"),
        pytest.param("either", 0.7, MetricClass.LOW, id="either: lower fails too"),
    ],
)
def test_declared_direction_overrides_the_name(
    direction: str, factor: float, classification: MetricClass
) -> None:
    """A direction given for a metric wins over the default taken from its name."""
    canary = [v * factor for v in gauss(31, 0.1, 0.01)]
    verdict = canary_judge(
        {"latency_p50": canary},
        {"latency_p50": gauss(32, 0.1, 0.01)},
        directions={"latency_p50": direction},
    )
    assert verdict.metrics[0].classification is classification
    assert verdict.metrics[0].direction == direction


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("latency_p99", "increase"),
        ("latency", "increase"),
        ("error_rate", "increase"),
        ("errors", "increase"),
        ("request_rate", "decrease"),
        ("throughput", "decrease"),
        ("cpu_seconds", "either"),
    ],
)
def test_default_direction(metric: str, direction: str) -> None:
    """Latency and errors are bad when high, throughput when low, anything else either way."""
    assert default_direction(metric) == direction


def test_confidence_sets_the_significance() -> None:
    """A shift with p ≈ 0.019 is a difference at 95% confidence and none at 99%."""
    baseline = [float(v) for v in range(20)]
    canary = [v + 5 for v in baseline]
    at_95 = canary_judge({"latency_p50": canary}, {"latency_p50": baseline}, confidence=0.95)
    at_99 = canary_judge({"latency_p50": canary}, {"latency_p50": baseline}, confidence=0.99)
    assert at_95.metrics[0].p_value == pytest.approx(0.0185, abs=1e-3)
    assert at_95.metrics[0].classification is MetricClass.HIGH
    assert at_99.metrics[0].classification is MetricClass.PASS


def test_too_few_samples_is_nodata_and_all_nodata_inconclusive() -> None:
    """Fewer than min_samples on either side makes a metric nodata; with every metric nodata there is no score."""
    verdict = canary_judge(
        {"latency_p99": [0.1] * 9, "error_rate": [0.0] * 20},
        {"latency_p99": [0.1] * 20, "error_rate": [0.0] * 4},
        min_samples=10,
    )
    assert verdict.outcome is CanaryOutcome.INCONCLUSIVE
    assert verdict.reason == CANARY_INCONCLUSIVE
    assert verdict.score is None
    assert [(m.metric, m.classification) for m in verdict.metrics] == [
        ("latency_p99", MetricClass.NODATA),
        ("error_rate", MetricClass.NODATA),
    ]
    assert (
        verdict.metrics[0].message
        == "latency_p99: 9 canary and 20 baseline samples, 10 needed on each side"
    )


def test_a_metric_on_one_side_only_is_nodata_and_not_scored() -> None:
    """A metric the baseline lacks is nodata and leaves the score to the metrics judged."""
    same = gauss(41, 1.0, 0.1)
    verdict = canary_judge({"latency_p50": same, "error_rate": same}, {"latency_p50": same})
    assert verdict.score == 100.0
    assert {m.metric: m.classification for m in verdict.metrics} == {
        "latency_p50": MetricClass.PASS,
        "error_rate": MetricClass.NODATA,
    }


def test_non_finite_samples_are_dropped_before_counting() -> None:
    """NaN and infinite samples do not count toward min_samples."""
    canary = [1.0] * 9 + [NAN, math.inf]
    verdict = canary_judge({"latency_p50": canary}, {"latency_p50": [1.0] * 11}, min_samples=10)
    assert verdict.metrics[0].classification is MetricClass.NODATA
    assert verdict.metrics[0].canary_samples == 9


def test_constant_equal_samples_pass() -> None:
    """Identical constant samples on both sides (all ties) are no difference."""
    verdict = canary_judge({"error_rate": [0.0] * 12}, {"error_rate": [0.0] * 12})
    assert verdict.outcome is CanaryOutcome.PASS


SAME = [float(v) for v in range(12)]
HIGHER = [v + 100 for v in SAME]


def metrics(
    passing: int, failing: int, nodata: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Canary and baseline samples with that many passing, failing (high latency) and nodata metrics."""
    canary: dict[str, list[float]] = {}
    baseline: dict[str, list[float]] = {}
    for i in range(passing):
        canary[f"latency_ok_{i}"], baseline[f"latency_ok_{i}"] = SAME, SAME
    for i in range(failing):
        canary[f"latency_bad_{i}"], baseline[f"latency_bad_{i}"] = HIGHER, SAME
    for i in range(nodata):
        canary[f"latency_none_{i}"], baseline[f"latency_none_{i}"] = SAME[:2], SAME
    return canary, baseline


@pytest.mark.parametrize(
    ("passing", "failing", "nodata", "score"),
    [
        pytest.param(4, 0, 0, 100.0, id="all pass"),
        pytest.param(3, 1, 0, 75.0, id="3 of 4"),
        pytest.param(2, 1, 1, 200 / 3, id="nodata is not judged: 2 of 3"),
        pytest.param(1, 1, 0, 50.0, id="half"),
        pytest.param(0, 2, 3, 0.0, id="none pass"),
    ],
)
def test_score_is_passed_over_judged(passing: int, failing: int, nodata: int, score: float) -> None:
    """The score is 100 × passed / judged metrics, nodata metrics left out."""
    canary, baseline = metrics(passing, failing, nodata)
    verdict = canary_judge(canary, baseline, min_samples=10)
    assert verdict.score == pytest.approx(score)


@pytest.mark.parametrize(
    ("pass_score", "marginal", "outcome", "reason", "message"),
    [
        pytest.param(
            70.0,
            50.0,
            CanaryOutcome.PASS,
            CANARY_PASSED,
            "canary score 75.0 (3 of 4 metrics pass; failing: latency_bad_0) >= pass 70",
            id="above pass",
        ),
        pytest.param(
            75.0,
            50.0,
            CanaryOutcome.PASS,
            CANARY_PASSED,
            "canary score 75.0 (3 of 4 metrics pass; failing: latency_bad_0) >= pass 75",
            id="exactly pass",
        ),
        pytest.param(
            95.0,
            75.0,
            CanaryOutcome.MARGINAL,
            CANARY_MARGINAL,
            "canary score 75.0 (3 of 4 metrics pass; failing: latency_bad_0): below pass 95, at least marginal 75",
            id="exactly marginal",
        ),
        pytest.param(
            95.0,
            80.0,
            CanaryOutcome.FAIL,
            CANARY_FAILED,
            "canary score 75.0 (3 of 4 metrics pass; failing: latency_bad_0) < marginal 80",
            id="below marginal",
        ),
    ],
)
def test_marginal_band(
    pass_score: float, marginal: float, outcome: CanaryOutcome, reason: str, message: str
) -> None:
    """A score of 75 passes, is marginal or fails depending on the pass and marginal thresholds."""
    canary, baseline = metrics(3, 1, 0)
    verdict = canary_judge(canary, baseline, pass_score=pass_score, marginal=marginal)
    assert (verdict.outcome, verdict.reason, verdict.message) == (outcome, reason, message)


def test_metric_result_names_medians_and_p_value() -> None:
    """A failing metric's message gives both medians and the p-value against the significance level."""
    verdict = canary_judge({"latency_p50": HIGHER}, {"latency_p50": SAME})
    (result,) = verdict.metrics
    assert (result.canary_median, result.baseline_median) == (105.5, 5.5)
    assert result.message.startswith("latency_p50: high (canary median 105.5 vs baseline 5.5, p=")
    assert result.message.endswith("< 0.05)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"confidence": 1.0}, "confidence", id="confidence 1"),
        pytest.param({"confidence": 0.0}, "confidence", id="confidence 0"),
        pytest.param({"min_samples": 0}, "min_samples", id="no samples needed"),
        pytest.param(
            {"directions": {"latency_p50": "up"}}, "direction of latency_p50", id="a bad direction"
        ),
    ],
)
def test_canary_rejects_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    """Parameters out of range are a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=message):
        canary_judge({"latency_p50": SAME}, {"latency_p50": SAME}, **kwargs)  # type: ignore[arg-type]


def test_canary_spec_directions() -> None:
    """A canary spec takes a direction for a listed metric, defaults to none, and refuses one for an unlisted metric."""
    assert CanarySpec(metrics=["latency_p99"]).directions == {}
    spec = CanarySpec.model_validate(
        {"metrics": ["latency_p99", "queue_depth"], "directions": {"queue_depth": "increase"}}
    )
    assert spec.directions == {"queue_depth": "increase"}
    with pytest.raises(ValueError, match="directions name cpu, which metrics does not list"):
        CanarySpec.model_validate({"metrics": ["latency_p99"], "directions": {"cpu": "increase"}})
    with pytest.raises(ValueError, match="increase"):
        CanarySpec.model_validate({"metrics": ["latency_p99"], "directions": {"latency_p99": "up"}})
