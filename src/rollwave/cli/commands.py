"""Engine commands: apply, status, history, show, and the operator controls."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from rollwave.cli.main import cli, emit_json, err, json_option, load, out, spec_option
from rollwave.engine.journal import replay
from rollwave.engine.ports import Deployment, DeploymentState, JournalEntry
from rollwave.errors import InputError, NotFoundError

EXIT_BY_STATE = {
    DeploymentState.SUCCEEDED: 0,
    DeploymentState.ROLLED_BACK: 1,
    DeploymentState.FAILED: 1,
    DeploymentState.PAUSED: 1,
    DeploymentState.ABORTED: 4,
}


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _entry_json(entry: JournalEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "deployment": entry.deployment_id,
        "at": entry.at,
        "kind": entry.kind,
        "phase": entry.phase,
        "service": entry.service,
        "target": entry.target,
        "data": dict(entry.data),
    }


def _entry_text(entry: JournalEntry) -> str:
    where = "/".join(x for x in (entry.service, entry.target) if x)
    data = dict(entry.data)
    detail = ""
    for key in ("reason", "error", "message", "state", "who", "command", "note"):
        if data.get(key):
            detail += f" {key}={data[key]}"
    if "wave" in data:
        detail = f" wave={data['wave']}" + detail
    if entry.kind.startswith("hook:") and entry.phase in ("end", "fail"):
        output = (str(data.get("stdout", "")) + str(data.get("stderr", ""))).strip()
        if output:
            detail += f" output={output[-300:]!r}"
    if "version" in data and entry.target:
        detail = (
            f" version={data['version']}" + (" (rollback)" if data.get("rollback") else "") + detail
        )
    return f"{entry.kind:<13} {entry.phase:<6} {where}{detail}"


class ProgressView:
    """Live terminal progress: one row per target, its service, wave, step and state."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[str]] = {}
        self.header = ""
        self.wave: dict[str, str] = {}

    def __call__(self, entry: JournalEntry) -> None:
        if entry.kind == "state":
            self.header = f"{entry.data.get('state')}: {entry.data.get('message')}"
        if entry.kind == "wave" and entry.phase == "begin":
            self.wave[entry.service] = str(entry.data.get("wave"))
        if entry.target:
            key = (entry.service, entry.target)
            rollback = " (rollback)" if entry.data.get("rollback") else ""
            state = {"begin": "…", "end": "ok", "fail": "FAILED", "info": ""}.get(entry.phase, "")
            if entry.kind == "target":
                step = "done" if entry.phase == "end" else "failed"
            else:
                step = entry.kind
            self.rows[key] = [
                entry.service,
                self.wave.get(entry.service, ""),
                entry.target,
                step + rollback,
                state,
                str(entry.data.get("version", "")),
            ]

    def __rich__(self) -> Table:
        table = Table(title=self.header or "starting", title_justify="left")
        for column in ("service", "wave", "target", "step", "", "version"):
            table.add_column(column)
        for row in list(self.rows.values())[-40:]:
            table.add_row(*row)
        return table


def _outcome_exit(state: DeploymentState) -> int:
    return EXIT_BY_STATE.get(state, 1)


@cli.command()
@spec_option
@json_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--override-freeze", is_flag=True, help="Deploy inside a freeze (needs --reason).")
@click.option("--reason", default=None, help="Why the freeze is overridden; journaled with who.")
def apply(
    spec_file: Path, as_json: bool, yes: bool, override_freeze: bool, reason: str | None
) -> None:
    """Run the plan, or resume this environment's unfinished deployment."""
    if override_freeze and not (reason and reason.strip()):
        raise click.UsageError("--override-freeze needs --reason TEXT")
    from rollwave.engine.runner import apply as run_apply

    config = load(spec_file)
    listeners: list[Any] = []
    view = ProgressView()
    live = out.is_terminal and not as_json
    if as_json:
        listeners.append(lambda e: click.echo(json.dumps({"event": "journal", **_entry_json(e)})))
    elif live:
        listeners.append(view)
    else:
        listeners.append(lambda e: out.print(_entry_text(e), markup=False))

    def started(deployment: Deployment, plan: Any, resumed: bool) -> None:
        verb = "resuming" if resumed else "starting"
        if as_json:
            click.echo(
                json.dumps({"event": "started", "deployment": deployment.id, "resumed": resumed})
            )
        else:
            out.print(f"{verb} deployment {deployment.id} of {plan.environment}")

    if not yes and not as_json:
        _confirm_plan(config)

    async def go() -> Any:
        if live:
            with Live(view, console=out, refresh_per_second=4, transient=False):
                return await run_apply(
                    config, listeners=listeners, on_start=started, override_freeze=override
                )
        return await run_apply(
            config, listeners=listeners, on_start=started, override_freeze=override
        )

    override = reason.strip() if override_freeze and reason else None

    result = asyncio.run(go())
    outcome = result.outcome
    if as_json:
        click.echo(
            json.dumps(
                {
                    "event": "result",
                    "deployment": result.deployment.id if result.deployment else None,
                    "state": outcome.state.value,
                    "reason": outcome.reason,
                    "message": outcome.message,
                    "resumed": result.resumed,
                }
            )
        )
    else:
        out.print(f"{outcome.state.value}: {outcome.message}", markup=False)
    code = _outcome_exit(outcome.state)
    if code == 1 and not as_json:
        hint = f"rollwave show {result.deployment.id}" if result.deployment else ""
        err.print(f"hint: {hint}" if hint else "", markup=False)
    sys.exit(code)


def _confirm_plan(config: Any) -> None:
    """Show the plan and ask; exit 4 when the user says no. A resume needs no confirmation."""
    from rollwave.cli.render import plan_rows
    from rollwave.engine.runner import make_plan, open_state

    store = open_state(config)
    try:
        unfinished = store.unfinished_deployment(config.spec.environment)
    finally:
        store.close()
    if unfinished is not None:
        return
    plan = asyncio.run(make_plan(config))
    if not any(s.waves for s in plan.services):
        return
    table = Table(title=f"plan for {plan.environment}")
    for column in ("service", "wave", "targets", "capacity", "gate", "after"):
        table.add_column(column)
    for row in plan_rows(plan):
        table.add_row(*row)
    out.print(table)
    if not sys.stdin.isatty():
        raise InputError("apply needs a confirmation: run it in a terminal, or pass --yes")
    if not click.confirm("Apply this plan?", default=False):
        out.print("nothing was changed")
        sys.exit(4)


def _store_and_deployment(
    spec_file: Path, deployment_id: int | None
) -> tuple[Any, Any, Deployment]:
    from rollwave.engine.runner import open_state

    config = load(spec_file)
    store = open_state(config)
    if deployment_id is not None:
        deployment = store.get_deployment(deployment_id)
        if deployment.environment != config.spec.environment:
            store.close()
            raise NotFoundError(
                f"deployment {deployment_id} belongs to environment {deployment.environment}, "
                f"not {config.spec.environment}"
            )
    else:
        found = store.unfinished_deployment(config.spec.environment) or store.latest_deployment(
            config.spec.environment
        )
        if found is None:
            store.close()
            raise NotFoundError(f"environment {config.spec.environment} has no deployment yet")
        deployment = found
    return config, store, deployment


def _summary(store: Any, deployment: Deployment) -> dict[str, Any]:
    entries = store.journal(deployment.id)
    progress = replay(entries)
    services = []
    for service in deployment.plan.get("services", []):
        name = service["name"]
        targets = [t for w in service["waves"] for t in w["targets"]]
        current_wave = max((w for (s, w) in progress.waves_done if s == name), default=0)
        services.append(
            {
                "name": name,
                "version": service["version"],
                "stage": service["stage"],
                "targets": len(targets),
                "done": sum(1 for t in targets if (name, t) in progress.targets_done),
                "failed": sorted(t for (s, t) in progress.targets_failed if s == name),
                "rolled_back": sum(1 for t in targets if (name, t) in progress.rolled_back),
                "waves": len(service["waves"]),
                "waves_done": current_wave,
                "skipped": len(service["skipped"]),
            }
        )
    latest: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.kind == "measurement":
            latest[str(entry.data.get("check"))] = {
                "service": entry.service,
                **{
                    k: entry.data[k]
                    for k in ("wave", "check", "status", "value", "score", "message")
                    if k in entry.data
                },
            }
    return {
        "id": deployment.id,
        "environment": deployment.environment,
        "analysis": list(latest.values()),
        "state": deployment.state.value,
        "reason": deployment.reason,
        "message": deployment.message,
        "who": deployment.who,
        "created_at": _when(deployment.created_at),
        "updated_at": _when(deployment.updated_at),
        "services": services,
    }


@cli.command()
@click.argument("deployment_id", type=int, required=False)
@spec_option
@json_option
def status(deployment_id: int | None, spec_file: Path, as_json: bool) -> None:
    """The running or latest deployment (or ID)."""
    _, store, deployment = _store_and_deployment(spec_file, deployment_id)
    try:
        summary = _summary(store, deployment)
        lock = store.lock_info(deployment.environment)
    finally:
        store.close()
    if lock is not None and lock.expires_at > time.time():
        summary["lock"] = {"holder": lock.holder, "pid": lock.pid, "since": _when(lock.acquired_at)}
    elif not deployment.state.finished:
        summary["message"] = (
            "no engine is running it (interrupted or crashed): `rollwave apply` resumes it"
            + (f"; last: {summary['message']}" if summary["message"] else "")
        )
    if as_json:
        emit_json(summary)
        return
    out.print(
        f"deployment {summary['id']} of {summary['environment']}: {summary['state']} "
        f"({summary['reason']}) — {summary['message']}",
        markup=False,
    )
    out.print(f"started by {summary['who']} at {summary['created_at']}", markup=False)
    table = Table()
    for column in ("service", "version", "stage", "done", "failed", "rolled back", "waves"):
        table.add_column(column)
    for s in summary["services"]:
        table.add_row(
            s["name"],
            s["version"],
            str(s["stage"]),
            f"{s['done']}/{s['targets']}",
            ", ".join(s["failed"]),
            str(s["rolled_back"]),
            f"{s['waves_done']}/{s['waves']}",
        )
    out.print(table)
    for measurement in summary["analysis"]:
        out.print(
            f"analysis {measurement['service']} wave {measurement.get('wave')}: "
            f"{measurement['status']} — {measurement['message']}",
            markup=False,
        )


@cli.command()
@spec_option
@json_option
@click.option("--limit", default=20, show_default=True)
def history(spec_file: Path, as_json: bool, limit: int) -> None:
    """Past deployments of the environment, newest first."""
    from rollwave.engine.runner import open_state

    config = load(spec_file)
    store = open_state(config)
    try:
        deployments = store.list_deployments(config.spec.environment, limit)
    finally:
        store.close()
    rows: list[dict[str, Any]] = [
        {
            "id": d.id,
            "state": d.state.value,
            "reason": d.reason,
            "who": d.who,
            "created_at": _when(d.created_at),
            "services": {s["name"]: s["version"] for s in d.plan.get("services", [])},
        }
        for d in deployments
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"history of {config.spec.environment}")
    for column in ("id", "state", "reason", "versions", "who", "started"):
        table.add_column(column)
    for row in rows:
        versions = ", ".join(f"{k}={v}" for k, v in row["services"].items())
        table.add_row(
            str(row["id"]), row["state"], row["reason"], versions, row["who"], row["created_at"]
        )
    out.print(table)


@cli.command()
@click.argument("deployment_id", type=int, required=False)
@spec_option
@json_option
def show(deployment_id: int | None, spec_file: Path, as_json: bool) -> None:
    """Every journal entry of one deployment."""
    _, store, deployment = _store_and_deployment(spec_file, deployment_id)
    try:
        entries = store.journal(deployment.id)
        commands = store.commands(deployment.id)
    finally:
        store.close()
    if as_json:
        emit_json(
            {
                "deployment": _deployment_json(deployment),
                "journal": [_entry_json(e) for e in entries],
                "commands": [
                    {"id": c.id, "kind": c.kind, "args": dict(c.args), "who": c.who, "at": c.at}
                    for c in commands
                ],
            }
        )
        return
    out.print(
        f"deployment {deployment.id}: {deployment.state.value} ({deployment.reason}) — {deployment.message}",
        markup=False,
    )
    for entry in entries:
        out.print(f"{_when(entry.at)}  {_entry_text(entry)}", markup=False)


def _deployment_json(deployment: Deployment) -> dict[str, Any]:
    data = dataclasses.asdict(deployment)
    data["state"] = deployment.state.value
    data["plan"] = dict(deployment.plan)
    return data


def _post(
    spec_file: Path, deployment_id: int | None, kind: str, args: dict[str, Any], as_json: bool
) -> None:
    from rollwave.engine.runner import who_am_i

    _, store, deployment = _store_and_deployment(spec_file, deployment_id)
    try:
        if deployment.state.finished:
            raise InputError(
                f"deployment {deployment.id} is already {deployment.state.value}: nothing to {kind}"
            )
        command = store.post_command(deployment.id, kind, args, who_am_i(), time.time())
    finally:
        store.close()
    if as_json:
        emit_json({"deployment": deployment.id, "command": kind, "id": command.id, "args": args})
    else:
        out.print(f"{kind} sent to deployment {deployment.id}", markup=False)


for _kind, _help in (
    ("pause", "Pause a running deployment: no new target starts."),
    ("resume", "Resume a paused deployment."),
    ("abort", "Abort a deployment: stop starting targets, no rollback (exit 4)."),
):

    def _make(kind: str, help_text: str) -> None:
        @cli.command(name=kind, help=help_text)
        @click.argument("deployment_id", type=int, required=False)
        @spec_option
        @json_option
        def command(deployment_id: int | None, spec_file: Path, as_json: bool) -> None:
            _post(spec_file, deployment_id, kind, {}, as_json)

    _make(_kind, _help)


@cli.command()
@click.argument("deployment_id", type=int, required=False)
@click.option("--wave", type=int, required=True, help="The wave number to approve.")
@click.option("--service", default=None, help="Only this service's wave.")
@spec_option
@json_option
def approve(
    deployment_id: int | None, wave: int, service: str | None, spec_file: Path, as_json: bool
) -> None:
    """Approve a wave that waits at an approval gate."""
    args: dict[str, Any] = {"wave": wave}
    if service:
        args["service"] = service
    _post(spec_file, deployment_id, "approve", args, as_json)


@cli.command()
@click.argument("deployment_id", type=int, required=False)
@click.option("--to", "to_version", default=None, help="Roll the services to this version.")
@spec_option
@json_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def rollback(
    deployment_id: int | None, to_version: str | None, spec_file: Path, as_json: bool, yes: bool
) -> None:
    """Roll a deployment back: a running one by its engine, a finished one as a new deployment."""
    config, store, deployment = _store_and_deployment(spec_file, deployment_id)
    store.close()
    if not deployment.state.finished:
        _post(spec_file, deployment.id, "rollback", {}, as_json)
        return
    versions: dict[str, str] = {}
    for service in deployment.plan.get("services", []):
        if to_version:
            versions[service["name"]] = to_version
            continue
        previous = [v for v in service.get("previous", {}).values() if v]
        if not previous:
            raise InputError(
                f"deployment {deployment.id}: service {service['name']} had no previous version; "
                "pass --to VERSION"
            )
        versions[service["name"]] = max(set(previous), key=previous.count)
    from rollwave.engine.runner import apply as run_apply
    from rollwave.spec.load import with_versions

    target_config = with_versions(config, versions)
    if not as_json:
        out.print(
            "rolling back deployment "
            + f"{deployment.id}: "
            + ", ".join(f"{k} -> {v}" for k, v in versions.items()),
            markup=False,
        )
    listeners = [lambda e: out.print(_entry_text(e), markup=False)] if not as_json else []
    result = asyncio.run(run_apply(target_config, listeners=listeners))
    if as_json:
        emit_json(
            {
                "deployment": result.deployment.id if result.deployment else None,
                "state": result.outcome.state.value,
                "reason": result.outcome.reason,
                "versions": versions,
            }
        )
    else:
        out.print(f"{result.outcome.state.value}: {result.outcome.message}", markup=False)
    sys.exit(_outcome_exit(result.outcome.state))


@cli.command()
@json_option
@click.option("--keep", is_flag=True, help="Leave the fleet and HAProxy running afterwards.")
def demo(as_json: bool, keep: bool) -> None:
    """A real rolling deployment on this machine: 6 app slots behind HAProxy, under load."""
    from rollwave.demo.haproxy import HAProxyNotInstalledError
    from rollwave.demo.run import run_demo

    view = ProgressView()
    live = out.is_terminal and not as_json
    say = (lambda line: None) if as_json else (lambda line: out.print(f"[bold]{line}[/bold]"))

    async def go() -> Any:
        if live:
            with Live(view, console=out, refresh_per_second=4, transient=True):
                return await run_demo(keep=keep, listeners=[view], say=say)
        listeners = [] if as_json else [lambda e: out.print(_entry_text(e), markup=False)]
        return await run_demo(keep=keep, listeners=listeners, say=say)

    try:
        result = asyncio.run(go())
    except HAProxyNotInstalledError as exc:
        raise InputError(
            str(exc), hint="scripts/setup installs it on Debian/Ubuntu as root"
        ) from exc
    if as_json:
        emit_json(result.to_dict())
    else:
        table = Table(title="rollwave demo: summary")
        for column in (
            "rollout",
            "state",
            "duration",
            "requests",
            "failed",
            "its share of answers, second by second",
        ):
            table.add_column(column)
        for rollout in result.rollouts:
            shares = [point["share"].get(rollout.version, 0) for point in rollout.version_mix]
            table.add_row(
                f"v{rollout.version}",
                rollout.state,
                f"{rollout.duration_s:.1f}s",
                str(rollout.requests),
                str(rollout.failed_requests),
                " ".join(f"{share}%" for share in shares),
            )
        out.print(table)
        if result.kept:
            out.print(f"the fleet is still running: {result.url} (work directory {result.workdir})")
            out.print(f"stop it with: kill {' '.join(str(p) for p in result.pids)}")
    states = [r.state for r in result.rollouts]
    sys.exit(0 if states == ["succeeded", "rolled_back"] else 1)


@cli.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", required=True, help="Why (shown to whoever tries to deploy).")
@spec_option
@json_option
def freeze(state: str, reason: str, spec_file: Path, as_json: bool) -> None:
    """Freeze (or thaw) the environment by hand: apply refuses to start while frozen."""
    from rollwave.engine.runner import open_state, who_am_i

    config = load(spec_file)
    store = open_state(config)
    try:
        store.set_freeze(config.spec.environment, state == "on", reason, who_am_i(), time.time())
    finally:
        store.close()
    if as_json:
        emit_json(
            {"environment": config.spec.environment, "frozen": state == "on", "reason": reason}
        )
    else:
        verb = "frozen" if state == "on" else "no longer frozen by hand"
        out.print(f"environment {config.spec.environment} is {verb}: {reason}", markup=False)


@cli.command()
@click.argument("deployment_id", type=int, required=False)
@spec_option
@json_option
@click.option("--markdown", is_flag=True, help="The report as Markdown.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write an HTML page.",
)
def report(
    deployment_id: int | None,
    spec_file: Path,
    as_json: bool,
    markdown: bool,
    html_file: Path | None,
) -> None:
    """What a deployment changed, where, what failed and why, and who intervened."""
    from rollwave.report.build import build_report
    from rollwave.report.render import to_html, to_markdown

    _, store, deployment = _store_and_deployment(spec_file, deployment_id)
    try:
        built = build_report(
            deployment, store.journal(deployment.id), store.commands(deployment.id)
        )
    finally:
        store.close()
    if html_file is not None:
        html_file.write_text(to_html(built), encoding="utf-8")
        if not as_json:
            out.print(f"wrote {html_file}", markup=False)
    if as_json:
        emit_json(built.to_dict())
    elif markdown or html_file is None:
        click.echo(to_markdown(built), nl=False)
