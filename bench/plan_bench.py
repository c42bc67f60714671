"""Benchmark the pure planner: 10,000 targets across 5 services.

Run: .venv/bin/python bench/plan_bench.py

Five services of 2,000 targets each (api and worker depend on db and cache,
web depends on api), four zones with ``spread_by: zone``, waves
``[1, 1%, 10%, 50%, 100%]``, ``max_unavailable: 5%``, every target observed
at the previous version. It times ``plan()`` alone and ``plan()`` followed
by ``Plan.to_json()`` (time.perf_counter, best and median of 5 runs), then
measures the peak Python allocation of one run of each under tracemalloc and
the process's peak resident size (ru_maxrss). Goal: under 1 s and 200 MB.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

from rollwave.inventory.model import Target
from rollwave.plan.planner import Plan, plan
from rollwave.spec.model import Spec

SERVICES = {
    "db": [],
    "cache": [],
    "api": ["db", "cache"],
    "worker": ["db", "cache"],
    "web": ["api"],
}
PER_SERVICE = 2_000
ZONES = ("eu-1a", "eu-1b", "eu-1c", "eu-1d")
RUNS = 5
GOAL_SECONDS = 1.0
GOAL_MB = 200.0

Inputs = tuple[Spec, dict[str, list[Target]], dict[str, dict[str, str | None]]]


def build_inputs() -> Inputs:
    """The spec, 10,000 targets (zones interleaved in inventory order) and observed versions."""
    spec = Spec.model_validate(
        {
            "environment": "production",
            "inventory": "inventory.yaml",
            "services": {
                name: {
                    "hosts": name,
                    "version": "2.0.0",
                    "driver": {
                        "kind": "local",
                        "artifact": "a",
                        "root": "r/{name}",
                        "start": ["x"],
                    },
                    "depends_on": deps,
                }
                for name, deps in SERVICES.items()
            },
            "strategy": {
                "order": "staged",
                "waves": [1, "1%", "10%", "50%", "100%"],
                "max_unavailable": "5%",
                "bake": "2m",
                "approve_before": [2],
                "spread_by": "zone",
            },
        }
    )
    targets: dict[str, list[Target]] = {}
    observed: dict[str, dict[str, str | None]] = {}
    for s, name in enumerate(SERVICES):
        targets[name] = [
            Target(
                name=f"{name}-{i:04d}",
                address=f"10.{s}.{i // 250}.{i % 250 + 1}",
                groups=(name,),
                vars={"zone": ZONES[i % len(ZONES)], "http_port": 8000 + i % 1000},
            )
            for i in range(PER_SERVICE)
        ]
        observed[name] = {t.name: "1.9.0" for t in targets[name]}
    return spec, targets, observed


def time_runs(action: Callable[[], object]) -> list[float]:
    """Wall time of ``RUNS`` calls of ``action``, in seconds."""
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def traced_peak(action: Callable[[], object]) -> float:
    """Peak Python allocation of one call of ``action``, in MB (tracemalloc)."""
    tracemalloc.start()
    try:
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


def main() -> int:
    spec, targets, observed = build_inputs()
    total = sum(len(t) for t in targets.values())

    def planner_alone() -> Plan:
        return plan(spec, targets, observed)

    def planner_and_json() -> str:
        return plan(spec, targets, observed).to_json()

    result = planner_alone()
    text = planner_and_json()
    waves = sum(len(s.waves) for s in result.services)
    print(f"planner benchmark: {total:,} targets, {len(result.services)} services, {waves} waves")
    print(f"  order: {', '.join(f'{s.name}(stage {s.stage})' for s in result.services)}")
    print(f"  plan JSON: {len(text.encode()) / 1e6:.2f} MB")

    ok = True
    for label, action in (("plan()", planner_alone), ("plan() + to_json()", planner_and_json)):
        times = time_runs(action)
        best, median = min(times), statistics.median(times)
        peak = traced_peak(action)
        ok &= median < GOAL_SECONDS and peak < GOAL_MB
        print(
            f"  {label:<20} best {best * 1000:7.1f} ms   median {median * 1000:7.1f} ms   "
            f"tracemalloc peak {peak:6.1f} MB"
        )
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    ok &= maxrss_mb < GOAL_MB
    print(f"  process ru_maxrss {maxrss_mb:.1f} MB (interpreter, imports and inputs included)")
    print(f"  goal: under {GOAL_SECONDS:g} s and {GOAL_MB:g} MB -> {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
