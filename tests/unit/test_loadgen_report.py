"""The load generator's pure report arithmetic."""

from __future__ import annotations

import pytest

from rollwave.demo.loadgen import Bucket, Sample, build_report, classify_status


def test_worked_example_from_the_docstring() -> None:
    """Totals, failures by kind and a dense per-second version timeline, as documented."""
    samples = [
        Sample(0, 100.2, 0.01, "ok", 200, "v1"),
        Sample(1, 101.7, 0.02, "http_5xx", 500, "v1"),
        Sample(2, 101.9, 0.03, "connect"),
        Sample(3, 103.0, 0.04, "ok", 200, "v2"),
    ]

    report = build_report(samples, started_at=100.0, ended_at=103.5)

    assert (report.total, report.ok, report.failed) == (4, 2, 2)
    assert report.failures == {"connect": 1, "http_5xx": 1}
    assert report.timeline == (
        Bucket(0, {"v1": 1}, 0),
        Bucket(1, {"v1": 1}, 2),
        Bucket(2, {}, 0),
        Bucket(3, {"v2": 1}, 0),
    )
    assert report.versions == ("v1", "v2")
    assert report.version_counts() == {"v1": 2, "v2": 1}
    assert report.duration == pytest.approx(3.5)


def test_empty_report_has_one_empty_bucket_and_zero_latency() -> None:
    """No samples give zero counts, zero latencies and a timeline that still covers the time."""
    report = build_report([], started_at=10.0, ended_at=12.5)

    assert (report.total, report.ok, report.failed) == (0, 0, 0)
    assert report.failures == {}
    assert [b.second for b in report.timeline] == [0, 1, 2]
    assert (report.latency_p50, report.latency_p99, report.latency_max) == (0.0, 0.0, 0.0)


def test_latency_quantiles_use_nearest_rank() -> None:
    """p50 and p99 are nearest-rank quantiles of the finished requests' latencies."""
    samples = [Sample(i, 0.0, (i + 1) / 1000, "ok", 200, "v") for i in range(100)]

    report = build_report(samples, started_at=0.0, ended_at=1.0)

    assert report.latency_p50 == pytest.approx(0.050)
    assert report.latency_p99 == pytest.approx(0.099)
    assert report.latency_max == pytest.approx(0.100)


def test_samples_sent_after_the_end_extend_the_timeline() -> None:
    """A request sent after ``ended_at`` (a snapshot racing a send) still gets its bucket."""
    report = build_report([Sample(0, 5.2, 0.0, "ok", 200, "v")], started_at=0.0, ended_at=1.0)

    assert len(report.timeline) == 6
    assert report.timeline[5].versions == {"v": 1}


def test_to_dict_is_plain_data() -> None:
    """The JSON form carries totals, failures, latencies and the timeline."""
    report = build_report([Sample(0, 0.5, 0.25, "timeout")], started_at=0.0, ended_at=1.0)

    assert report.to_dict() == {
        "started_at": 0.0,
        "ended_at": 1.0,
        "total": 1,
        "ok": 0,
        "failed": 1,
        "failures": {"timeout": 1},
        "latency": {"p50": 0.25, "p99": 0.25, "max": 0.25},
        "timeline": [{"second": 0, "versions": {}, "failed": 1}],
    }


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (302, "ok"),
        (404, "http_4xx"),
        (499, "http_4xx"),
        (500, "http_5xx"),
        (503, "http_5xx"),
    ],
    ids=["200", "302", "404", "499", "500", "503"],
)
def test_classify_status(status: int, outcome: str) -> None:
    """Statuses below 400 are ok; 4xx and 5xx are failures of their own kind."""
    assert classify_status(status) == outcome
