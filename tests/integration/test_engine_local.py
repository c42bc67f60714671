"""The engine end to end: the `rollwave` CLI driving real processes through the local driver."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from support.fleet import LocalFleet
from support.processes import Processes

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path, procs: Processes) -> LocalFleet:
    fleet = LocalFleet(tmp_path, 5, procs)
    fleet.build("1.0.0")
    fleet.build("2.0.0")
    return fleet


def deploy_v1(fleet: LocalFleet) -> None:
    fleet.write_spec("1.0.0", waves=["100%"], max_unavailable="100%")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 0, result.stderr
    assert set(fleet.served().values()) == {"1.0.0"}


def test_healthy_rollout_of_five_targets(fleet: LocalFleet) -> None:
    """A healthy rollout ends with every target on the new version, serving and enabled."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "50%", "100%"], max_unavailable=2)
    result = fleet.run("apply", "--yes")
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout
    assert set(fleet.served().values()) == {"2.0.0"}
    assert set(fleet.current().values()) == {"2.0.0"}
    assert set(fleet.traffic().values()) == {"ready"}
    fleet.assert_one_process_each()
    # A re-apply changes nothing.
    again = fleet.run("apply", "--yes", "--json")
    assert again.returncode == 0
    assert '"reason": "NothingToDo"' in again.stdout


def test_window_never_exceeds_max_unavailable(fleet: LocalFleet) -> None:
    """At no moment are more than max_unavailable targets between drain and enable."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=["100%"], max_unavailable=2)
    assert fleet.run("apply", "--yes").returncode == 0
    out = set()
    peak = 0
    starts = 0
    for kind, phase, target, data in fleet.journal():
        if data.get("version") != "2.0.0":
            continue
        if kind == "drain" and phase == "begin":
            out.add(target)
            starts += 1
        elif kind == "target" and phase == "end":
            out.discard(target)
        peak = max(peak, len(out))
    assert starts == 5
    assert peak == 2  # the window was used fully, and never exceeded


@pytest.mark.parametrize(
    "behaviour",
    [{"exit_at_start": True}, {"fail_health": True}],
    ids=["exits-at-start", "never-healthy"],
)
def test_bad_version_is_rolled_back(fleet: LocalFleet, behaviour: dict[str, bool]) -> None:
    """A version that exits at start, or never turns healthy, is rolled back: every target serves the old one."""
    deploy_v1(fleet)
    fleet.build("2.0.0", behaviour)
    fleet.write_spec("2.0.0", waves=[1, "100%"], deadline="2s")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled_back" in result.stdout
    assert set(fleet.served().values()) == {"1.0.0"}
    assert set(fleet.current().values()) == {"1.0.0"}
    assert set(fleet.traffic().values()) == {"ready"}
    fleet.assert_one_process_each()
    status = fleet.status()
    assert status["state"] == "rolled_back"
    assert status["reason"] == "BudgetExceeded"
    assert status["services"][0]["failed"] == ["app-1"]


def test_tolerate_one_failure(fleet: LocalFleet) -> None:
    """With tolerate: 1 one failing target lets the rollout complete; it is left drained and reported."""
    deploy_v1(fleet)
    fleet.set_var("app-3", "fail", "1")
    fleet.write_spec("2.0.0", waves=[1, "100%"], tolerate=1, deadline="2s")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    served = fleet.served()
    assert {n: v for n, v in served.items() if n != "app-3"} == dict.fromkeys(
        ["app-1", "app-2", "app-4", "app-5"], "2.0.0"
    )
    assert fleet.traffic()["app-3"] == "drain"
    assert fleet.status()["services"][0]["failed"] == ["app-3"]


def test_first_deploy_rolled_back_leaves_targets_stopped(fleet: LocalFleet) -> None:
    """Rolling back a first deployment (no previous release) leaves the targets stopped."""
    fleet.build("1.0.0", {"fail_health": True})
    fleet.write_spec("1.0.0", waves=[1, "100%"], deadline="1s")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 1
    assert set(fleet.served().values()) == {"down"}
    assert set(fleet.current().values()) == {None}
    assert all(pids == [] for pids in fleet.processes().values())


def test_approve_from_another_process(fleet: LocalFleet) -> None:
    """A wave behind approve_before waits until `rollwave approve` from another process, who is journaled."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], approve_before=[2])
    engine = fleet.popen("apply", "--yes")
    deadline = time.monotonic() + 30
    while fleet.status()["reason"] != "AwaitingApproval":
        assert time.monotonic() < deadline, "never reached the approval gate"
        time.sleep(0.2)
    assert list(fleet.served().values()).count("2.0.0") == 1
    approved = fleet.run("approve", "--wave", "2")
    assert approved.returncode == 0, approved.stderr
    assert engine.wait(timeout=60) == 0
    assert set(fleet.served().values()) == {"2.0.0"}
    entries = fleet.show()["journal"]
    approval = [e for e in entries if e["kind"] == "approval" and e["phase"] == "end"]
    assert approval
    assert "@" in approval[0]["data"]["who"]


def test_pause_resume_from_another_process(fleet: LocalFleet) -> None:
    """Pause holds the next wave within a second; resume lets the rollout finish."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], bake="2s")
    before = len(fleet.journal())
    engine = fleet.popen("apply", "--yes")
    fleet.wait_for("bake", "begin", since=before)
    assert fleet.run("pause").returncode == 0
    paused_at = time.monotonic()
    while fleet.status()["state"] != "paused":
        assert time.monotonic() - paused_at < 1.5, (
            "the engine did not react to pause within a second"
        )
        time.sleep(0.05)
    time.sleep(3)  # longer than the bake: a paused rollout does not go on
    assert not any(
        k == "wave" and p == "begin" and d.get("wave") == 2 for k, p, _, d in fleet.journal()
    )
    assert fleet.run("resume").returncode == 0
    assert engine.wait(timeout=60) == 0
    assert set(fleet.served().values()) == {"2.0.0"}
    commands = [c["kind"] for c in fleet.show()["commands"]]
    assert commands == ["pause", "resume"]


def test_abort_from_another_process(fleet: LocalFleet) -> None:
    """Abort stops the rollout without rollback and the engine exits 4."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], bake="30s")
    before = len(fleet.journal())
    engine = fleet.popen("apply", "--yes")
    fleet.wait_for("bake", "begin", since=before)
    assert fleet.run("abort").returncode == 0
    assert engine.wait(timeout=10) == 4
    assert fleet.status()["state"] == "aborted"
    assert sorted(fleet.served().values()) == ["1.0.0", "1.0.0", "1.0.0", "1.0.0", "2.0.0"]


def test_rollback_command_on_running_deployment(fleet: LocalFleet) -> None:
    """`rollwave rollback` during a bake rolls every touched target back to its previous release."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[2, "100%"], max_unavailable=2, bake="30s")
    before = len(fleet.journal())
    engine = fleet.popen("apply", "--yes")
    fleet.wait_for("bake", "begin", since=before)
    assert fleet.run("rollback").returncode == 0
    assert engine.wait(timeout=30) == 1
    assert fleet.status()["state"] == "rolled_back"
    assert set(fleet.served().values()) == {"1.0.0"}


@pytest.mark.parametrize(
    ("kind", "phase", "target"),
    [
        ("drain", "begin", "app-2"),
        ("deploy", "begin", "app-3"),
        ("health", "begin", "app-2"),
        ("bake", "begin", ""),
    ],
    ids=["during-drain", "during-deploy", "during-health", "between-waves"],
)
def test_resume_after_sigkill(fleet: LocalFleet, kind: str, phase: str, target: str) -> None:
    """SIGKILL at any point, then `apply` resumes from the journal and completes with nothing orphaned."""
    deploy_v1(fleet)
    fleet.env["ROLLWAVE_TEST_DRAIN_DELAY"] = "1"
    fleet.env["ROLLWAVE_LOCK_TTL"] = "6"
    fleet.write_spec("2.0.0", waves=[1, "100%"], max_unavailable=2, bake="3s", successes=3)
    before = len(fleet.journal())
    engine = fleet.popen("apply", "--yes")
    fleet.wait_for(kind, phase, target, since=before)
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    locked = fleet.run("apply", "--yes")
    assert locked.returncode == 3  # the dead engine's lease holds until it expires
    assert "locked by" in locked.stderr
    time.sleep(6.2)
    resumed = fleet.run("apply", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming deployment" in resumed.stdout
    assert set(fleet.served().values()) == {"2.0.0"}
    assert set(fleet.current().values()) == {"2.0.0"}
    assert set(fleet.traffic().values()) == {"ready"}
    fleet.assert_one_process_each()
    kinds = [k for k, _, _, _ in fleet.journal()]
    assert "resume" in kinds


def test_two_applies_at_once(fleet: LocalFleet) -> None:
    """Two `apply` started together on one environment: exactly one runs, the other exits 3."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], max_unavailable=2, bake="1s")
    first = fleet.popen("apply", "--yes")
    second = fleet.popen("apply", "--yes")
    codes = sorted([first.wait(timeout=120), second.wait(timeout=120)])
    assert codes == [0, 3]
    loser = first if first.returncode == 3 else second
    assert loser.stderr is not None
    message = loser.stderr.read()
    assert "environment test is locked by" in message
    assert "Traceback" not in message


def test_missing_artifact_is_bad_input(fleet: LocalFleet) -> None:
    """An artifact that does not exist: one line per target, exit 2, no target touched."""
    fleet.write_spec("9.9.9")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 2
    assert "app/app-1: preflight: app-1: artifact dist/app-9.9.9.tar.gz not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert set(fleet.current().values()) == {None}
    assert not (fleet.base / "traffic").exists()


def test_missing_start_command_is_bad_input(fleet: LocalFleet) -> None:
    """A start command that does not exist: a clear line, exit 2, no target touched."""
    fleet.write_spec("1.0.0", start=["no-such-server-binary", "--port", "{http_port}"])
    result = fleet.run("apply", "--yes")
    assert result.returncode == 2
    assert "start executable no-such-server-binary not found on PATH" in result.stderr
    assert set(fleet.current().values()) == {None}


def test_unwritable_state_path_is_bad_input(fleet: LocalFleet) -> None:
    """A state path that cannot be created: one line naming it, exit 2, no target touched."""
    (fleet.base / "blocker").write_text("a file, not a directory")
    fleet.write_spec("1.0.0", state="blocker/state.db")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: rollwave.yaml: state: cannot open state store")
    assert "blocker/state.db" in lines[0]
    assert set(fleet.current().values()) == {None}


def test_progress_deadline(fleet: LocalFleet) -> None:
    """No target turning healthy within progress_deadline fails the rollout (and rolls it back)."""
    deploy_v1(fleet)
    fleet.build("2.0.0", {"fail_health": True})
    fleet.write_spec("2.0.0", waves=[1, "100%"], deadline="60s", progress_deadline="2s")
    started = time.monotonic()
    result = fleet.run("apply", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    status = fleet.status()
    assert status["reason"] == "ProgressDeadlineExceeded"
    assert status["state"] == "rolled_back"
    assert set(fleet.served().values()) == {"1.0.0"}
    fleet.assert_one_process_each()


def test_preflight_refuses_when_the_rollback_release_is_gone(fleet: LocalFleet) -> None:
    """A target whose previous release was deleted fails preflight: rollback would be impossible, so nothing changes."""
    import shutil

    deploy_v1(fleet)
    shutil.rmtree(fleet.base / "fleet" / "app-2" / "releases" / "1.0.0")
    fleet.write_spec("2.0.0")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 2
    assert (
        "app/app-2: preflight: release 1.0.0 (the rollback target) is no longer present"
        in result.stderr
    )
    assert set(fleet.current().values()) == {"1.0.0"}


def test_rollback_of_a_finished_deployment(fleet: LocalFleet) -> None:
    """`rollwave rollback` on a finished deployment rolls forward to the previous version; --to picks one."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=["100%"], max_unavailable=2)
    assert fleet.run("apply", "--yes").returncode == 0
    back = fleet.run("rollback", "--json")
    assert back.returncode == 0, back.stderr
    assert set(fleet.served().values()) == {"1.0.0"}
    forward = fleet.run("rollback", "--to", "2.0.0")
    assert forward.returncode == 0, forward.stderr
    assert set(fleet.served().values()) == {"2.0.0"}
    history = fleet.run("history", "--json")
    assert [h["services"]["app"] for h in json.loads(history.stdout)[:3]] == [
        "2.0.0",
        "1.0.0",
        "2.0.0",
    ]


def test_failure_action_abort_stops_without_rollback(fleet: LocalFleet) -> None:
    """action: abort stops at the first failure past the budget and leaves the failed target drained, no rollback."""
    deploy_v1(fleet)
    fleet.build("2.0.0", {"fail_health": True})
    fleet.write_spec("2.0.0", waves=[1, "100%"], action="abort", deadline="1s")
    result = fleet.run("apply", "--yes")
    assert result.returncode == 1
    status = fleet.status()
    assert status["state"] == "failed"
    assert status["reason"] == "BudgetExceeded"
    assert fleet.traffic()["app-1"] == "drain"
    assert fleet.current()["app-1"] == "2.0.0"
    assert not any(d.get("rollback") for _, _, _, d in fleet.journal())


def test_failure_action_pause_waits_for_an_operator(fleet: LocalFleet) -> None:
    """action: pause leaves the deployment paused until an operator decides; rollback then restores v1."""
    deploy_v1(fleet)
    fleet.build("2.0.0", {"fail_health": True})
    fleet.write_spec("2.0.0", waves=[1, "100%"], action="pause", deadline="1s")
    engine = fleet.popen("apply", "--yes")
    deadline = time.monotonic() + 30
    while fleet.status()["state"] != "paused":
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.2)
    assert fleet.status()["reason"] == "BudgetExceeded"
    assert engine.poll() is None  # still waiting for someone
    assert fleet.run("rollback").returncode == 0
    assert engine.wait(timeout=30) == 1
    assert fleet.status()["state"] == "rolled_back"
    assert set(fleet.served().values()) == {"1.0.0"}


def test_approval_timeout_fails_the_rollout(fleet: LocalFleet) -> None:
    """A gate nobody approves within approval_timeout fails the rollout, which rolls back."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], approve_before=[2])
    spec = (fleet.base / "rollwave.yaml").read_text()
    (fleet.base / "rollwave.yaml").write_text(
        spec.replace("  approve_before:", "  approval_timeout: 2s\n  approve_before:")
    )
    result = fleet.run("apply", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    status = fleet.status()
    assert status["reason"] == "ApprovalTimeout"
    assert status["state"] == "rolled_back"
    assert set(fleet.served().values()) == {"1.0.0"}


def test_report_lists_what_changed_and_what_failed(fleet: LocalFleet) -> None:
    """`rollwave report` gives every target's from/to and outcome, the failed one with its reason, as JSON, Markdown and HTML."""
    deploy_v1(fleet)
    fleet.set_var("app-3", "fail", "1")
    fleet.write_spec("2.0.0", waves=[1, "100%"], tolerate=1, deadline="1s")
    assert fleet.run("apply", "--yes").returncode == 0
    data = json.loads(fleet.run("report", "--json").stdout)
    assert data["state"] == "succeeded"
    assert data["failed"] == ["app-3"]
    outcomes = {t["target"]: (t["previous"], t["version"], t["outcome"]) for t in data["targets"]}
    assert outcomes["app-1"] == ("1.0.0", "2.0.0", "replaced")
    assert outcomes["app-3"] == ("1.0.0", "2.0.0", "failed")
    failed = next(t for t in data["targets"] if t["target"] == "app-3")
    assert "not healthy after 1s" in failed["reason"]
    markdown = fleet.run("report", "--markdown").stdout
    assert "## Failed targets" in markdown
    assert "- app/app-3: app-3: not healthy after 1s" in markdown
    page = fleet.base / "report.html"
    assert fleet.run("report", "--html", str(page)).returncode == 0
    assert "<td>app-3</td>" in page.read_text()


def test_ctrl_c_leaves_a_resumable_deployment(fleet: LocalFleet) -> None:
    """Ctrl-C stops apply with exit 130 and the lock freed; status says so, and apply resumes at once."""
    deploy_v1(fleet)
    fleet.write_spec("2.0.0", waves=[1, "100%"], bake="3s")
    before = len(fleet.journal())
    engine = fleet.popen("apply", "--yes")
    fleet.wait_for("bake", "begin", since=before)
    engine.send_signal(signal.SIGINT)
    _, err = engine.communicate(timeout=30)
    assert engine.returncode == 130
    assert "`rollwave apply` resumes it" in err
    assert "Traceback" not in err
    status = fleet.status()
    assert status["state"] == "running"
    assert "no engine is running it" in status["message"]
    assert "lock" not in status
    resumed = fleet.run("apply", "--yes", timeout=90)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming deployment" in resumed.stdout
    assert set(fleet.served().values()) == {"2.0.0"}
    # The interrupted bake was baked again, whole, before wave 2.
    entries = fleet.journal()[before:]
    resume = next(i for i, e in enumerate(entries) if e[0] == "resume")
    bake = [(e[0], e[1]) for e in entries[resume:] if e[0] == "bake"]
    assert bake == [("bake", "begin"), ("bake", "end")]
    wave2 = next(
        i
        for i, e in enumerate(entries)
        if e[0] == "wave" and e[1] == "begin" and e[3].get("wave") == 2
    )
    assert wave2 > resume
