"""Metric analysis between waves, end to end: the `rollwave` CLI rolling sample-app slots behind HAProxy under load.

Four slots of the sample app run under the local driver behind a real
HAProxy, which rollwave drains and enables over its runtime API; a load
generator on its own event loop (in a thread) sends ~150 requests per
second through HAProxy while the CLI runs in a subprocess. Version 2 is
rolled out in waves ``[1, 100%]`` with a bake after the first wave, during
which rollwave measures the new version:

- through a real Prometheus scraping the four slot ports every second;
- by reading the slots' ``/metrics`` itself (the scrape provider);
- comparing the canary's latency with the baseline's (Mann-Whitney U).

A v2 that is bad only in its metrics (5% of answers 500, or 50 ms slower)
passes every health check, and must be rolled back by analysis alone; a v2
without the defect must pass its analysis and complete.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from rollwave.demo.haproxy import HAProxyProcess
from rollwave.demo.loadgen import LoadGenerator, LoadReport
from support.fleet import LocalFleet
from support.processes import Processes, free_port
from support.prometheus import PrometheusServer, prometheus_server, static_job
from support.requirements import require_binary

pytestmark = pytest.mark.integration

V1, V2 = "1.0.0", "2.0.0"
BACKEND = "app"
SLOTS = 4
RATE = 150.0  # requests per second through HAProxy: ~37/s for each slot
INTERVAL = 3.0  # analysis.interval of the threshold checks, seconds
SCRAPE_INTERVAL = 1.0  # Prometheus' scrape_interval, seconds
# The 5xx share of the requests v2 answered over the last 5s. A version that never
# answered a 5xx has no 5xx series at all: `or vector(0)` makes that 0 rather than no data.
PROMQL_ERROR_RATE = (
    '(sum(rate(rollwave_demo_requests_total{code=~"5..",version="{version}"}[5s])) or vector(0))'
    ' / sum(rate(rollwave_demo_requests_total{version="{version}"}[5s]))'
)
SCRAPE_ERROR_RATE = 'error_rate{version="{version}"}'
METRICS_URL = "http://127.0.0.1:{http_port}/metrics"
# When the first failing measurement may come, after `bake begin`: at the latest the second
# step (2 intervals). The first step may still see too little of v2, which went into service
# just before the bake began: Prometheus' rate() needs two scrapes of v2's 5xx series inside
# its 5s window, and that series is born only with v2's 20th answer (~0.6s at ~37 req/s);
# by the second step (6s) it has four or more. On top: one scrape interval of lag (the
# query sees data up to 1s old) and 0.5s for the engine's poll, the query and the journal
# write on a busy two-core machine.
FAIL_WITHIN = 2 * INTERVAL + SCRAPE_INTERVAL + 0.5
SLACK = 0.6  # seconds a measurement may come after its due time


# ------------------------------------------------------------------------------ set-up


class BackgroundLoad:
    """A LoadGenerator on its own event loop in a daemon thread, so it keeps its rate while the CLI runs."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.report: LoadReport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="analysis-load", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            # A generous timeout: a request fails when HAProxy cannot answer, not when it is slow.
            generator = LoadGenerator(self.url, self.rate, timeout=10.0)
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            generator.start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                self.report = await generator.stop()

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            self._signal_stop()
            raise RuntimeError("the load generator did not start") from self._error
        return self

    def _signal_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    def stop(self) -> LoadReport:
        self._signal_stop()
        self._thread.join(30)
        if self._error is not None:
            raise RuntimeError("the load generator failed") from self._error
        assert self.report is not None, "the load generator did not stop within 30s"
        return self.report

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            self.stop()


class AnalysisFleet(LocalFleet):
    """Four sample-app slots behind a real HAProxy that rollwave drains and enables over its socket."""

    def __init__(self, base: Path, procs: Processes, lb_dir: Path) -> None:
        super().__init__(base, SLOTS, procs)
        self.haproxy = HAProxyProcess(
            lb_dir,
            free_port(),
            BACKEND,
            [(name, "127.0.0.1", self.ports[name]) for name in self.names],
            check=True,
        )

    def lb_service(self, version: str) -> dict[str, Any]:
        service = self.service(version)
        service["traffic"] = {
            "haproxy": {
                "socket": str(self.haproxy.socket_path),
                "backend": BACKEND,
                "server": "{name}",
                "wait_up": "10s",
            },
            "drain": "500ms",
        }
        return service

    def write_lb_spec(
        self, version: str, *, analysis: dict[str, Any] | None = None, **options: Any
    ) -> Path:
        """rollwave.yaml with the HAProxy traffic manager, and ``analysis`` when given."""
        return self.write_spec(
            version,
            services={"app": self.lb_service(version)},
            extra={"analysis": analysis} if analysis else None,
            **options,
        )

    def deploy_v1(self) -> None:
        """Every slot on v1 at once, then wait until each answers."""
        self.build(V1)
        self.write_lb_spec(V1, waves=["100%"], max_unavailable="100%")
        result = self.run("apply", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(self.served().values()) == {V1}

    def slot_addresses(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}


@pytest.fixture
def fleet(tmp_path: Path, procs: Processes) -> Iterator[AnalysisFleet]:
    """The fleet under ``tmp_path`` (its slots ended by ``procs``), HAProxy in a short dir under /tmp."""
    require_binary("haproxy", "haproxy")
    lb_dir = Path(tempfile.mkdtemp(prefix="rw-an-", dir="/tmp"))  # the socket path must be short
    try:
        fleet = AnalysisFleet(tmp_path, procs, lb_dir)
        fleet.haproxy.start()
        try:
            yield fleet
        finally:
            fleet.haproxy.stop()
    finally:
        shutil.rmtree(lb_dir, ignore_errors=True)


@pytest.fixture
def prometheus(fleet: AnalysisFleet) -> Iterator[PrometheusServer]:
    """A real Prometheus on loopback scraping the four slot ports every second."""
    with prometheus_server(
        [static_job("slots", fleet.slot_addresses())], scrape_interval=f"{SCRAPE_INTERVAL:g}s"
    ) as server:
        yield server


# ----------------------------------------------------------------------------- helpers


def threshold_analysis(source: dict[str, str], query: str) -> dict[str, Any]:
    return {
        "interval": f"{INTERVAL:g}s",
        "checks": [{"name": "error-rate", **source, "query": query, "max": 0.01}],
    }


def roll_v2(
    fleet: AnalysisFleet,
    behaviour: dict[str, float] | None,
    analysis: dict[str, Any],
    bake: str,
) -> tuple[Any, LoadReport, float]:
    """Roll v2 out in waves [1, 100%] under load through HAProxy: (CLI result, load report, seconds)."""
    fleet.build(V2, behaviour)
    fleet.write_lb_spec(V2, waves=[1, "100%"], bake=bake, analysis=analysis)
    with BackgroundLoad(fleet.haproxy.url, RATE) as load:
        started = time.monotonic()
        result = fleet.run("apply", "--yes", timeout=180)
        seconds = time.monotonic() - started
        report = load.stop()
    return result, report, seconds


def entries(fleet: AnalysisFleet) -> list[dict[str, Any]]:
    """Every journal entry of the latest deployment, as `rollwave show --json` gives them."""
    return list(fleet.show()["journal"])


def measurements(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in journal if e["kind"] == "measurement"]


def first(journal: list[dict[str, Any]], kind: str, phase: str) -> dict[str, Any]:
    return next(e for e in journal if e["kind"] == kind and e["phase"] == phase)


def assert_rolled_back_by_analysis(
    fleet: AnalysisFleet, result: Any, check: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """v2 passed its health checks, analysis failed it, every slot is on v1; the journal and first failure."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    status = fleet.status()
    assert (status["state"], status["reason"]) == ("rolled_back", "AnalysisFailed"), status
    assert set(fleet.served().values()) == {V1}, fleet.served()
    journal = entries(fleet)
    v2_health = [e for e in journal if e["kind"] == "health" and e["data"].get("version") == V2]
    assert v2_health, "v2 never reached its health checks"
    assert all(e["phase"] != "fail" for e in v2_health), v2_health
    assert any(e["phase"] == "end" for e in v2_health), v2_health
    failed = [m for m in measurements(journal) if m["data"]["status"] in ("failed", "fail")]
    assert failed, measurements(journal)
    failure = failed[0]
    assert failure["data"]["check"] == check, failure
    analysis_fail = first(journal, "analysis", "fail")
    assert analysis_fail["data"]["reason"] == "AnalysisFailed", analysis_fail
    assert failure["data"]["message"] in analysis_fail["data"]["message"]
    # An operator sees why: in `status` and in `show`, as text.
    message = failure["data"]["message"]
    assert message in status["message"], status
    shown = fleet.run("show")
    assert shown.returncode == 0, shown.stderr
    assert message in shown.stdout, shown.stdout
    told = fleet.run("status")
    assert told.returncode == 0, told.stderr
    assert "AnalysisFailed" in told.stdout, told.stdout
    assert message in told.stdout, told.stdout
    return journal, failure


def assert_failed_in_time(journal: list[dict[str, Any]], failure: dict[str, Any]) -> float:
    """The first failing measurement came within FAIL_WITHIN seconds of `bake begin`; the delay."""
    delay = float(failure["at"]) - float(first(journal, "bake", "begin")["at"])
    assert 0 < delay <= FAIL_WITHIN, f"first failure {delay:.2f}s after bake begin"
    return delay


def assert_completed(
    fleet: AnalysisFleet, result: Any, report: LoadReport, bake: float
) -> list[dict[str, Any]]:
    """v2 passed analysis (running each interval, then passed) and runs everywhere."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert fleet.status()["state"] == "succeeded"
    assert set(fleet.served().values()) == {V2}, fleet.served()
    journal = entries(fleet)
    checks = [m["data"] for m in measurements(journal) if m["data"]["check"] == "error-rate"]
    statuses = [m["status"] for m in checks]
    assert statuses, journal
    assert statuses[-1] == "passed", checks
    assert set(statuses[:-1]) == {"running"}, checks
    assert all(m["value"] <= 0.01 for m in checks[:-1]), checks
    assert first(journal, "analysis", "end")
    assert report.failures.get("http_5xx", 0) == 0, report.failures
    assert_bake_schedule(journal, bake)
    return journal


def assert_bake_schedule(journal: list[dict[str, Any]], bake: float) -> None:
    """Step k measures at k intervals after `bake begin`, and the bake ends `bake` seconds after it.

    A regression test: the engine used to count the bake and its intervals
    from after setting the analysis up (about a second, importing scipy),
    so every measurement came that much late and the bake ran that much long.
    SLACK covers the engine's wake-up, one measurement (a query or four
    local scrapes) and a journal write.
    """
    begin = float(first(journal, "bake", "begin")["at"])
    steps = [
        float(e["at"]) - begin
        for e in measurements(journal)
        if e["data"]["check"] == "error-rate" and e["data"]["status"] == "running"
    ]
    expected = [k * INTERVAL for k in range(1, len(steps) + 1)]
    assert len(steps) == int(bake / INTERVAL) - 1, steps  # the step due at the end is the finish
    assert all(0 <= s - e <= SLACK for s, e in zip(steps, expected, strict=True)), (steps, expected)
    ended = float(first(journal, "bake", "end")["at"]) - begin
    assert bake <= ended <= bake + SLACK, ended


def describe(report: LoadReport, seconds: float) -> str:
    return (
        f"apply {seconds:.1f}s; load {report.total} requests ({report.total / max(report.duration, 1e-9):.0f}/s), "
        f"failures {dict(report.failures)}, versions {report.version_counts()}"
    )


# ------------------------------------------------------------------------------ tests


def test_prometheus_error_rate_rolls_back_a_failing_version(
    fleet: AnalysisFleet, prometheus: PrometheusServer
) -> None:
    """A v2 answering 5% 500s passes its health checks but is rolled back by the Prometheus error-rate check in the first bake."""
    fleet.deploy_v1()
    prometheus.wait_scraped("slots", 2)
    analysis = threshold_analysis({"prometheus": prometheus.url}, PROMQL_ERROR_RATE)
    result, report, seconds = roll_v2(fleet, {"error_rate": 0.05}, analysis, bake="15s")
    journal, failure = assert_rolled_back_by_analysis(fleet, result, "error-rate")
    delay = assert_failed_in_time(journal, failure)
    assert failure["data"]["value"] > 0.01, failure
    assert report.failures.get("http_5xx", 0) > 0, describe(report, seconds)  # v2 served the load
    print(f"failed {delay:.2f}s after bake begin; {describe(report, seconds)}")


def test_prometheus_error_rate_passes_a_healthy_version(
    fleet: AnalysisFleet, prometheus: PrometheusServer
) -> None:
    """A healthy v2 measures a 0 error rate through Prometheus in every interval of the bake and completes."""
    fleet.deploy_v1()
    prometheus.wait_scraped("slots", 2)
    analysis = threshold_analysis({"prometheus": prometheus.url}, PROMQL_ERROR_RATE)
    result, report, seconds = roll_v2(fleet, None, analysis, bake="9s")
    assert_completed(fleet, result, report, bake=9)
    assert report.version_counts().get(V2, 0) > 0, describe(report, seconds)
    print(describe(report, seconds))


def test_scrape_error_rate_rolls_back_a_failing_version(fleet: AnalysisFleet) -> None:
    """Without Prometheus, reading the slots' /metrics, a v2 answering 5% 500s is rolled back in the first bake."""
    fleet.deploy_v1()
    analysis = threshold_analysis({"scrape": METRICS_URL}, SCRAPE_ERROR_RATE)
    result, report, seconds = roll_v2(fleet, {"error_rate": 0.05}, analysis, bake="15s")
    journal, failure = assert_rolled_back_by_analysis(fleet, result, "error-rate")
    delay = assert_failed_in_time(journal, failure)
    assert failure["data"]["value"] == pytest.approx(0.05, abs=0.03), failure
    assert report.failures.get("http_5xx", 0) > 0, describe(report, seconds)
    print(f"failed {delay:.2f}s after bake begin; {describe(report, seconds)}")


def test_scrape_error_rate_passes_a_healthy_version(fleet: AnalysisFleet) -> None:
    """Without Prometheus, reading the slots' /metrics, a healthy v2 measures 0 errors in every interval and completes."""
    fleet.deploy_v1()
    analysis = threshold_analysis({"scrape": METRICS_URL}, SCRAPE_ERROR_RATE)
    result, report, seconds = roll_v2(fleet, None, analysis, bake="9s")
    assert_completed(fleet, result, report, bake=9)
    print(describe(report, seconds))


CANARY: dict[str, Any] = {
    "interval": "1s",
    "canary": {
        "metrics": ["latency_p50"],
        "scrape": METRICS_URL,
        "min_samples": 10,
        # 0.99 rather than 0.95: a canary identical to its baseline is called different by
        # chance in 1 run out of 100, not 20; 50ms more latency still gives p far below 0.01.
        "confidence": 0.99,
        "pass": 95,
        "marginal": 75,
    },
}


def canary_measurement(journal: list[dict[str, Any]]) -> dict[str, Any]:
    (canary,) = [m["data"] for m in measurements(journal) if m["data"]["check"] == "canary"]
    return dict(canary)


def test_canary_with_added_latency_fails(fleet: AnalysisFleet) -> None:
    """A canary answering 50 ms slower than its baseline is classed latency_p50 high at the end of the bake and rolled back."""
    fleet.deploy_v1()
    result, report, seconds = roll_v2(fleet, {"latency_ms": 50}, CANARY, bake="14s")
    journal, _ = assert_rolled_back_by_analysis(fleet, result, "canary")
    canary = canary_measurement(journal)
    assert canary["status"] == "fail", canary
    (metric,) = canary["metrics"]
    assert (metric["metric"], metric["class"]) == ("latency_p50", "high"), metric
    assert min(metric["samples"]) >= 10, metric
    assert metric["canary_median"] >= 0.05 > metric["baseline_median"], metric
    print(f"canary {canary}; {describe(report, seconds)}")


def test_canary_without_change_passes(fleet: AnalysisFleet) -> None:
    """A canary no different from its baseline passes with a score at or above the pass threshold and the rollout completes."""
    fleet.deploy_v1()
    result, report, seconds = roll_v2(fleet, None, CANARY, bake="14s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fleet.status()["state"] == "succeeded"
    assert set(fleet.served().values()) == {V2}, fleet.served()
    canary = canary_measurement(entries(fleet))
    assert canary["status"] == "pass", canary
    assert canary["score"] >= CANARY["canary"]["pass"], canary
    (metric,) = canary["metrics"]
    assert metric["class"] == "pass", metric
    assert min(metric["samples"]) >= 10, metric
    print(f"canary {canary}; {describe(report, seconds)}")


class SlowOnceMetrics:
    """A loopback proxy to one slot's /metrics that answers its ``slow_read``-th request ``delay`` seconds late."""

    def __init__(self, upstream: str, slow_read: int, delay: float) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with proxy.lock:
                    proxy.reads += 1
                    late = proxy.reads == slow_read
                if late:
                    time.sleep(delay)
                body = httpx.get(upstream, timeout=5).content
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.reads = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowOnceMetrics:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def test_a_slow_scrape_skips_the_missed_intervals(fleet: AnalysisFleet) -> None:
    """After one scrape 3.5 intervals late, the next measurement waits for the next tick instead of measuring empty windows back to back."""
    # Regression: the engine used to run every missed tick at once, each over a window of a few
    # milliseconds: no requests, so no data, three times in a row, and the healthy v2 was
    # failed as inconclusive (inconclusive_limit 3, inconclusive: fail).
    fleet.deploy_v1()
    slow = "app-2"
    interval = 1.0
    # Read 1 is analysis.start(); read 2, the first step's, is 3.5s late.
    with SlowOnceMetrics(f"http://127.0.0.1:{fleet.ports[slow]}/metrics", 2, 3.5) as proxy:
        for name, port in fleet.ports.items():
            fleet.set_var(name, "metrics_port", proxy.port if name == slow else port)
        analysis = {
            "interval": f"{interval:g}s",
            "checks": [
                {
                    "name": "error-rate",
                    "scrape": "http://127.0.0.1:{metrics_port}/metrics",
                    "query": SCRAPE_ERROR_RATE,
                    "max": 0.01,
                }
            ],
        }
        result, report, seconds = roll_v2(fleet, None, analysis, bake="8s")
        assert proxy.reads >= 3, proxy.reads
    journal = entries(fleet)
    checks = [m for m in measurements(journal) if m["data"]["check"] == "error-rate"]
    assert result.returncode == 0, [m["data"] for m in checks]
    begin = float(first(journal, "bake", "begin")["at"])
    steps = [float(m["at"]) - begin for m in checks[:-1]]
    assert steps[0] >= 3.5 + interval, steps  # the slow step
    # Every later step on a tick of its own (k intervals after `bake begin`), none in a burst.
    ticks = [math.floor(s / interval) for s in steps[1:]]
    assert ticks == sorted(set(ticks)), steps
    assert ticks[0] > steps[0], steps
    assert all(s - k * interval <= SLACK for s, k in zip(steps[1:], ticks, strict=True)), steps
    assert all(m["data"]["status"] == "running" for m in checks[:-1]), [m["data"] for m in checks]
    assert checks[-1]["data"]["status"] == "passed", checks[-1]
    print(f"steps at {[round(s, 2) for s in steps]}; {describe(report, seconds)}")
