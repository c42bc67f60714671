"""A report as Markdown or a self-contained HTML page. Pure."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from rollwave.report.build import Report

__all__ = ["to_html", "to_markdown"]


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def to_markdown(report: Report) -> str:
    lines = [
        f"# Deployment {report.deployment} of {report.environment}: {report.state}",
        "",
        f"- started by {report.who} at {_when(report.started_at)}, took {report.duration_s:.1f}s",
        f"- outcome: **{report.state}** ({report.reason}) — {report.message}",
        "",
        "## Targets",
        "",
        "| service | wave | target | from | to | outcome | took | reason |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in report.targets:
        took = f"{t.duration_s:.1f}s" if t.duration_s is not None else ""
        lines.append(
            f"| {t.service} | {t.wave or ''} | {t.target} | {t.previous or '-'} | {t.version} "
            f"| {t.outcome} | {took} | {t.reason} |"
        )
    failed = [t for t in report.targets if t.outcome == "failed"]
    if failed:
        lines += ["", "## Failed targets", ""]
        lines += [f"- {t.service}/{t.target}: {t.reason}" for t in failed]
    if report.analysis:
        lines += ["", "## Analysis", ""]
        lines += [
            f"- {m.get('service')} wave {m.get('wave')}: {m.get('check')} {m.get('status')} — {m.get('message')}"
            for m in report.analysis
            if m.get("status") not in ("running",)
        ]
    if report.operators:
        lines += ["", "## Operators", ""]
        lines += [
            f"- {_when(float(o['at']))}: {o['what']} by {o.get('who', '?')}"
            + (f" (wave {o['wave']})" if "wave" in o else "")
            + (f": {o['reason']}" if o.get("reason") else "")
            for o in report.operators
        ]
    return "\n".join(lines) + "\n"


def to_html(report: Report) -> str:
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(v))}</td>"
            for v in (
                t.service,
                t.wave or "",
                t.target,
                t.previous or "-",
                t.version,
                t.outcome,
                f"{t.duration_s:.1f}s" if t.duration_s is not None else "",
                t.reason,
            )
        )
        + "</tr>"
        for t in report.targets
    )
    analysis = "\n".join(
        f"<li>{html.escape(str(m.get('check')))}: {html.escape(str(m.get('status')))} — "
        f"{html.escape(str(m.get('message')))}</li>"
        for m in report.analysis
        if m.get("status") != "running"
    )
    title = f"Deployment {report.deployment} of {report.environment}: {report.state}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem}}.failed{{color:#b00}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Started by {html.escape(report.who)} at {_when(report.started_at)}, took {report.duration_s:.1f}s.
Outcome: <strong>{html.escape(report.state)}</strong> ({html.escape(report.reason)}) — {html.escape(report.message)}</p>
<h2>Targets</h2><table><tr><th>service</th><th>wave</th><th>target</th><th>from</th><th>to</th>
<th>outcome</th><th>took</th><th>reason</th></tr>
{rows}
</table>
<h2>Analysis</h2><ul>{analysis or "<li>none</li>"}</ul>
</body></html>
"""
