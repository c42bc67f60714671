"""Metric sources against the real thing: demo apps under load, scraped by a real Prometheus and by rollwave."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from rollwave.analysis.errors import NoData, QueryError, SourceUnreachable
from rollwave.analysis.judges import CanaryOutcome, MetricClass, canary_judge
from rollwave.analysis.scrape import ScrapeDelta, parse_query, samples_by_interval
from rollwave.analysis.sources import PrometheusSource, ScrapeSource, render_query
from rollwave.demo.artifacts import build_artifact
from support.prometheus import prometheus_server, static_job

pytestmark = pytest.mark.integration

ERROR_RATE = (
    'sum(rate(rollwave_demo_requests_total{code=~"5..",version="{version}"}[10s]))'
    ' / sum(rate(rollwave_demo_requests_total{version="{version}"}[10s]))'
)
# The same ratio, 0 rather than no data when the version never answered a 5xx.
ERROR_RATE_OR_ZERO = (
    '(sum(rate(rollwave_demo_requests_total{code=~"5..",version="{version}"}[10s])) or vector(0))'
    ' / sum(rate(rollwave_demo_requests_total{version="{version}"}[10s]))'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def context(version: str, targets: list[str] | None = None) -> dict[str, object]:
    return {
        "environment": "test",
        "service": "web",
        "version": version,
        "previous_version": "1.0",
        "targets": targets or ["web-1"],
    }


@dataclass
class App:
    name: str
    version: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    """Demo apps (by target name) under constant load."""

    apps: dict[str, App]
    root: Path
    errors: list[str] = field(default_factory=list)

    def metrics_urls(self) -> dict[str, str]:
        return {name: f"{app.url}/metrics" for name, app in self.apps.items()}


# name, version, environment (the injected behaviour), load threads
FLEET = [
    ("web-1", "1.0", {}, 1),
    ("web-2", "1.0", {}, 1),
    ("web.3", "2.0", {"ROLLWAVE_DEMO_ERROR_RATE": "0.05"}, 1),
    ("web-4", "3.0", {"ROLLWAVE_DEMO_LATENCY_MS": "50"}, 2),
]


def unpack(root: Path, version: str) -> Path:
    """Build the demo artifact of ``version`` and unpack it as a release directory (once per version)."""
    release = root / "releases" / version
    if not release.exists():
        archive = build_artifact(root / "dist", version)
        release.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(release, filter="data")
    return release


def wait_answering(app: App, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise AssertionError(f"{app.name} exited: {app.log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{app.url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"{app.name} did not answer on {app.port} within {timeout}s")


def load(url: str, stop: threading.Event, errors: list[str]) -> None:
    """GET ``url`` in a loop, about 40 times a second, until ``stop`` is set."""
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            try:
                client.get(url)
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {exc!r}")
            stop.wait(0.02)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Four demo apps (two healthy 1.0, 2.0 with 5% errors, 3.0 with 50ms latency) under light load."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    apps: dict[str, App] = {}
    with tempfile.TemporaryDirectory(prefix="rollwave-analysis-") as tmp:
        root = Path(tmp)
        fleet = Fleet(apps=apps, root=root)
        try:
            for name, version, env, _ in FLEET:
                port = free_port()
                log = root / f"{name}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-S",
                            str(unpack(root, version) / "app.py"),
                            "--port",
                            str(port),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, **env},
                    )
                apps[name] = App(name, version, port, process, log)
            for app in apps.values():
                wait_answering(app)
            for name, _, _, count in FLEET:
                for _ in range(count):
                    thread = threading.Thread(
                        target=load, args=(f"{apps[name].url}/", stop, fleet.errors), daemon=True
                    )
                    thread.start()
                    threads.append(thread)
            yield fleet
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            for app in apps.values():
                if app.process.poll() is None:
                    app.process.kill()
                app.process.wait()


@pytest.fixture(scope="module")
def prometheus(fleet: Fleet) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping the fleet every second; its URL."""
    demo = static_job("demo", {name: f"127.0.0.1:{app.port}" for name, app in fleet.apps.items()})
    # A decoy whose name "web.3" matches as an unescaped regex, on web-1's port.
    decoy = static_job("decoy", {"webx3": f"127.0.0.1:{fleet.apps['web-1'].port}"})
    with prometheus_server([demo, decoy]) as server:
        server.wait_scraped("demo", 11)  # at least 10s of history for the [10s] rates
        yield server.url


# ------------------------------------------------------------------------- render_query


def test_render_query_escapes_targets_for_a_promql_string() -> None:
    """{targets} becomes a regex alternation of re.escape'd names, written as a PromQL string; other values are escaped too."""
    rendered = render_query(
        'up{rollwave_target=~"{targets}",version="{version}",service="{service}"}',
        {"targets": ["web.3", "web-4"], "version": "2.4.1", "service": 'a"b'},
    )
    assert rendered == 'up{rollwave_target=~"web\\\\.3|web\\\\-4",version="2.4.1",service="a\\"b"}'


@pytest.mark.parametrize(
    ("template", "values", "message"),
    [
        pytest.param(
            'up{x="{zone}"}',
            {"version": "1"},
            "unknown placeholder {zone}",
            id="unknown placeholder",
        ),
        pytest.param('up{x=~"{targets}"}', {"targets": []}, "has no targets", id="no targets"),
    ],
)
def test_render_query_refuses(template: str, values: dict[str, object], message: str) -> None:
    """A placeholder without a value, or an empty target list, is a QueryError (not a query matching everything)."""
    with pytest.raises(QueryError, match=message):
        render_query(template, values)


# --------------------------------------------------------------------------- prometheus


def test_prometheus_error_rate_of_a_failing_version(prometheus: str) -> None:
    """The rendered error-rate query measures about 5% for the version injecting 5% errors."""

    async def scenario() -> float:
        async with PrometheusSource(prometheus, timeout=5) as source:
            return await source.measure(ERROR_RATE, context("2.0"))

    assert asyncio.run(scenario()) == pytest.approx(0.05, abs=0.01)


def test_prometheus_error_rate_of_a_healthy_version(prometheus: str) -> None:
    """A version that never answered a 5xx has no 5xx series: the plain ratio is NoData, ``or vector(0)`` measures 0."""

    async def scenario() -> tuple[NoData, float]:
        async with PrometheusSource(prometheus, timeout=5) as source:
            with pytest.raises(NoData) as no_data:
                await source.measure(ERROR_RATE, context("1.0"))
            return no_data.value, await source.measure(ERROR_RATE_OR_ZERO, context("1.0"))

    no_data, value = asyncio.run(scenario())
    assert "matched no series" in str(no_data)
    assert value == 0.0


def test_prometheus_bad_query_is_a_query_error_with_prometheus_message(prometheus: str) -> None:
    """A syntactically bad query raises QueryError carrying Prometheus' errorType and error text."""

    async def scenario() -> QueryError:
        async with PrometheusSource(prometheus, timeout=5) as source:
            with pytest.raises(QueryError) as caught:
                await source.measure("sum(rate(rollwave_demo_requests_total[10s])", context("1.0"))
            return caught.value

    error = asyncio.run(scenario())
    assert error.error_type == "bad_data"
    assert "parse error" in error.error
    assert error.error in str(error)
    assert str(error).startswith("Prometheus refused the query 'sum(rate(")


def test_prometheus_query_without_series_is_no_data(prometheus: str) -> None:
    """A query matching no series raises NoData, for instant and range queries."""

    async def scenario() -> None:
        async with PrometheusSource(prometheus, timeout=5) as source:
            with pytest.raises(NoData, match="matched no series"):
                await source.instant('rollwave_demo_requests_total{version="9.9"}')
            now = time.time()
            with pytest.raises(NoData, match="matched no series"):
                await source.range('rollwave_demo_info{version="9.9"}', now - 10, now, 1)

    asyncio.run(scenario())


def test_prometheus_several_series_are_refused_by_measure(prometheus: str) -> None:
    """A check needs one number: a query giving one series per version is a QueryError asking to aggregate."""

    async def scenario() -> None:
        async with PrometheusSource(prometheus, timeout=5) as source:
            with pytest.raises(QueryError, match="returned 3 series") as caught:
                await source.measure(
                    'sum by (version) (rollwave_demo_info{job="demo"})', context("1.0")
                )
            assert caught.value.hint is not None
            assert "sum(...)" in caught.value.hint

    asyncio.run(scenario())


def test_prometheus_unreachable(fleet: Fleet) -> None:
    """A closed port, and a server that is not Prometheus, raise SourceUnreachable (no httpx exception)."""

    async def scenario() -> tuple[SourceUnreachable, SourceUnreachable]:
        async with (
            PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=2) as closed,
            PrometheusSource(fleet.apps["web-1"].url, timeout=2) as not_prometheus,
        ):
            with pytest.raises(SourceUnreachable) as refused:
                await closed.measure("up", context("1.0"))
            with pytest.raises(SourceUnreachable) as wrong:
                await not_prometheus.measure("up", context("1.0"))
            return refused.value, wrong.value

    refused, wrong = asyncio.run(scenario())
    assert "is unreachable: ConnectError" in str(refused)
    assert "without a Prometheus API answer" in str(wrong)


def test_prometheus_instant_and_range_results(prometheus: str) -> None:
    """instant() gives labelled samples, a scalar one unlabelled sample, and range() time-ordered points per series."""

    async def scenario() -> None:
        async with PrometheusSource(prometheus, timeout=5) as source:
            samples = await source.instant('rollwave_demo_info{job="demo"}')
            assert sorted((s.labels["rollwave_target"], s.labels["version"]) for s in samples) == [
                ("web-1", "1.0"),
                ("web-2", "1.0"),
                ("web-4", "3.0"),
                ("web.3", "2.0"),
            ]
            (scalar,) = await source.instant("scalar(vector(42))")
            assert (scalar.labels, scalar.value) == ({}, 42.0)
            now = time.time()
            series = await source.range(
                'sum by (version) (rate(rollwave_demo_requests_total{job="demo"}[5s]))',
                now - 8,
                now,
                1,
            )
            assert {s.labels["version"] for s in series} == {"1.0", "2.0", "3.0"}
            for item in series:
                times = [t for t, _ in item.points]
                assert times == sorted(times)
                assert len(times) >= 5
                assert all(value > 0 for _, value in item.points)

    asyncio.run(scenario())


def test_prometheus_targets_placeholder_selects_exactly_the_wave(prometheus: str) -> None:
    """{targets} as an escaped alternation selects exactly the named targets: "web.3" does not match the decoy "webx3"."""

    async def scenario() -> list[set[str]]:
        async with PrometheusSource(prometheus, timeout=5) as source:
            found = []
            for targets in (["web.3"], ["web.3", "web-4"]):
                query = render_query('up{rollwave_target=~"{targets}"}', {"targets": targets})
                found.append({s.labels["rollwave_target"] for s in await source.instant(query)})
            return found

    assert asyncio.run(scenario()) == [{"web.3"}, {"web.3", "web-4"}]


# ------------------------------------------------------------------------------- scrape


def test_scrape_measures_without_prometheus(fleet: Fleet) -> None:
    """Reading /metrics directly, two reads 3s apart give ~5% errors for 2.0, 0 for 1.0, and the 50ms latency of 3.0."""

    async def scenario() -> dict[str, float]:
        async with ScrapeSource(fleet.metrics_urls(), timeout=5) as source:
            with pytest.raises(NoData, match="two reads"):
                await source.measure("error_rate", context("1.0"))
            await source.refresh()
            await asyncio.sleep(3)
            await source.refresh()
            queries = {
                "failing": ('error_rate{version="{version}"}', "2.0"),
                "healthy": ('error_rate{version="{version}"}', "1.0"),
                "rate": ('request_rate{version="{version}"}', "1.0"),
                "slow_p50": ('latency_p50{version="{version}"}', "3.0"),
                "fast_p99": ('latency_p99{target="web-1"}', "1.0"),
            }
            return {
                key: await source.measure(query, context(version))
                for key, (query, version) in queries.items()
            }

    values = asyncio.run(scenario())
    assert values["failing"] == pytest.approx(0.05, abs=0.015)
    assert values["healthy"] == 0.0
    assert values["rate"] > 20  # two targets at about 40 req/s each
    assert 0.05 <= values["slow_p50"] <= 0.1
    assert values["fast_p99"] < 0.05


def test_scrape_refuses_bad_expressions_and_reports_no_data(fleet: Fleet) -> None:
    """A bad scrape expression or {targets} is a QueryError; a version nobody runs is NoData."""

    async def scenario() -> None:
        async with ScrapeSource({"web-1": fleet.metrics_urls()["web-1"]}, timeout=5) as source:
            await source.refresh()
            await asyncio.sleep(0.3)
            await source.refresh()
            with pytest.raises(QueryError, match="unknown statistic 'latency_p95'"):
                await source.measure("latency_p95", context("1.0"))
            with pytest.raises(QueryError, match="has no meaning"):
                await source.measure('error_rate{target="{targets}"}', context("1.0"))
            with pytest.raises(NoData, match=r"versions seen: 1\.0"):
                await source.measure('error_rate{version="{version}"}', context("9.9"))

    asyncio.run(scenario())


def test_scrape_unreachable_target_loses_only_its_window(fleet: Fleet) -> None:
    """A target on a closed port, or answering 404, makes refresh raise SourceUnreachable; the others still measure."""
    urls = {
        "web-1": fleet.metrics_urls()["web-1"],
        "gone": f"http://127.0.0.1:{free_port()}/metrics",
        "wrong-path": f"{fleet.apps['web-2'].url}/nope",
    }

    async def scenario() -> tuple[SourceUnreachable, float]:
        async with ScrapeSource(urls, timeout=2) as source:
            with pytest.raises(SourceUnreachable):
                await source.refresh()
            await asyncio.sleep(0.5)
            with pytest.raises(SourceUnreachable) as caught:
                await source.refresh()
            return caught.value, await source.measure("request_rate", context("1.0"))

    error, rate = asyncio.run(scenario())
    assert "gone: GET http://127.0.0.1:" in str(error)
    assert "failed: ConnectError" in str(error)
    assert "wrong-path: GET " in str(error)
    assert "-> 404" in str(error)
    assert rate > 0


def test_scrape_text_that_is_not_metrics_is_unreachable(fleet: Fleet) -> None:
    """A target URL answering 200 with text that is not the exposition format is SourceUnreachable, not a crash."""

    async def scenario() -> SourceUnreachable:
        async with ScrapeSource(
            {"web-1": f"{fleet.apps['web-1'].url}/healthz"}, timeout=2
        ) as source:
            with pytest.raises(SourceUnreachable) as caught:
                await source.refresh()
            return caught.value

    assert "not the Prometheus text format" in str(asyncio.run(scenario()))


# ------------------------------------------------------------------------------- canary


def collect(fleet: Fleet, intervals: int, seconds: float) -> list[ScrapeDelta]:
    """Scrape every target ``intervals`` times ``seconds`` apart: one window per interval."""

    async def scenario() -> list[ScrapeDelta]:
        async with ScrapeSource(fleet.metrics_urls(), timeout=5) as source:
            await source.refresh()
            windows = []
            for _ in range(intervals):
                await asyncio.sleep(seconds)
                await source.refresh()
                windows.append(source.delta())
            return windows

    return asyncio.run(scenario())


def test_canary_with_added_latency_fails(fleet: Fleet) -> None:
    """Per-interval p50 of the version with 50ms latency against a healthy one: the canary fails on high latency."""
    windows = collect(fleet, intervals=8, seconds=0.4)
    canary = samples_by_interval(windows, parse_query('latency_p50{version="3.0"}'))
    baseline = samples_by_interval(windows, parse_query('latency_p50{version="1.0"}'))
    verdict = canary_judge(
        {"latency_p50": canary},
        {"latency_p50": baseline},
        directions={},
        confidence=0.95,
        pass_score=95,
        marginal=75,
        min_samples=6,
    )
    assert verdict.outcome is CanaryOutcome.FAIL, verdict.message
    assert verdict.score == 0.0
    assert verdict.metrics[0].classification is MetricClass.HIGH


def test_canary_against_the_same_version_passes(fleet: Fleet) -> None:
    """Two targets of the same healthy version, compared per interval on p50 and error rate, pass with a full score."""
    windows = collect(fleet, intervals=8, seconds=0.4)
    canary = {
        stat: samples_by_interval(windows, parse_query(f'{stat}{{target="web-1"}}'))
        for stat in ("latency_p50", "error_rate")
    }
    baseline = {
        stat: samples_by_interval(windows, parse_query(f'{stat}{{target="web-2"}}'))
        for stat in ("latency_p50", "error_rate")
    }
    verdict = canary_judge(
        canary, baseline, directions={}, confidence=0.95, pass_score=95, marginal=75, min_samples=6
    )
    assert verdict.outcome is CanaryOutcome.PASS, verdict.message
    assert verdict.score is not None
    assert verdict.score >= 95
    assert fleet.errors == []
