"""Analysis during a bake: measure every check each interval, judge, and say when to stop.

The engine builds one :class:`BakeAnalysis` per bake, calls :meth:`start`
when the bake begins, :meth:`step` once per ``analysis.interval`` and
:meth:`finish` when the bake ends. Every call returns plain
:class:`Measurement` records the engine journals; :attr:`verdict` says
whether the analysis failed, asks for a pause, or goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollwave.analysis.errors import AnalysisError, NoData, QueryError, SourceUnreachable
from rollwave.analysis.judges import (
    CanaryOutcome,
    CanaryVerdict,
    CheckStatus,
    CheckVerdict,
    ThresholdJudge,
    canary_judge,
)
from rollwave.analysis.ports import MetricSource
from rollwave.analysis.scrape import ScrapeDelta, parse_query, samples_by_interval
from rollwave.analysis.sources import PrometheusSource, ScrapeSource
from rollwave.engine.ports import Clock
from rollwave.spec.model import AnalysisSpec

__all__ = ["BakeAnalysis", "Measurement"]

ANALYSIS_FAILED = "AnalysisFailed"
ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"


@dataclass(frozen=True)
class Measurement:
    """One journaled fact of an analysis: a check's value and verdict, or the canary's score."""

    check: str
    status: str  # running, inconclusive, passed, failed, pause; canary: pass, marginal, fail, inconclusive
    reason: str
    message: str
    value: float | None = None
    score: float | None = None
    details: tuple[dict[str, Any], ...] = ()

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "check": self.check,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        if self.value is not None:
            data["value"] = self.value
        if self.score is not None:
            data["score"] = self.score
        if self.details:
            data["metrics"] = list(self.details)
        return data

    @property
    def failed(self) -> bool:
        return self.status in (CheckStatus.FAILED.value, CanaryOutcome.FAIL.value)

    @property
    def pause(self) -> bool:
        return self.status == CheckStatus.PAUSE.value


class BakeAnalysis:
    """The checks and the canary of one bake, over their sources.

    ``urls_for(template)`` renders a scrape URL template for every target of
    the service (``{target name: url}``); ``context`` fills the queries'
    placeholders (``service``, ``version``, ``previous_version``,
    ``targets``, ``environment``).
    """

    def __init__(
        self,
        spec: AnalysisSpec,
        *,
        context: Mapping[str, Any],
        urls_for: Callable[[str], Mapping[str, str]],
        clock: Clock,
    ) -> None:
        self.spec = spec
        self.context = dict(context)
        self.clock = clock
        self.judges = {check.name: ThresholdJudge(check) for check in spec.checks}
        self._prometheus: dict[str, PrometheusSource] = {}
        self._scrapes: dict[str, ScrapeSource] = {}
        self._source_of: dict[str, MetricSource] = {}
        for check in spec.checks:
            if check.prometheus is not None:
                source: MetricSource = self._prometheus.setdefault(
                    check.prometheus, PrometheusSource(check.prometheus)
                )
            else:
                assert check.scrape is not None
                source = self._scrape(check.scrape, urls_for)
            self._source_of[check.name] = source
        self._canary_source: ScrapeSource | None = None
        if spec.canary is not None:
            template = spec.canary.scrape or next(
                (c.scrape for c in spec.checks if c.scrape is not None), None
            )
            if template is None:  # the spec loader refuses this; guard anyway
                raise QueryError("the canary needs a scrape URL template", query="")
            self._canary_source = self._scrape(template, urls_for)
        self._windows: list[ScrapeDelta] = []
        self.failed: Measurement | None = None
        self.paused: Measurement | None = None

    def _scrape(self, template: str, urls_for: Callable[[str], Mapping[str, str]]) -> ScrapeSource:
        if template not in self._scrapes:
            self._scrapes[template] = ScrapeSource(urls_for(template), clock=self.clock)
        return self._scrapes[template]

    async def start(self) -> list[Measurement]:
        """Take the first scrape of every target, so the first interval has a window."""
        return await self._refresh()

    async def _refresh(self) -> list[Measurement]:
        notes = []
        for template, source in self._scrapes.items():
            try:
                await source.refresh()
            except SourceUnreachable as exc:
                notes.append(
                    Measurement(
                        f"scrape {template}", "inconclusive", "SourceUnreachable", exc.message
                    )
                )
        return notes

    async def step(self) -> list[Measurement]:
        """Measure every check once; judge; remember a canary window."""
        measurements = await self._refresh()
        if self._canary_source is not None:
            window = self._canary_source.delta()
            if window.traffic:
                self._windows.append(window)
        for name, judge in self.judges.items():
            check = judge.check
            value: float | None
            try:
                value = await self._source_of[name].measure(check.query, self.context)
            except (NoData, SourceUnreachable):
                value = None
            except QueryError as exc:
                measurement = Measurement(name, CheckStatus.FAILED.value, "QueryError", exc.message)
                measurements.append(measurement)
                self.failed = self.failed or measurement
                continue
            except AnalysisError as exc:
                value = None
                measurements.append(
                    Measurement(name, "inconclusive", type(exc).__name__, exc.message)
                )
            measurements.append(self._from_verdict(judge.observe(value)))
        return measurements

    def finish(self) -> list[Measurement]:
        """The bake ended: final check verdicts and the canary's score."""
        measurements = [self._from_verdict(judge.finish()) for judge in self.judges.values()]
        if self.spec.canary is not None:
            measurements.append(self._canary())
        return measurements

    def _from_verdict(self, verdict: CheckVerdict) -> Measurement:
        measurement = Measurement(
            verdict.check,
            verdict.status.value,
            verdict.reason,
            verdict.message,
            value=verdict.value,
        )
        if measurement.failed:
            self.failed = self.failed or measurement
        elif measurement.pause:
            self.paused = self.paused or measurement
        return measurement

    def _canary(self) -> Measurement:
        canary = self.spec.canary
        assert canary is not None
        version = str(self.context.get("version", ""))
        previous = str(self.context.get("previous_version", ""))

        def samples(metric: str, of_version: str) -> list[float]:
            return samples_by_interval(
                self._windows, parse_query(f'{metric}{{version="{of_version}"}}')
            )

        verdict: CanaryVerdict = canary_judge(
            {m: samples(m, version) for m in canary.metrics},
            {m: samples(m, previous) for m in canary.metrics},
            directions=canary.directions,
            confidence=canary.confidence,
            pass_score=canary.pass_score,
            marginal=canary.marginal,
            min_samples=canary.min_samples,
        )
        details = tuple(
            {
                "metric": r.metric,
                "class": r.classification.value,
                "p_value": r.p_value,
                "canary_median": r.canary_median,
                "baseline_median": r.baseline_median,
                "samples": [r.canary_samples, r.baseline_samples],
            }
            for r in verdict.metrics
        )
        measurement = Measurement(
            "canary",
            verdict.outcome.value,
            verdict.reason,
            verdict.message,
            score=verdict.score,
            details=details,
        )
        if measurement.failed:
            self.failed = self.failed or measurement
        return measurement

    async def close(self) -> None:
        sources: Sequence[PrometheusSource | ScrapeSource] = [
            *self._prometheus.values(),
            *self._scrapes.values(),
        ]
        for source in sources:
            with contextlib.suppress(Exception):
                await source.close()
