"""Whole-system changes on local targets: sequencing, expand/contract, hooks, freezes, webhooks."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rollwave.engine.runner import apply
from rollwave.errors import FrozenError
from rollwave.spec.load import load_config
from support.fleet import LocalFleet
from support.processes import Processes

pytestmark = pytest.mark.integration

GROUPS = {"api": ["app-1", "app-2"], "web": ["app-3", "app-4"]}


class OffsetClock:
    """Wall time shifted by ``offset`` seconds (to stand inside or outside a freeze window)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture
def system(tmp_path: Path, procs: Processes) -> LocalFleet:
    """Four slots: api-ish app-1/2 and web-ish app-3/4, all on v1, and a migration script that logs."""
    fleet = LocalFleet(tmp_path, 4, procs)
    fleet.set_groups(GROUPS)
    for version in ("1.0.0", "2.0.0"):
        fleet.build(version)
    script = tmp_path / "migrate.sh"
    script.write_text(
        '#!/bin/sh\necho "$1" >> "$(dirname "$0")/migrations.log"\n'
        'echo "migrated $1"\n[ "$1" != "$MIGRATE_FAIL" ] || { echo "boom: $1" >&2; exit 7; }\n'
    )
    script.chmod(0o755)
    write_system(fleet, "1.0.0", migrations=False)
    result = fleet.run("apply", "--yes")
    assert result.returncode == 0, result.stderr
    (tmp_path / "migrations.log").unlink(missing_ok=True)
    return fleet


def write_system(
    fleet: LocalFleet,
    version: str,
    *,
    web_version: str | None = None,
    scope: str = "service",
    migrations: bool = True,
    hooks: dict[str, Any] | None = None,
    approve_before: list[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    script = str(fleet.base / "migrate.sh")
    spec_extra: dict[str, Any] = dict(extra or {})
    if migrations:
        spec_extra["migrations"] = {
            "expand": {"run": [script, "expand"]},
            "contract": {"run": [script, "contract"]},
        }
    if hooks:
        spec_extra["hooks"] = hooks
    fleet.write_spec(
        version,
        waves=[1, "100%"],
        scope=scope,
        deadline="2s",
        approve_before=approve_before,
        services={
            "api": fleet.service(version, hosts="api", deadline="2s"),
            "web": fleet.service(
                web_version or version, hosts="web", depends_on=["api"], deadline="2s"
            ),
        },
        extra=spec_extra,
    )


def log_lines(fleet: LocalFleet) -> list[str]:
    path = fleet.base / "migrations.log"
    return path.read_text().split() if path.exists() else []


def order_of(fleet: LocalFleet) -> list[str]:
    """The milestones of the last deployment, in journal order."""
    milestones = []
    for kind, phase, _target, data in fleet.journal():
        if kind in ("expand", "contract") and phase == "end":
            milestones.append(kind)
        if kind == "service" and phase in ("begin", "end"):
            milestones.append(f"{phase}:{data.get('version')}")
    return milestones


def test_services_in_order_with_expand_first_and_contract_last(system: LocalFleet) -> None:
    """expand runs before api, web only after api has finished, contract last; each exactly once."""
    write_system(system, "2.0.0")
    result = system.run("apply", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(system.served().values()) == {"2.0.0"}
    assert log_lines(system) == ["expand", "contract"]
    services = [(k, p, d.get("version")) for k, p, _, d in system.journal() if k == "service"]
    assert [p for _, p, _ in services[-4:]] == ["begin", "end", "begin", "end"]
    journal = [(k, p, t, d) for k, p, t, d in system.journal()]
    kinds = [(k, p) for k, p, _, _ in journal]
    start = max(i for i, k in enumerate(kinds) if k == ("deployment", "begin"))
    tail = kinds[start:]
    assert tail.index(("expand", "end")) < tail.index(("service", "begin"))
    assert tail.index(("contract", "begin")) > max(
        i for i, k in enumerate(tail) if k == ("service", "end")
    )
    plan = json.loads(system.run("plan", "--json").stdout)
    assert [(s["name"], s["stage"]) for s in plan["services"]] == [("api", 0), ("web", 1)]


@pytest.mark.parametrize(
    ("scope", "api_after"),
    [("service", "2.0.0"), ("deployment", "1.0.0")],
    ids=["scope-service", "scope-deployment"],
)
def test_failing_web_rollback_scope(system: LocalFleet, scope: str, api_after: str) -> None:
    """A failing web rolls back web only (scope service) or web and api (scope deployment); contract never runs."""
    system.build("2.0.1", {"fail_health": True})
    write_system(system, "2.0.0", web_version="2.0.1", scope=scope)
    result = system.run("apply", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    served = system.served()
    assert [served["app-1"], served["app-2"]] == [api_after, api_after]
    assert [served["app-3"], served["app-4"]] == ["1.0.0", "1.0.0"]
    assert log_lines(system) == ["expand"]
    assert system.status()["state"] == "rolled_back"
    if scope == "deployment":
        order = [
            t
            for k, p, t, d in system.journal()
            if k == "target" and p == "end" and d.get("rollback")
        ]
        assert order[-2:] == [
            "app-2",
            "app-1",
        ]  # newest first: api after web, its last target first


def test_failing_expand_touches_no_target(system: LocalFleet) -> None:
    """A failed expand fails the deployment before any target is drained."""
    write_system(system, "2.0.0")
    system.env["MIGRATE_FAIL"] = "expand"
    result = system.run("apply", "--yes")
    assert result.returncode == 1
    status = system.status()
    assert status["reason"] == "ExpandFailed"
    assert "boom: expand" in status["message"]
    assert set(system.served().values()) == {"1.0.0"}
    last = max(
        i for i, (k, p, _, _) in enumerate(system.journal()) if (k, p) == ("deployment", "begin")
    )
    assert not any(k == "drain" for k, _, _, _ in system.journal()[last:])
    shown = system.run("show").stdout
    assert "boom: expand" in shown


def test_resume_after_expand_never_runs_it_twice(system: LocalFleet) -> None:
    """SIGKILL after expand and before the first wave, then resume: expand ran once, contract once."""
    write_system(system, "2.0.0", approve_before=[1])
    system.env["ROLLWAVE_LOCK_TTL"] = "3"
    before = len(system.journal())
    engine = system.popen("apply", "--yes")
    system.wait_for("approval", "begin", since=before)
    engine.send_signal(signal.SIGKILL)
    engine.wait()
    assert log_lines(system) == ["expand"]
    time.sleep(3.2)
    resumed = system.popen("apply", "--yes")
    deadline = time.monotonic() + 30
    while system.status()["reason"] != "AwaitingApproval":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert system.run("approve", "--wave", "1").returncode == 0
    assert resumed.wait(timeout=90) == 0
    assert log_lines(system) == ["expand", "contract"]
    assert set(system.served().values()) == {"2.0.0"}


def test_failing_verify_leaves_target_drained(system: LocalFleet) -> None:
    """A failing verify hook fails its target before enable (left drained), triggers rollback, and its output shows."""
    check = system.base / "smoke.sh"
    check.write_text(
        '#!/bin/sh\necho "smoke test of $1"\n[ "$1" != app-1 ] || { echo "app-1 is broken" >&2; exit 3; }\n'
    )
    check.chmod(0o755)
    write_system(system, "2.0.0", migrations=False, hooks={"verify": [str(check), "{name}"]})
    result = system.run("apply", "--yes")
    assert result.returncode == 1
    entries = system.show()["journal"]
    enables = [
        e
        for e in entries
        if e["kind"] == "enable" and e["target"] == "app-1" and not e["data"].get("rollback")
    ]
    verify = [e for e in entries if e["kind"] == "hook:verify" and e["phase"] == "fail"]
    assert verify
    assert verify[0]["target"] == "app-1"
    assert not [
        e
        for e in enables
        if e["seq"] > verify[0]["seq"]
        and e["phase"] == "begin"
        and e["data"].get("version") == "2.0.0"
    ]
    assert "app-1 is broken" in system.run("show").stdout
    assert system.status()["state"] == "rolled_back"
    assert set(system.served().values()) == {"1.0.0"}


def test_hooks_run_in_their_places(system: LocalFleet) -> None:
    """Every lifecycle hook runs, in order, with its templates filled in, and its output is journaled."""
    log = system.base / "hooks.log"
    hook = system.base / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    hook.chmod(0o755)
    hooks = {
        "before_deployment": [str(hook), "before_deployment", "{environment}"],
        "before_wave": [str(hook), "before_wave", "{service}", "{wave}"],
        "before_target": [str(hook), "before_target", "{name}"],
        "verify": [str(hook), "verify", "{name}", "{http_port}"],
        "after_target": [str(hook), "after_target", "{name}"],
        "after_wave": [str(hook), "after_wave", "{service}", "{wave}"],
        "after_deployment": [str(hook), "after_deployment", "{deployment_id}"],
    }
    write_system(system, "2.0.0", migrations=False, hooks=hooks)
    assert system.run("apply", "--yes").returncode == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "before_deployment test"
    assert lines[1:6] == [
        "before_wave api 1",
        "before_target app-1",
        f"verify app-1 {system.ports['app-1']}",
        "after_target app-1",
        "after_wave api 1",
    ]
    assert lines[-1].startswith("after_deployment ")


def test_freeze_windows_with_an_injected_clock(system: LocalFleet) -> None:
    """Inside a cron freeze apply is refused (exit 3 semantics) naming until when; outside it runs; an override is journaled."""
    write_system(
        system,
        "2.0.0",
        migrations=False,
        extra={"freeze": [{"cron": "0 17 * * FRI", "duration": "64h", "reason": "weekend freeze"}]},
    )
    config = load_config(system.base / "rollwave.yaml")

    def offset_to(moment: datetime) -> float:
        return moment.timestamp() - time.time()

    saturday = OffsetClock(offset_to(datetime(2026, 11, 28, 12, 0, tzinfo=UTC)))
    with pytest.raises(FrozenError) as frozen:
        asyncio.run(apply(config, clock=saturday))
    assert frozen.value.exit_code == 3
    assert "frozen until 2026-11-30 09:00 UTC: weekend freeze" in frozen.value.message
    assert set(system.served().values()) == {"1.0.0"}

    wednesday = OffsetClock(offset_to(datetime(2026, 11, 25, 12, 0, tzinfo=UTC)))
    system.build("2.0.0")
    result = asyncio.run(apply(config, clock=saturday, override_freeze="hotfix for INC-42"))
    assert result.outcome.state.value == "succeeded"
    entries = system.show()["journal"]
    override = [e for e in entries if e["kind"] == "freeze_override"]
    assert override[0]["data"]["reason"] == "hotfix for INC-42"
    assert "@" in override[0]["data"]["who"]

    write_system(
        system,
        "1.0.0",
        migrations=False,
        extra={"freeze": [{"cron": "0 17 * * FRI", "duration": "64h", "reason": "weekend freeze"}]},
    )
    back = asyncio.run(apply(load_config(system.base / "rollwave.yaml"), clock=wednesday))
    assert back.outcome.state.value == "succeeded"


def test_manual_freeze_from_the_cli(system: LocalFleet) -> None:
    """`rollwave freeze on` makes apply exit 3 with who and why; `freeze off` lifts it."""
    write_system(system, "2.0.0", migrations=False)
    assert system.run("freeze", "on", "--reason", "release party").returncode == 0
    refused = system.run("apply", "--yes")
    assert refused.returncode == 3
    assert "is frozen by" in refused.stderr
    assert "release party" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert system.run("freeze", "off", "--reason", "party over").returncode == 0
    assert system.run("apply", "--yes").returncode == 0


class Receiver:
    """A local webhook receiver that records bodies, and can answer 500 or hang."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                if receiver.mode == "hang":
                    time.sleep(30)
                status = 500 if receiver.mode == "error" else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(request.param)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("receiver", ["ok"], indirect=True)
def test_webhooks_arrive_in_order(system: LocalFleet, receiver: Receiver) -> None:
    """Every subscribed event arrives in order with the documented body, and each delivery is recorded."""
    write_system(system, "2.0.0", migrations=False, extra={"notify": [{"webhook": receiver.url}]})
    assert system.run("apply", "--yes").returncode == 0
    events = [b["event"] for b in receiver.bodies]
    assert events == [
        "started",
        "wave_completed",
        "wave_completed",
        "wave_completed",
        "wave_completed",
        "succeeded",
    ]
    first = receiver.bodies[0]
    assert set(first) >= {"event", "environment", "deployment", "at", "text"}
    assert first["text"].startswith("rollwave: test deployment ")
    assert receiver.bodies[1]["service"] == "api"
    from rollwave.engine.runner import open_state

    store = open_state(load_config(system.base / "rollwave.yaml"))
    try:
        recorded = store.events(first["deployment"])
    finally:
        store.close()
    assert len([e for e in recorded if e[2] == "notify" and e[3]["ok"]]) == 6
    assert all("secret-token" not in json.dumps(e[3]) for e in recorded)


@pytest.mark.parametrize("receiver", ["hang", "error"], indirect=True)
def test_bad_webhook_never_delays_the_rollout(system: LocalFleet, receiver: Receiver) -> None:
    """A webhook that hangs or answers 500 delays the rollout by under a second in all, and its failures are recorded."""
    write_system(
        system,
        "2.0.0",
        migrations=False,
        extra={"notify": [{"webhook": receiver.url, "timeout": "20s"}]},
    )
    config = load_config(system.base / "rollwave.yaml")
    result = asyncio.run(apply(config))
    returned = time.time()
    assert result.outcome.state.value == "succeeded"
    assert result.deployment is not None
    entries = system.show()["journal"]
    assert returned - entries[-1]["at"] < 1.0
    from rollwave.engine.runner import open_state

    store = open_state(config)
    try:
        recorded = [e[3] for e in store.events(result.deployment.id) if e[2] == "notify"]
    finally:
        store.close()
    assert recorded
    assert not any(r["ok"] for r in recorded)
    if receiver.mode == "error":
        assert any(r.get("status") == 500 for r in recorded)
    else:
        assert any(r.get("abandoned") for r in recorded)


def test_parallel_order_runs_independent_services_together(system: LocalFleet) -> None:
    """With order: parallel, services of one stage run at once, each under its own max_unavailable."""
    system.write_spec(
        "2.0.0",
        waves=["100%"],
        max_unavailable=1,
        services={
            "api": system.service("2.0.0", hosts="api"),
            "web": system.service("2.0.0", hosts="web"),
        },
    )
    spec = (system.base / "rollwave.yaml").read_text()
    (system.base / "rollwave.yaml").write_text(
        spec.replace("strategy:\n", "strategy:\n  order: parallel\n")
    )
    plan = json.loads(system.run("plan", "--json").stdout)
    assert [(s["name"], s["stage"]) for s in plan["services"]] == [("api", 0), ("web", 0)]
    before = len(system.journal())
    assert system.run("apply", "--yes").returncode == 0
    entries = system.journal()[before:]
    begins = [i for i, (k, p, _, _) in enumerate(entries) if (k, p) == ("service", "begin")]
    ends = [i for i, (k, p, _, _) in enumerate(entries) if (k, p) == ("service", "end")]
    assert len(begins) == 2
    assert max(begins) < min(ends)  # both started before either finished
    out: dict[str, set[str]] = {"api": set(), "web": set()}
    service_of = {n: g for g, names in GROUPS.items() for n in names}
    for kind, phase, target, _data in entries:
        if kind == "drain" and phase == "begin":
            out[service_of[target]].add(target)
        elif kind == "target" and phase == "end":
            out[service_of[target]].discard(target)
        assert all(len(down) <= 1 for down in out.values())
    assert set(system.served().values()) == {"2.0.0"}


def test_plan_markdown_and_next_freeze(system: LocalFleet) -> None:
    """`plan --markdown` is a pasteable change announcement, and plan warns of a freeze overlapping its duration."""
    from datetime import timedelta

    soon = datetime.now(UTC) - timedelta(seconds=60)  # open now: it overlaps any plan
    later = soon + timedelta(hours=2)
    window = {"start": soon.isoformat(), "end": later.isoformat(), "reason": "board meeting"}
    write_system(system, "2.0.0", approve_before=[2], extra={"freeze": [window]})
    markdown = system.run("plan", "--markdown").stdout
    assert markdown.startswith("# Deployment plan: test\n")
    assert "## api → 2.0.0 (stage 0)" in markdown
    assert "## web → 2.0.0 (stage 1, after api)" in markdown
    assert "| 2 | app-2 | 1 | 2/2 | approval required |  |" in markdown
    assert "**Freeze:** board meeting" in markdown
    data = json.loads(system.run("plan", "--json").stdout)
    assert data["next_freeze"]["reason"] == "board meeting"
    assert data["expected_duration_s"] > 0
    table = system.run("plan")
    assert "warning: freeze 'board meeting'" in table.stdout
    write_system(system, "2.0.0")
    assert json.loads(system.run("plan", "--json").stdout)["next_freeze"] is None


def test_hook_on_target_runs_through_the_driver(system: LocalFleet) -> None:
    """A hook with on: target runs through the target's driver, with the target's variables."""
    log = system.base / "target-hooks.log"
    hook = system.base / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    hook.chmod(0o755)
    write_system(
        system,
        "2.0.0",
        migrations=False,
        hooks={
            "after_target": {
                "run": [str(hook), "{name}", "{http_port}"],
                "on": "target",
                "timeout": "5s",
            }
        },
    )
    assert system.run("apply", "--yes").returncode == 0
    assert sorted(log.read_text().splitlines()) == sorted(
        f"{n} {system.ports[n]}" for n in system.names
    )
    entries = [
        e
        for e in system.show()["journal"]
        if e["kind"] == "hook:after_target" and e["phase"] == "end"
    ]
    assert len(entries) == 4
