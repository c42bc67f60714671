"""Metric sources: the Prometheus HTTP API, and each target's ``/metrics`` read directly.

Both implement :class:`rollwave.analysis.ports.MetricSource`; both speak
httpx and translate every httpx failure into
:mod:`rollwave.analysis.errors`.

``PrometheusSource`` asks a Prometheus server. ``instant`` is
``/api/v1/query``, ``range`` is ``/api/v1/query_range`` (both POSTed, so a
long ``{targets}`` alternation fits). Prometheus' answers map as follows::

    {"status": "success", result not empty}         the samples or series
    {"status": "success", "result": []}             NoData
    {"status": "error", "errorType": "bad_data"...} QueryError with Prometheus' error text
      errorType timeout / canceled / unavailable    SourceUnreachable (the server, not the query)
    connection refused, timeout, non-API answer     SourceUnreachable

A check's query is a template (:func:`render_query`): ``{service}``,
``{version}``, ``{previous_version}``, ``{environment}`` and ``{targets}``,
the wave's target names as a regular expression alternation (each name
``re.escape``'d), for ``instance=~"{targets}"``. Every value is escaped for
a PromQL double-quoted string, where placeholders belong.

``ScrapeSource`` reads every target's metrics itself, no Prometheus
needed: each ``refresh()`` reads all targets and keeps the previous read,
and the maths of :mod:`rollwave.analysis.scrape` turns the two into rates,
error rates and latency quantiles per target and version. Its queries are
scrape expressions (``error_rate{version="{version}"}``, see that module).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from rollwave.analysis.errors import NoData, QueryError, SourceUnreachable
from rollwave.analysis.scrape import (
    Observation,
    ScrapeDelta,
    ScrapeMetrics,
    delta,
    parse_observation,
    parse_query,
)
from rollwave.engine.clock import SystemClock
from rollwave.engine.ports import Clock
from rollwave.health.verdict import format_seconds
from rollwave.spec.templates import placeholders, render

__all__ = [
    "PrometheusSource",
    "Sample",
    "ScrapeSource",
    "Series",
    "render_query",
]

# Prometheus errorTypes that speak of the server's state, not of the query.
_TRANSIENT = frozenset({"timeout", "canceled", "unavailable"})
_EXPOSITION = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"


@dataclass(frozen=True)
class Sample:
    """One value of an instant query: the series' labels, the value, its time (epoch seconds)."""

    labels: Mapping[str, str]
    value: float
    at: float


@dataclass(frozen=True)
class Series:
    """One series of a range query: labels and (time, value) points in time order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


# ------------------------------------------------------------------------- templates


def _string_literal(text: str) -> str:
    """Escape ``text`` for the inside of a PromQL (or scrape expression) double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_query(template: str, context: Mapping[str, Any]) -> str:
    """Fill a query template's placeholders from ``context`` (see the module docstring).

    ``{targets}`` takes a sequence of target names (one name as a string is
    one target) and gives ``web\\\\-1|web\\\\-2`` : the alternation
    ``web\\-1|web\\-2`` written as a PromQL string. QueryError when a
    placeholder has no value or ``targets`` is empty (an empty regex would
    match every series without the label).
    """
    values: dict[str, str] = {}
    for name in placeholders(template):
        if name not in context:
            known = ", ".join(sorted(context)) or "none"
            raise QueryError(
                f"unknown placeholder {{{name}}} in query {template!r} (known: {known})",
                query=template,
            )
        value = context[name]
        if name == "targets":
            names = [value] if isinstance(value, str) else list(value or ())
            if not names:
                raise QueryError(
                    f"query {template!r} uses {{targets}} but the wave has no targets",
                    query=template,
                )
            values[name] = _string_literal("|".join(re.escape(str(n)) for n in names))
        else:
            values[name] = "" if value is None else _string_literal(str(value))
    return render(template, values)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_url(url: str, what: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ValueError(f"{what} URL {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} URL {url!r} must be http:// or https:// with a host")
    return parsed


def _check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    return float(timeout)


# ------------------------------------------------------------------------ prometheus


class PrometheusSource:
    """Queries through the Prometheus HTTP API at ``url`` (``http://host:9090``, or with a path prefix)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        _check_url(url, "Prometheus")
        self.url = url.rstrip("/")
        self.timeout = _check_timeout(timeout)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), trust_env=False, follow_redirects=False
        )

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def refresh(self) -> None:
        """Nothing to do: Prometheus keeps the history itself."""

    async def instant(self, query: str, at: float | None = None) -> list[Sample]:
        """``/api/v1/query`` at ``at`` (epoch seconds; default: the server's now).

        A scalar answer is one sample without labels. NoData when the result is
        empty; QueryError for a range vector or a string (not a number per series).
        """
        params = {"query": query, "timeout": self._server_timeout()}
        if at is not None:
            params["time"] = repr(float(at))
        data = await self._call("query", params, query)
        kind, result = _result(data, self.url)
        if kind == "scalar":
            return [Sample(labels={}, value=_number(result, self.url), at=_time(result, self.url))]
        if kind != "vector":
            raise QueryError(
                f"query {query!r} returns a {kind}, not a number per series"
                + (": use range() for a range vector" if kind == "matrix" else ""),
                query=query,
            )
        samples = [
            Sample(
                labels=_metric(item, self.url),
                value=_number(item.get("value"), self.url),
                at=_time(item.get("value"), self.url),
            )
            for item in _items(result, self.url)
        ]
        if not samples:
            raise NoData(
                f"query {query!r} matched no series",
                query=query,
                hint="check the metric name and labels, and that Prometheus scrapes the targets",
            )
        return samples

    async def range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        """``/api/v1/query_range`` from ``start`` to ``end`` (epoch seconds), every ``step`` seconds."""
        if not step > 0:
            raise ValueError(f"step must be positive, not {step!r}")
        params = {
            "query": query,
            "start": repr(float(start)),
            "end": repr(float(end)),
            "step": repr(float(step)),
            "timeout": self._server_timeout(),
        }
        data = await self._call("query_range", params, query)
        kind, result = _result(data, self.url)
        if kind != "matrix":
            raise QueryError(f"range query {query!r} returned a {kind}", query=query)
        series = [
            Series(
                labels=_metric(item, self.url),
                points=tuple(
                    (_time(point, self.url), _number(point, self.url))
                    for point in _list(item.get("values"), self.url)
                ),
            )
            for item in _items(result, self.url)
        ]
        if not series:
            raise NoData(f"range query {query!r} matched no series", query=query)
        return series

    async def measure(self, query: str, context: Mapping[str, Any]) -> float:
        """Render ``query`` and ask for its value now: it must give one series (aggregate it)."""
        rendered = render_query(query, context)
        samples = await self.instant(rendered)
        if len(samples) > 1:
            raise QueryError(
                f"query {rendered!r} returned {len(samples)} series; a check needs one number",
                query=rendered,
                hint="aggregate the query, for example sum(...) or max(...)",
            )
        value = samples[0].value
        if math.isnan(value):
            raise NoData(
                f"query {rendered!r} gave NaN (a division by zero: no traffic?)", query=rendered
            )
        return value

    def _server_timeout(self) -> str:
        return f"{max(1, int(self.timeout * 1000))}ms"

    async def _call(self, endpoint: str, params: Mapping[str, str], query: str) -> Any:
        url = f"{self.url}/api/v1/{endpoint}"
        try:
            response = await self._client.post(url, data=dict(params))
        except httpx.TimeoutException as exc:
            raise SourceUnreachable(
                f"Prometheus at {self.url} did not answer within {format_seconds(self.timeout)}",
                url=self.url,
                hint="check that it runs, or raise the timeout",
            ) from exc
        except httpx.HTTPError as exc:
            raise SourceUnreachable(
                f"Prometheus at {self.url} is unreachable: {_describe(exc)}",
                url=self.url,
                hint="check the analysis check's prometheus URL and that the server runs",
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("status") == "error":
            error_type = str(body.get("errorType", ""))
            error = str(body.get("error", ""))
            if error_type in _TRANSIENT:
                raise SourceUnreachable(
                    f"Prometheus at {self.url} could not answer {query!r}: {error_type}: {error}",
                    url=self.url,
                )
            raise QueryError(
                f"Prometheus refused the query {query!r}: {error_type}: {error}",
                query=query,
                error_type=error_type,
                error=error,
                hint="fix the check's query (try it in the Prometheus web UI)",
            )
        if (
            response.status_code != 200
            or not isinstance(body, dict)
            or body.get("status") != "success"
        ):
            raise SourceUnreachable(
                f"POST {url} answered HTTP {response.status_code} without a Prometheus API answer",
                url=self.url,
                hint="is the URL a Prometheus server (without /api/v1)?",
            )
        return body.get("data")


def _bad_answer(url: str, what: str) -> SourceUnreachable:
    return SourceUnreachable(f"Prometheus at {url} gave an answer not understood: {what}", url=url)


def _result(data: Any, url: str) -> tuple[str, Any]:
    if not isinstance(data, dict) or "resultType" not in data or "result" not in data:
        raise _bad_answer(url, "no resultType and result")
    return str(data["resultType"]), data["result"]


def _items(result: Any, url: str) -> list[dict[str, Any]]:
    items = _list(result, url)
    if not all(isinstance(item, dict) for item in items):
        raise _bad_answer(url, "a result that is not a list of series")
    return items


def _list(value: Any, url: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad_answer(url, f"expected a list, got {type(value).__name__}")
    return value


def _metric(item: Mapping[str, Any], url: str) -> dict[str, str]:
    metric = item.get("metric", {})
    if not isinstance(metric, dict):
        raise _bad_answer(url, "labels that are not an object")
    return {str(k): str(v) for k, v in metric.items()}


def _pair(point: Any, url: str) -> tuple[Any, Any]:
    if not isinstance(point, list) or len(point) != 2:
        raise _bad_answer(url, f"a sample that is not [time, value]: {point!r}")
    return point[0], point[1]


def _time(point: Any, url: str) -> float:
    at, _ = _pair(point, url)
    try:
        return float(at)
    except (TypeError, ValueError) as exc:
        raise _bad_answer(url, f"a time that is not a number: {at!r}") from exc


def _number(point: Any, url: str) -> float:
    _, value = _pair(point, url)
    try:
        return float(value)  # Prometheus writes values as strings: "0.05", "NaN", "+Inf"
    except (TypeError, ValueError) as exc:
        raise _bad_answer(url, f"a value that is not a number: {value!r}") from exc


# --------------------------------------------------------------------------- scrape


class ScrapeSource:
    """Reads every target's metrics (``urls_by_target``: name → ``http://.../metrics``) itself.

    ``refresh()`` reads them all at once and keeps the previous read of
    each target; :meth:`delta` is the window between the two. A target
    whose read fails loses its window (it needs two good reads in a row
    again) and makes ``refresh()`` raise SourceUnreachable naming it, after
    the other targets were recorded.
    """

    def __init__(
        self,
        urls_by_target: Mapping[str, str],
        timeout: float = 5.0,
        *,
        clock: Clock | None = None,
        metrics: ScrapeMetrics | None = None,
    ) -> None:
        if not urls_by_target:
            raise ValueError("a scrape source needs at least one target")
        for target, url in urls_by_target.items():
            _check_url(url, f"metrics of {target}")
        self.urls = dict(urls_by_target)
        self.timeout = _check_timeout(timeout)
        self.metrics = metrics or ScrapeMetrics()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._previous: dict[str, Observation] = {}
        self._current: dict[str, Observation] = {}
        self._delta: ScrapeDelta | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            follow_redirects=False,
            headers={"Accept": _EXPOSITION},
        )

    async def __aenter__(self) -> ScrapeSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def refresh(self) -> None:
        """Read every target now; the last read of each becomes the previous one."""
        names = list(self.urls)
        results = await asyncio.gather(
            *(self._read(name) for name in names), return_exceptions=True
        )
        failed: dict[str, SourceUnreachable] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, SourceUnreachable):
                failed[name] = result
                self._previous.pop(name, None)
                self._current.pop(name, None)
            elif isinstance(result, BaseException):
                raise result
            else:
                previous = self._current.get(name)
                if previous is None:
                    self._previous.pop(name, None)
                else:
                    self._previous[name] = previous
                self._current[name] = result
        self._delta = None
        if failed:
            first = next(iter(failed.values()))
            raise SourceUnreachable(
                "; ".join(str(e) for e in failed.values()),
                url=first.url,
                hint="the other targets were read; their windows go on",
            )

    def delta(self) -> ScrapeDelta:
        """The traffic between the last two reads, per (target, version)."""
        if self._delta is None:
            self._delta = delta(self._previous, self._current, self.metrics)
        return self._delta

    async def measure(self, query: str, context: Mapping[str, Any]) -> float:
        """Evaluate a scrape expression (rendered with ``context``) over the last window."""
        if "targets" in placeholders(query):
            raise QueryError(
                f"{{targets}} has no meaning in the scrape expression {query!r}",
                query=query,
                hint='select one target with target="name", or a version with version="{version}"',
            )
        rendered = render_query(query, context)
        try:
            parsed = parse_query(rendered)
        except ValueError as exc:
            raise QueryError(
                f"bad scrape expression: {exc}",
                query=rendered,
                hint="see rollwave.analysis.scrape for the expression language",
            ) from exc
        window = self.delta()
        if not window.traffic:
            raise NoData(
                f"no window yet for {rendered!r}: every target needs two reads in a row",
                query=rendered,
            )
        value = parsed.evaluate(window)
        if value is None or not math.isfinite(value):
            seen = ", ".join(window.versions) or "none"
            raise NoData(
                f"{rendered!r} had no data in the last window (versions seen: {seen})",
                query=rendered,
            )
        return value

    async def _read(self, name: str) -> Observation:
        url = self.urls[name]
        try:
            response = await self._client.get(url)
        except httpx.TimeoutException as exc:
            raise SourceUnreachable(
                f"{name}: GET {url} timed out after {format_seconds(self.timeout)}", url=url
            ) from exc
        except httpx.HTTPError as exc:
            raise SourceUnreachable(f"{name}: GET {url} failed: {_describe(exc)}", url=url) from exc
        at = self._clock.now()
        if response.status_code != 200:
            raise SourceUnreachable(f"{name}: GET {url} -> {response.status_code}", url=url)
        try:
            return parse_observation(response.text, at, self.metrics)
        except ValueError as exc:
            raise SourceUnreachable(f"{name}: GET {url}: {exc}", url=url) from exc
