"""A deployment's report, folded from its record and journal. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rollwave.engine.ports import Command, Deployment, JournalEntry

__all__ = ["Report", "TargetLine", "build_report"]


@dataclass
class TargetLine:
    service: str
    target: str
    wave: int
    previous: str | None
    version: str
    outcome: str = "pending"  # replaced, failed, rolled_back, skipped, pending
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)


@dataclass
class Report:
    deployment: int
    environment: str
    state: str
    reason: str
    message: str
    who: str
    started_at: float
    finished_at: float
    targets: list[TargetLine] = field(default_factory=list)
    analysis: list[dict[str, Any]] = field(default_factory=list)
    operators: list[dict[str, Any]] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return round(self.finished_at - self.started_at, 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "environment": self.environment,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "who": self.who,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "targets": [
                {
                    "service": t.service,
                    "target": t.target,
                    "wave": t.wave,
                    "previous": t.previous,
                    "version": t.version,
                    "outcome": t.outcome,
                    "reason": t.reason,
                    "duration_s": t.duration_s,
                }
                for t in self.targets
            ],
            "failed": [t.target for t in self.targets if t.outcome == "failed"],
            "analysis": self.analysis,
            "operators": self.operators,
            "hooks": self.hooks,
        }


def build_report(
    deployment: Deployment, entries: Sequence[JournalEntry], commands: Sequence[Command]
) -> Report:
    """Everything a change review asks: what changed where, what failed and why, who intervened."""
    report = Report(
        deployment=deployment.id,
        environment=deployment.environment,
        state=deployment.state.value,
        reason=deployment.reason,
        message=deployment.message,
        who=deployment.who,
        started_at=deployment.created_at,
        finished_at=entries[-1].at if entries else deployment.updated_at,
    )
    lines: dict[tuple[str, str], TargetLine] = {}
    for service in deployment.plan.get("services", []):
        for target in service.get("skipped", []):
            lines[(service["name"], target)] = TargetLine(
                service["name"], target, 0, service["version"], service["version"], "skipped"
            )
        for wave in service.get("waves", []):
            for target in wave["targets"]:
                lines[(service["name"], target)] = TargetLine(
                    service["name"],
                    target,
                    wave["number"],
                    service.get("previous", {}).get(target),
                    service["version"],
                )
    for entry in entries:
        line = lines.get((entry.service, entry.target))
        rollback = bool(entry.data.get("rollback"))
        if line is not None:
            if (
                entry.kind == "drain"
                and entry.phase == "begin"
                and not rollback
                and line.started_at is None
            ):
                line.started_at = entry.at
            elif entry.kind == "target" and entry.phase == "end":
                line.finished_at = entry.at
                line.outcome = "rolled_back" if rollback else "replaced"
            elif entry.kind == "target" and entry.phase == "fail" and not rollback:
                line.finished_at = entry.at
                line.outcome = "failed"
                line.reason = str(entry.data.get("reason", ""))
            elif entry.kind == "target" and entry.phase == "fail" and rollback:
                line.outcome = "rollback_failed"
                line.reason = str(entry.data.get("reason", ""))
        if entry.kind == "measurement":
            report.analysis.append({"service": entry.service, **dict(entry.data)})
        elif entry.kind.startswith("hook:") and entry.phase in ("end", "fail"):
            report.hooks.append(
                {
                    "hook": entry.kind.removeprefix("hook:"),
                    "service": entry.service,
                    "target": entry.target,
                    "ok": entry.phase == "end",
                    "exit_code": entry.data.get("exit_code"),
                }
            )
        elif entry.kind in ("approval", "freeze_override") and entry.phase in ("end", "info"):
            report.operators.append({"what": entry.kind, "at": entry.at, **dict(entry.data)})
    for command in commands:
        report.operators.append(
            {"what": command.kind, "at": command.at, "who": command.who, **dict(command.args)}
        )
    report.operators.sort(key=lambda o: float(o["at"]))
    report.targets = sorted(lines.values(), key=lambda t: (t.service, t.wave, t.target))
    return report
