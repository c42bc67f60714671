"""Turning plans, deployments and journals into text for people. Pure."""

from __future__ import annotations

from rollwave.plan.planner import Plan
from rollwave.spec.units import format_duration

__all__ = ["plan_markdown", "plan_rows"]


def _targets(names: tuple[str, ...], limit: int = 8) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … (+{len(names) - limit} more)"


def plan_rows(plan: Plan) -> list[tuple[str, str, str, str, str, str]]:
    """(service, wave, targets, capacity, gates, after) rows for the plan table."""
    rows = []
    for service in plan.services:
        head = f"{service.name} → {service.version} (stage {service.stage})"
        if not service.waves:
            rows.append((head, "-", "nothing to change", "-", "", ""))
        for wave in service.waves:
            domains = " | ".join(f"{d}: {len(t)}" for d, t in wave.domains) if wave.domains else ""
            capacity = (
                f"≤{wave.max_unavailable} out, ≥{service.total - wave.max_unavailable}"
                f"/{service.total} serving"
            )
            rows.append(
                (
                    head if wave.number == 1 else "",
                    f"{wave.number}",
                    f"{len(wave.targets)}: {_targets(wave.targets)}"
                    + (f"  [{domains}]" if domains else ""),
                    capacity,
                    "approve" if wave.approve else "",
                    f"bake {format_duration(wave.bake)}" if wave.bake else "",
                )
            )
        if service.skipped:
            rows.append(
                (
                    "",
                    "skip",
                    f"{len(service.skipped)} already at {service.version}: {_targets(service.skipped)}",
                    "",
                    "",
                    "",
                )
            )
    return rows


def plan_markdown(plan: Plan) -> str:
    """The plan as Markdown, to paste into a change request."""
    lines = [f"# Deployment plan: {plan.environment}", ""]
    order = (
        "one service at a time"
        if plan.order == "staged"
        else "independent services of a stage together"
    )
    lines.append(f"Services run in dependency order, {order}.")
    lines.append("")
    for service in plan.services:
        deps = f", after {', '.join(service.depends_on)}" if service.depends_on else ""
        lines.append(f"## {service.name} → {service.version} (stage {service.stage}{deps})")
        lines.append("")
        lines.append(
            f"{service.total} targets; at most {service.bound} out of service at any moment."
        )
        lines.append("")
        if service.waves:
            lines.append("| wave | targets | max unavailable | done after | gate | bake |")
            lines.append("| --- | --- | --- | --- | --- | --- |")
            for wave in service.waves:
                gate = "approval required" if wave.approve else ""
                bake = format_duration(wave.bake) if wave.bake else ""
                names = ", ".join(wave.targets)
                lines.append(
                    f"| {wave.number} | {names} | {wave.max_unavailable} | {wave.done_after}/{service.total} | {gate} | {bake} |"
                )
            lines.append("")
        else:
            lines.append("Nothing to change.")
            lines.append("")
        if service.skipped:
            lines.append(f"Skipped (already at {service.version}): {', '.join(service.skipped)}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
