"""Scrape maths on hand-written exposition texts: quantiles, rates, resets, expressions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollwave.analysis.scrape import (
    Observation,
    ScrapeDelta,
    ScrapeMetrics,
    ScrapeQuery,
    Traffic,
    counter_increase,
    delta,
    histogram_quantile,
    parse_observation,
    parse_query,
    samples_by_interval,
)

INF = math.inf
# Buckets 0.05, 0.1, +Inf holding 10, 30, 40 observations (cumulative).
WORKED = [(0.05, 10.0), (0.1, 30.0), (INF, 40.0)]


def exposition(
    version: str,
    codes: dict[int, int],
    buckets: dict[str, int],
    requests: str = "rollwave_demo_requests_total",
    latency: str = "rollwave_demo_request_duration_seconds",
) -> str:
    """The demo app's exposition text for one version: request counts by code, latency buckets."""
    lines = [f"# TYPE {requests} counter"]
    lines += [f'{requests}{{code="{c}",version="{version}"}} {n}' for c, n in codes.items()]
    lines.append(f"# TYPE {latency} histogram")
    lines += [f'{latency}_bucket{{version="{version}",le="{le}"}} {n}' for le, n in buckets.items()]
    count = buckets.get("+Inf", 0)
    lines += [
        f'{latency}_sum{{version="{version}"}} 1.0',
        f'{latency}_count{{version="{version}"}} {count}',
    ]
    return "\n".join(lines) + "\n"


def observe(at: float, *texts: str) -> Observation:
    return parse_observation("".join(texts), at)


# ------------------------------------------------------------------ histogram_quantile


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        pytest.param(0.5, WORKED, 0.075, id="p50 interpolates inside (0.05, 0.1]"),
        pytest.param(0.25, WORKED, 0.05, id="a rank on a bucket's count is its upper bound"),
        pytest.param(0.1, WORKED, 0.02, id="the first bucket starts at 0"),
        pytest.param(0.0, WORKED, 0.0, id="p0 is the natural lower bound 0"),
        pytest.param(0.9, WORKED, 0.1, id="a rank in +Inf gives the largest finite bound"),
        pytest.param(0.99, WORKED, 0.1, id="p99 in +Inf likewise"),
        pytest.param(
            1.0,
            [(0.05, 10.0), (0.1, 10.0), (INF, 10.0)],
            0.05,
            id="p100 ends where the last observation is",
        ),
        pytest.param(0.5, [(0.1, 0.0), (0.2, 10.0), (INF, 10.0)], 0.15, id="empty first bucket"),
        pytest.param(
            0.5,
            [(-1.0, 5.0), (1.0, 8.0), (INF, 8.0)],
            -1.0,
            id="a non-positive first bound is returned as is",
        ),
        pytest.param(
            0.5, [(INF, 40.0), (0.1, 30.0), (0.05, 10.0)], 0.075, id="bucket order does not matter"
        ),
        pytest.param(
            0.5,
            [(0.05, 10.0), (0.1, 8.0), (0.2, 30.0), (INF, 40.0)],
            0.15,
            id="a falling count is lifted to the envelope",
        ),
        pytest.param(0.5, [(0.05, 0.0), (INF, 0.0)], None, id="no observation"),
        pytest.param(0.5, [(0.05, 10.0), (0.1, 30.0)], None, id="no +Inf bucket"),
        pytest.param(0.5, [(INF, 30.0)], None, id="a single bucket"),
        pytest.param(0.5, [], None, id="no bucket"),
    ],
)
def test_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    """histogram_quantile interpolates linearly inside the bucket as Prometheus does, None for its NaN cases."""
    result = histogram_quantile(q, buckets)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_histogram_quantile_rejects_q_outside_0_1() -> None:
    """A quantile outside [0, 1] is a programming error, not a value."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, WORKED)


@given(
    counts=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8),
    q1=st.floats(min_value=0, max_value=1),
    q2=st.floats(min_value=0, max_value=1),
)
def test_histogram_quantile_is_monotone_and_bounded(
    counts: list[int], q1: float, q2: float
) -> None:
    """For any histogram, a higher quantile is never smaller and every quantile lies in [0, largest finite bound]."""
    bounds = [0.01 * 2**i for i in range(len(counts))]
    cumulative = [float(sum(counts[: i + 1])) for i in range(len(counts))]
    buckets = [*zip(bounds, cumulative, strict=True), (INF, cumulative[-1])]
    low, high = sorted((q1, q2))
    a, b = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if cumulative[-1] == 0:
        assert a is None
        assert b is None
        return
    assert a is not None
    assert b is not None
    assert 0 <= a <= b + 1e-12 <= bounds[-1] + 1e-12


# ----------------------------------------------------------------------------- counters


@pytest.mark.parametrize(
    ("previous", "current", "increase"),
    [
        pytest.param(100.0, 130.0, 30.0, id="the usual increase"),
        pytest.param(130.0, 12.0, 12.0, id="a reset counts from 0"),
        pytest.param(None, 4.0, 4.0, id="a series born in the window counts from 0"),
        pytest.param(7.0, 7.0, 0.0, id="no change"),
    ],
)
def test_counter_increase(previous: float | None, current: float, increase: float) -> None:
    """A counter's increase is current - previous, and a decrease means it restarted from 0."""
    assert counter_increase(previous, current) == increase


@given(st.floats(min_value=0, max_value=1e12), st.floats(min_value=0, max_value=1e12))
def test_counter_increase_is_never_negative(previous: float, current: float) -> None:
    """Whatever two reads a counter gives, its increase is not negative."""
    assert counter_increase(previous, current) >= 0


# --------------------------------------------------------------------------- exposition


def test_parse_observation_reads_counter_and_histogram_series() -> None:
    """Request counters are kept per label set and histogram buckets per series, without le, sorted by bound."""
    text = exposition("1.0", {200: 90, 500: 10}, {"0.05": 60, "0.1": 95, "+Inf": 100})
    seen = observe(5.0, text)
    assert seen.at == 5.0
    assert seen.requests == {
        (("code", "200"), ("version", "1.0")): 90.0,
        (("code", "500"), ("version", "1.0")): 10.0,
    }
    assert seen.histograms == {(("version", "1.0"),): ((0.05, 60.0), (0.1, 95.0), (INF, 100.0))}


def test_parse_observation_ignores_other_metrics_and_takes_configured_names() -> None:
    """Only the configured counter and histogram are read; names are configurable."""
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n" + exposition(
        "2", {200: 5}, {"0.1": 5, "+Inf": 5}, "http_requests_total", "http_latency_seconds"
    )
    default = parse_observation(text, 0.0)
    assert default.requests == {}
    assert default.histograms == {}
    custom = parse_observation(
        text, 0.0, ScrapeMetrics(requests="http_requests_total", latency="http_latency_seconds")
    )
    assert sum(custom.requests.values()) == 5.0
    assert len(custom.histograms) == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("<html><body>Not Found</body></html>\n", id="an HTML page"),
        pytest.param('requests_total{code="200} 1\n', id="an unterminated label"),
        pytest.param("requests_total{code=200} 1\n", id="an unquoted label value"),
    ],
)
def test_parse_observation_rejects_what_is_not_the_text_format(text: str) -> None:
    """Text that is not the exposition format is a ValueError naming the format."""
    with pytest.raises(ValueError, match="not the Prometheus text format"):
        parse_observation(text, 0.0)


# ------------------------------------------------------------------------------ windows

BUCKETS_T0 = {"0.005": 800, "0.05": 950, "0.1": 1000, "+Inf": 1000}
BUCKETS_T1 = {"0.005": 800, "0.05": 950, "0.1": 1090, "+Inf": 1100}


def test_delta_rates_and_error_rate_between_two_scrapes() -> None:
    """Between reads 10s apart, 90 new 200s and 10 new 500s give 10 req/s and an error rate of 0.1."""
    before = observe(100.0, exposition("1.0", {200: 100, 500: 2}, BUCKETS_T0))
    after = observe(110.0, exposition("1.0", {200: 190, 500: 12}, BUCKETS_T1))
    traffic = delta({"web-1": before}, {"web-1": after}).traffic[("web-1", "1.0")]
    assert traffic.requests == 100.0
    assert traffic.errors == 10.0
    assert traffic.request_rate == pytest.approx(10.0)
    assert traffic.error_rate == pytest.approx(0.1)


def test_latency_quantiles_come_from_bucket_deltas_not_totals() -> None:
    """The window's 100 new observations all fell in (0.05, 0.1] or above, so its p50 lies there, whatever came before."""
    before = observe(0.0, exposition("1.0", {200: 100}, BUCKETS_T0))
    after = observe(10.0, exposition("1.0", {200: 200}, BUCKETS_T1))
    traffic = delta({"a": before}, {"a": after}).traffic[("a", "1.0")]
    # window buckets: 0.005: 0, 0.05: 0, 0.1: 90, +Inf: 100. p50: rank 50 in (0.05, 0.1], 50 of 90.
    assert traffic.buckets == ((0.005, 0.0), (0.05, 0.0), (0.1, 90.0), (INF, 100.0))
    assert traffic.value("latency_p50") == pytest.approx(0.05 + 0.05 * 50 / 90)
    assert traffic.value("latency_p90") == pytest.approx(0.1)
    assert traffic.value("latency_p99") == pytest.approx(0.1)
    # the totals since start (1100 observations, 800 of them <= 5ms) would have said p50 < 5ms
    total_p50 = histogram_quantile(0.5, after.histograms[(("version", "1.0"),)])
    assert total_p50 is not None
    assert total_p50 < 0.005


def test_a_restarted_process_gives_no_negative_rate() -> None:
    """After a restart, counters and the histogram count from 0: the window holds what the new process counted."""
    before = observe(0.0, exposition("1.0", {200: 500, 500: 20}, {"0.1": 520, "+Inf": 520}))
    after = observe(10.0, exposition("1.0", {200: 40}, {"0.1": 38, "+Inf": 40}))
    traffic = delta({"a": before}, {"a": after}).traffic[("a", "1.0")]
    assert traffic.requests == 40.0
    assert traffic.request_rate == pytest.approx(4.0)
    assert traffic.errors == 0.0
    assert traffic.error_rate == 0.0
    assert traffic.buckets == ((0.1, 38.0), (INF, 40.0))


def test_a_first_500_in_the_window_counts() -> None:
    """The app creates the code="500" series at its first error: a series new in the window counts from 0."""
    before = observe(0.0, exposition("1.0", {200: 100}, BUCKETS_T0))
    after = observe(10.0, exposition("1.0", {200: 195, 500: 5}, BUCKETS_T1))
    traffic = delta({"a": before}, {"a": after}).traffic[("a", "1.0")]
    assert traffic.errors == 5.0
    assert traffic.error_rate == pytest.approx(0.05)


def test_a_redeployed_target_moves_to_its_new_version() -> None:
    """A target that switched from 1.0 to 2.0 between reads has a window for 2.0 only, counted from 0."""
    before = observe(0.0, exposition("1.0", {200: 100}, BUCKETS_T0))
    after = observe(5.0, exposition("2.0", {200: 10, 503: 1}, {"0.1": 11, "+Inf": 11}))
    data = delta({"a": before}, {"a": after})
    assert set(data.traffic) == {("a", "2.0")}
    assert data.traffic[("a", "2.0")].error_rate == pytest.approx(1 / 11)


def test_targets_add_up_per_version() -> None:
    """A version's traffic is the sum of its targets': rates add, the error rate and quantiles come from summed counts."""
    a0 = observe(0.0, exposition("1.0", {200: 0}, {"0.05": 0, "0.1": 0, "+Inf": 0}))
    a1 = observe(10.0, exposition("1.0", {200: 100}, {"0.05": 100, "0.1": 100, "+Inf": 100}))
    b0 = observe(0.0, exposition("1.0", {200: 0}, {"0.05": 0, "0.1": 0, "+Inf": 0}))
    b1 = observe(5.0, exposition("1.0", {200: 40, 500: 60}, {"0.05": 0, "0.1": 100, "+Inf": 100}))
    c0 = observe(0.0, exposition("2.0", {200: 0}, {"0.05": 0, "0.1": 0, "+Inf": 0}))
    c1 = observe(10.0, exposition("2.0", {200: 10}, {"0.05": 10, "0.1": 10, "+Inf": 10}))
    data = delta({"a": a0, "b": b0, "c": c0}, {"a": a1, "b": b1, "c": c1})
    assert data.versions == ("1.0", "2.0")
    assert data.targets == ("a", "b", "c")
    v1 = data.select(version="1.0")
    assert v1 is not None
    assert v1.request_rate == pytest.approx(100 / 10 + 100 / 5)
    assert v1.error_rate == pytest.approx(60 / 200)
    assert v1.value("latency_p50") == pytest.approx(0.05)  # rank 100 of 200: the top of (0, 0.05]
    assert data.select(target="b", version="2.0") is None


def test_a_target_read_once_has_no_window() -> None:
    """A target needs two reads: one read alone adds nothing, and nothing at all gives empty traffic."""
    one = observe(0.0, exposition("1.0", {200: 5}, BUCKETS_T0))
    assert delta({}, {"a": one}).traffic == {}
    assert delta({}, {}).start is None


def test_no_time_elapsed_gives_no_window() -> None:
    """Two reads stamped with the same time make no rate (no division by zero)."""
    one = observe(3.0, exposition("1.0", {200: 5}, BUCKETS_T0))
    assert delta({"a": one}, {"a": one}).traffic == {}


@pytest.mark.parametrize(
    ("stat", "traffic", "expected"),
    [
        pytest.param("error_rate", Traffic(), None, id="no request: no error rate"),
        pytest.param("request_rate", Traffic(), 0.0, id="no request: a rate of 0 is data"),
        pytest.param(
            "latency_p99",
            Traffic(requests=3.0, request_rate=1.0),
            None,
            id="no histogram: no latency",
        ),
        pytest.param("error_rate", Traffic(requests=4.0, errors=1.0), 0.25, id="one error in four"),
    ],
)
def test_traffic_values_without_data(stat: str, traffic: Traffic, expected: float | None) -> None:
    """A statistic that cannot be computed from a window is None, not 0."""
    assert traffic.value(stat) == expected


# --------------------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("text", "query"),
    [
        pytest.param("error_rate", ScrapeQuery("error_rate"), id="a bare statistic"),
        pytest.param(
            'latency_p99{version="2.4.1"}',
            ScrapeQuery("latency_p99", version="2.4.1"),
            id="a version",
        ),
        pytest.param(
            ' request_rate { target = "web-3" , version="2" } ',
            ScrapeQuery("request_rate", target="web-3", version="2"),
            id="both, with spaces",
        ),
        pytest.param(
            'latency_p50{target="a\\"b"}',
            ScrapeQuery("latency_p50", target='a"b'),
            id="an escaped quote",
        ),
        pytest.param("latency_p90{}", ScrapeQuery("latency_p90"), id="empty braces"),
    ],
)
def test_parse_query(text: str, query: ScrapeQuery) -> None:
    """A scrape expression is a statistic and an optional version and target."""
    assert parse_query(text) == query


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("latency_p95", "unknown statistic 'latency_p95'", id="an unknown statistic"),
        pytest.param('error_rate{code="500"}', "unknown label 'code'", id="an unknown label"),
        pytest.param('error_rate{version="1",version="2"}', "given twice", id="a label twice"),
        pytest.param('error_rate{version="1"', "expected , or }", id="unclosed braces"),
        pytest.param("error_rate{version=1}", 'expected label="value"', id="an unquoted value"),
        pytest.param("error_rate / 2", "unexpected '/ 2'", id="arithmetic"),
        pytest.param("", "expected one of", id="nothing"),
    ],
)
def test_parse_query_rejects(text: str, message: str) -> None:
    """A malformed scrape expression is a ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_query(text)


def test_samples_by_interval_skips_windows_without_data() -> None:
    """Per-interval canary samples hold one value per window that had data."""
    windows = [
        ScrapeDelta({("a", "1"): Traffic(requests=10.0, errors=1.0)}),
        ScrapeDelta({("a", "1"): Traffic()}),
        ScrapeDelta({}),
        ScrapeDelta({("a", "1"): Traffic(requests=10.0, errors=0.0)}),
    ]
    assert samples_by_interval(windows, ScrapeQuery("error_rate", version="1")) == [0.1, 0.0]
