"""Zero downtime, proven: the `rollwave` CLI rolling sample-app slots behind a real HAProxy under load.

Every request goes through HAProxy on a fresh connection (open loop, so a
failing server cannot slow the load down and hide its failures); the load
generator runs on its own event loop in a thread while the CLI runs in a
subprocess. HAProxy checks its servers itself (``GET /healthz``), rollwave
drains and enables them over the runtime API, and these tests read the
servers' states over that API on their own.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollwave.demo.loadgen import LoadReport
from support.lb import BackgroundLoad, HAProxyFleet, haproxy_fleet
from support.processes import Processes

pytestmark = pytest.mark.integration

V1, V2 = "1.0.0", "2.0.0"
RATE = 200.0  # requests per second through HAProxy
LOCK_TTL = 3  # seconds; the lease of a killed engine expires after this
# A request fails when HAProxy cannot answer it (after its retries: up to four 1s connects),
# not when it is merely slow on a busy machine: the client waits longer than HAProxy does.
LOAD_TIMEOUT = 10.0


@pytest.fixture
def fleet(tmp_path: Path, procs: Processes) -> Iterator[HAProxyFleet]:
    with haproxy_fleet(tmp_path, procs, size=6) as fleet:
        yield fleet


def deploy_v1(fleet: HAProxyFleet, behaviour: dict[str, float] | None = None) -> None:
    """Put every slot on v1 at once and wait until HAProxy has every server UP."""
    fleet.build(V1, behaviour)
    fleet.write_spec(V1, waves=["100%"], max_unavailable="100%")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    fleet.wait_all_up()
    assert set(fleet.served().values()) == {V1}


def describe(report: LoadReport) -> str:
    sent = [sum(b.versions.values()) + b.failed for b in report.timeline]
    return (
        f"{report.total} requests, {report.failed} failed "
        f"{dict(report.failures)}, versions {report.version_counts()}, "
        f"p99 {report.latency_p99 * 1000:.0f}ms, max {report.latency_max * 1000:.0f}ms, "
        f"sent per second {sent}, failed per second {[b.failed for b in report.timeline]}"
    )


def assert_no_request_failed(fleet: HAProxyFleet, report: LoadReport, rate: float) -> None:
    """The load kept its rate, and neither the client nor HAProxy saw a request fail.

    The rate comes first: a generator that fell behind (a machine busy with
    other work) times out on its own and says nothing about the rollout. It
    is counted by send time over the whole seconds of sending (the report's
    duration also covers the wait for the last answers). HAProxy's retries
    may hide a refused connection (``wredis``); they are shown, not failed.
    """
    sent = [sum(b.versions.values()) + b.failed for b in report.timeline]
    last = max(i for i, n in enumerate(sent) if n)
    whole = sent[:last]  # the last second of sending was cut short by stop()
    assert whole, sent
    behind = f"the load generator fell behind {rate:g}/s, so its failures prove nothing: {describe(report)}"
    assert sum(whole) / len(whole) >= 0.9 * rate, behind
    assert min(whole) >= 0.5 * rate, behind
    assert report.failed == 0, describe(report)
    backend = fleet.lb_counters()["BACKEND"]
    server_side = {k: backend[k] for k in ("econ", "eresp", "hrsp_5xx", "srv_abrt")}
    assert not any(server_side.values()), f"HAProxy saw failures: {fleet.lb_problems()}"


def v2_shares(report: LoadReport) -> list[float]:
    """v2's share of the answers in each second of the timeline (seconds without answers left out)."""
    shares = []
    for bucket in report.timeline:
        answered = sum(bucket.versions.values())
        if answered:
            shares.append(bucket.versions.get(V2, 0) / answered)
    return shares


def test_rollout_under_load_drops_no_request(fleet: HAProxyFleet) -> None:
    """Six targets rolled from v1 to v2 in waves [1, 50%, 100%] through HAProxy at 200 requests per second fail no request."""
    deploy_v1(fleet)
    fleet.build(V2)
    fleet.write_spec(V2, waves=[1, "50%", "100%"], max_unavailable=2, bake="1s")
    with BackgroundLoad(fleet.url, RATE, LOAD_TIMEOUT) as load:
        time.sleep(1.5)  # v1 only, before anything changes
        result = fleet.run("apply", "--yes")
        time.sleep(1.5)  # and v2 only, after the rollout
        report = load.stop()
    print(
        f"\nrollout: {describe(report)}; v2 share per second {v2_shares(report)}; "
        f"HAProxy {fleet.lb_problems()}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    assert_no_request_failed(fleet, report, RATE)
    shares = v2_shares(report)
    assert shares[0] == 0.0, shares
    assert shares[-1] == 1.0, shares
    assert any(0.0 < s < 1.0 for s in shares), shares  # the waves show: v1 and v2 answered together
    for earlier, later in itertools.pairwise(shares):
        # v2's share only rises: a drain takes a v1 server out, an enable adds a v2 one.
        assert later >= earlier - 0.1, shares
    assert set(fleet.served().values()) == {V2}
    assert set(fleet.current().values()) == {V2}
    fleet.assert_all_in_service()
    fleet.assert_one_process_each()


def test_unhealthy_version_is_rolled_back_under_load(fleet: HAProxyFleet) -> None:
    """A v2 that never turns healthy is rolled back under load without a failed request, every server back on v1 and in service."""
    deploy_v1(fleet)
    fleet.build(V2, {"fail_health": True})
    fleet.write_spec(V2, waves=[1, "50%", "100%"], max_unavailable=2, deadline="2s")
    with BackgroundLoad(fleet.url, RATE, LOAD_TIMEOUT) as load:
        time.sleep(0.5)
        load.mark("rollout")
        result = fleet.run("apply", "--yes")
        time.sleep(1.0)
        load.stop()
        report = load.report_since("rollout")
    print(f"\nrollback: {describe(report)}; HAProxy {fleet.lb_problems()}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled_back" in result.stdout
    status = fleet.status()
    assert status["state"] == "rolled_back"
    assert status["services"][0]["failed"] == ["app-1"]
    # The canary was drained before it was replaced, and the unhealthy v2 was never enabled:
    # no request failed and none was answered by v2.
    assert_no_request_failed(fleet, report, RATE)
    assert report.version_counts().keys() == {V1}, describe(report)
    assert set(fleet.served().values()) == {V1}
    assert set(fleet.current().values()) == {V1}
    fleet.assert_all_in_service()
    fleet.assert_one_process_each()


def test_engine_killed_during_drain_resumes_and_leaves_nothing_drained(
    fleet: HAProxyFleet,
) -> None:
    """An engine SIGKILLed while it waits for a drain is resumed by a later apply, which completes and leaves no server drained or in maintenance."""
    # v1 answers slowly, so a drained server keeps sessions for a while and the drain is observable.
    deploy_v1(fleet, {"latency_ms": 800})
    fleet.build(V2)
    fleet.env["ROLLWAVE_LOCK_TTL"] = str(LOCK_TTL)
    fleet.write_spec(V2, waves=[1, "50%", "100%"], max_unavailable=2, drain="2s")
    rate = 100.0
    with BackgroundLoad(fleet.url, rate, LOAD_TIMEOUT) as load:
        time.sleep(1.0)
        load.mark("rollout")
        before = len(fleet.journal())
        engine = fleet.popen("apply", "--yes")
        fleet.wait_for("wait_drained", "begin", "app-2", since=before, timeout=60)
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=10)
        killed_at = time.monotonic()
        after_kill = fleet.journal()[before:]
        left = fleet.lb_summary()
        # The kill landed inside the drain: begun, not finished.
        assert not any(
            k == "wait_drained" and p != "begin" and t == "app-2" for k, p, t, _ in after_kill
        ), [e[:3] for e in after_kill]
        assert left["app-2"].startswith("DRAIN"), left
        time.sleep(max(0.0, killed_at + LOCK_TTL + 0.5 - time.monotonic()))
        resumed = fleet.run("apply", "--yes")
        time.sleep(1.0)
        load.stop()
        report = load.report_since("rollout")
    print(
        f"\nkill during drain: HAProxy after the kill {left}; {describe(report)}; "
        f"HAProxy {fleet.lb_problems()}"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming deployment" in resumed.stdout
    assert any(k == "resume" for k, _, _, _ in fleet.journal())
    fleet.assert_all_in_service()
    assert set(fleet.served().values()) == {V2}
    assert set(fleet.current().values()) == {V2}
    fleet.assert_one_process_each()
    assert_no_request_failed(fleet, report, rate)


def test_missing_haproxy_server_is_refused_before_any_change(fleet: HAProxyFleet) -> None:
    """A server template naming a server HAProxy does not have makes `plan --check` and `apply` exit 2 naming the target, with nothing changed."""
    fleet.build(V1)
    for name in fleet.names:
        fleet.set_var(name, "lb_server", name)
    fleet.write_spec(V1, server="{lb_server}")
    good = fleet.run("plan", "--check")
    assert good.returncode == 0, good.stdout + good.stderr
    fleet.set_var("app-4", "lb_server", "app-40")
    fleet.write_spec(V1, server="{lb_server}")
    expected = (
        f"app/app-4: preflight: app-4: haproxy: no such server app/app-40 (socket {fleet.socket})"
    )
    for argv in (("plan", "--check"), ("apply", "--yes")):
        result = fleet.run(*argv)
        assert result.returncode == 2, result.stdout + result.stderr
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        named = [line for line in result.stderr.splitlines() if "preflight:" in line]
        assert named == [line for line in named if "app/app-4:" in line], result.stderr
    assert set(fleet.current().values()) == {None}
    assert all(pids == [] for pids in fleet.processes().values())
    assert fleet.journal() == []
    states = fleet.lb_states()
    assert not any(s.drain or s.maint for s in states.values()), fleet.lb_summary()
