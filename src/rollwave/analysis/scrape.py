"""Scrape maths: exposition text → observations → windows → rates and quantiles.  [pure]

A target's ``/metrics`` text becomes an :class:`Observation` (parsed with
``prometheus_client``'s parser, stamped with the time it was read). Two
observations of the same target make a window; :func:`delta` turns the
windows of every target into :class:`Traffic` per (target, version):
requests, 5xx errors, the request rate and the latency histogram of the
window, from which the five statistics of the scrape expression language
are read.

Which series are read is set by :class:`ScrapeMetrics`: a request counter
with a status-code label and a latency histogram, both with a version
label. The defaults are the names of rollwave's demo app.

Counter arithmetic, per series (one label set), as Prometheus' ``rate``:

    previous  current   increase
    100       130       30        the usual case
    130       12        12        a reset: the process restarted and counted 12 since
    absent    4         4         the series was born in this window (a first 500)
    130       absent    -         gone: the process stopped counting it; nothing

A histogram series resets as a whole: when its count went down, a bucket
went down, or its buckets changed, the increase is the current histogram.
A process that restarted and counted past its old value between two reads
looks like no reset at all (Prometheus has the same blind spot): keep the
interval short against the restart time.

Quantiles follow Prometheus' ``histogram_quantile`` on classic buckets:
linear interpolation inside the bucket that holds the rank, 0 as the lower
bound of the first bucket (when its bound is positive), and the largest
finite bound when the rank falls in the ``+Inf`` bucket. With buckets
0.05, 0.1, +Inf holding 10, 30, 40 (cumulative), p50 has rank 20, in
(0.05, 0.1], 10 of its 20: 0.05 + 0.05 × 10/20 = 0.075; p90 has rank 36,
in the +Inf bucket: 0.1.

The scrape expression language (a check's ``query`` when it has
``scrape``), one statistic and an optional selection::

    expression := stat [ "{" matcher { "," matcher } "}" ]
    stat       := error_rate | request_rate | latency_p50 | latency_p90 | latency_p99
    matcher    := ( version | target ) "=" '"' text '"'      (\\" and \\\\ escape)

``error_rate{version="2.4.1"}`` is the 5xx share of the requests answered
by version 2.4.1 on every target in the window; ``latency_p99{target="web-3"}``
the 99th percentile latency of one target. ``error_rate`` is None (no data)
when no request was answered, the latencies when nothing was observed;
``request_rate`` is requests per second summed over the selected targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "STATS",
    "Labels",
    "Observation",
    "ScrapeDelta",
    "ScrapeMetrics",
    "ScrapeQuery",
    "Traffic",
    "counter_increase",
    "delta",
    "histogram_quantile",
    "parse_observation",
    "parse_query",
    "samples_by_interval",
]

STATS = ("error_rate", "request_rate", "latency_p50", "latency_p90", "latency_p99")
QUANTILES = {"latency_p50": 0.50, "latency_p90": 0.90, "latency_p99": 0.99}
SELECTORS = ("version", "target")
_INF = math.inf

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name, without ``le``."""

Buckets = tuple[tuple[float, float], ...]
"""A histogram: (upper bound, cumulative count) by increasing bound, ``+Inf`` last."""


@dataclass(frozen=True)
class ScrapeMetrics:
    """Which series a scrape reads: a request counter and a latency histogram (seconds)."""

    requests: str = "rollwave_demo_requests_total"
    latency: str = "rollwave_demo_request_duration_seconds"
    code_label: str = "code"
    version_label: str = "version"


@dataclass(frozen=True)
class Observation:
    """What one target exposed at clock time ``at``: counter values and histograms, per series."""

    at: float
    requests: Mapping[Labels, float] = field(default_factory=dict)
    histograms: Mapping[Labels, Buckets] = field(default_factory=dict)


def parse_observation(text: str, at: float, metrics: ScrapeMetrics | None = None) -> Observation:
    """Read the request counter and latency histogram out of exposition ``text``.

    ValueError when ``text`` is not the Prometheus text format.
    """
    metrics = metrics or ScrapeMetrics()
    bucket_name = f"{metrics.latency}_bucket"
    requests: dict[Labels, float] = {}
    buckets: dict[Labels, dict[float, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metrics.requests:
                    requests[_labels(sample.labels)] = float(sample.value)
                elif sample.name == bucket_name and "le" in sample.labels:
                    series = _labels(sample.labels)
                    buckets.setdefault(series, {})[float(sample.labels["le"])] = float(sample.value)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"not the Prometheus text format: {exc or type(exc).__name__}") from exc
    return Observation(
        at=at,
        requests=requests,
        histograms={series: tuple(sorted(b.items())) for series, b in buckets.items()},
    )


def _labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


# ----------------------------------------------------------------------- arithmetic


def counter_increase(previous: float | None, current: float) -> float:
    """The increase of a counter between two reads; a decrease is a reset, counted from 0."""
    if previous is None or current < previous:
        return current
    return current - previous


def _histogram_increase(previous: Buckets | None, current: Buckets) -> Buckets:
    if previous is None or [b for b, _ in previous] != [b for b, _ in current]:
        return current
    if any(c < p for (_, p), (_, c) in zip(previous, current, strict=True)):
        return current
    return tuple((bound, c - p) for (bound, p), (_, c) in zip(previous, current, strict=True))


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` on classic buckets; None where it would give NaN.

    None for: no ``+Inf`` bucket, fewer than two buckets, no observation.
    ``q`` must lie in [0, 1].
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must lie between 0 and 1, not {q}")
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or ordered[-1][0] != _INF:
        return None
    # Counts must not fall as the bound rises; where they do (a torn read), take the envelope.
    envelope: list[tuple[float, float]] = []
    highest = -_INF
    for bound, count in ordered:
        highest = max(highest, count)
        envelope.append((bound, highest))
    observations = envelope[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next(
        (i for i, (_, count) in enumerate(envelope[:-1]) if count >= rank), len(envelope) - 1
    )
    if index == len(envelope) - 1:
        return envelope[-2][0]
    upper, count = envelope[index]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0
    if index > 0:
        lower, below = envelope[index - 1]
        count -= below
        rank -= below
    if count <= 0:  # rank 0 in an empty first bucket; Prometheus answers NaN (0/0) here
        return lower
    return lower + (upper - lower) * (rank / count)


# -------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Traffic:
    """One window of traffic: requests, 5xx errors, requests per second, latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    request_rate: float = 0.0
    buckets: Buckets = ()

    @property
    def error_rate(self) -> float | None:
        """5xx answers / all answers; None when nothing was answered."""
        return self.errors / self.requests if self.requests > 0 else None

    def latency(self, q: float) -> float | None:
        """The ``q`` quantile of the latency in seconds; None when nothing was observed."""
        return histogram_quantile(q, self.buckets)

    def value(self, stat: str) -> float | None:
        """One statistic of :data:`STATS` by name."""
        if stat == "error_rate":
            return self.error_rate
        if stat == "request_rate":
            return self.request_rate
        if stat in QUANTILES:
            return self.latency(QUANTILES[stat])
        raise ValueError(f"unknown statistic {stat!r} (known: {', '.join(STATS)})")

    def __add__(self, other: Traffic) -> Traffic:
        merged: dict[float, float] = dict(self.buckets)
        for bound, count in other.buckets:
            merged[bound] = merged.get(bound, 0.0) + count
        return Traffic(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            request_rate=self.request_rate + other.request_rate,
            buckets=tuple(sorted(merged.items())),
        )


def _is_error(code: str) -> bool:
    return len(code) == 3 and code.startswith("5") and code.isdigit()


def window(
    previous: Observation, current: Observation, metrics: ScrapeMetrics | None = None
) -> dict[str, Traffic]:
    """The traffic of one target between two observations, per version; {} without elapsed time."""
    metrics = metrics or ScrapeMetrics()
    seconds = current.at - previous.at
    if seconds <= 0:
        return {}
    out: dict[str, Traffic] = {}
    for series, value in current.requests.items():
        labels = dict(series)
        version = labels.get(metrics.version_label, "")
        increase = counter_increase(previous.requests.get(series), value)
        errors = increase if _is_error(labels.get(metrics.code_label, "")) else 0.0
        out[version] = out.get(version, Traffic()) + Traffic(
            requests=increase, errors=errors, request_rate=increase / seconds
        )
    for series, buckets in current.histograms.items():
        version = dict(series).get(metrics.version_label, "")
        histogram = _histogram_increase(previous.histograms.get(series), buckets)
        out[version] = out.get(version, Traffic()) + Traffic(buckets=histogram)
    return out


@dataclass(frozen=True)
class ScrapeDelta:
    """Every target's window, per (target, version); ``start``/``end`` span the observations."""

    traffic: Mapping[tuple[str, str], Traffic]
    start: float | None = None
    end: float | None = None

    def select(self, target: str | None = None, version: str | None = None) -> Traffic | None:
        """The traffic of the matching (target, version) pairs, summed; None when none matched."""
        chosen = [
            t
            for (t_name, t_version), t in self.traffic.items()
            if (target is None or t_name == target) and (version is None or t_version == version)
        ]
        if not chosen:
            return None
        total = Traffic()
        for item in chosen:
            total = total + item
        return total

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(sorted({v for _, v in self.traffic}))

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(sorted({t for t, _ in self.traffic}))


def delta(
    previous: Mapping[str, Observation],
    current: Mapping[str, Observation],
    metrics: ScrapeMetrics | None = None,
) -> ScrapeDelta:
    """The windows of every target observed twice; a target seen once has no window yet."""
    traffic: dict[tuple[str, str], Traffic] = {}
    starts: list[float] = []
    ends: list[float] = []
    for target, now in current.items():
        before = previous.get(target)
        if before is None:
            continue
        for version, item in window(before, now, metrics).items():
            traffic[(target, version)] = item
        starts.append(before.at)
        ends.append(now.at)
    return ScrapeDelta(
        traffic=traffic,
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
    )


# ----------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class ScrapeQuery:
    """A parsed scrape expression: a statistic and an optional target and version."""

    stat: str
    target: str | None = None
    version: str | None = None

    def evaluate(self, data: ScrapeDelta) -> float | None:
        """The statistic over the selected traffic; None when nothing matched or nothing happened."""
        traffic = data.select(target=self.target, version=self.version)
        return None if traffic is None else traffic.value(self.stat)


_STAT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')
_UNESCAPE = re.compile(r"\\(.)")


def parse_query(text: str) -> ScrapeQuery:
    """Parse ``stat{version="...",target="..."}``; ValueError naming what is wrong."""
    match = _STAT.match(text)
    if match is None:
        raise ValueError(f"expected one of {', '.join(STATS)} at the start of {text!r}")
    stat = match.group(1)
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r} (known: {', '.join(STATS)})")
    position = match.end()
    selected: dict[str, str] = {}
    if position < len(text) and text[position] == "{":
        position += 1
        while True:
            if text[position:].strip().startswith("}") and not selected:
                position = text.index("}", position) + 1
                break
            matcher = _MATCHER.match(text, position)
            if matcher is None:
                raise ValueError(f'expected label="value" at offset {position} of {text!r}')
            label, value = matcher.group(1), _UNESCAPE.sub(r"\1", matcher.group(2))
            if label not in SELECTORS:
                raise ValueError(f"unknown label {label!r} (known: {', '.join(SELECTORS)})")
            if label in selected:
                raise ValueError(f"label {label!r} given twice in {text!r}")
            selected[label] = value
            position = matcher.end()
            if text.startswith(",", position):
                position += 1
            elif text.startswith("}", position):
                position += 1
                break
            else:
                raise ValueError(f"expected , or }} at offset {position} of {text!r}")
    if text[position:].strip():
        raise ValueError(f"unexpected {text[position:].strip()!r} after the expression {text!r}")
    return ScrapeQuery(stat=stat, target=selected.get("target"), version=selected.get("version"))


def samples_by_interval(deltas: Sequence[ScrapeDelta], query: ScrapeQuery) -> list[float]:
    """One value of ``query`` per window, skipping windows where it had no data (canary samples)."""
    values = (query.evaluate(d) for d in deltas)
    return [v for v in values if v is not None and math.isfinite(v)]
