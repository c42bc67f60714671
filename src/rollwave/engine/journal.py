"""The journal: append-only steps, and what a resumed run learns from them.

Every side effect is announced by a ``begin`` entry before it happens and
confirmed by an ``end`` (or ``fail``) entry after it. Resume and reports
read only this record. :func:`replay` folds the entries of one deployment
into a :class:`Progress` (pure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rollwave.engine.ports import JournalEntry

__all__ = ["STEPS", "Progress", "replay"]

# The steps of one target, in order; each is journaled begin -> end|fail.
STEPS = ("drain", "wait_drained", "deploy", "restart", "health", "verify", "enable")


@dataclass
class Progress:
    """What one deployment has done so far, folded from its journal."""

    services_done: set[str] = field(default_factory=set)
    services_failed: set[str] = field(default_factory=set)
    waves_done: set[tuple[str, int]] = field(default_factory=set)
    bakes_done: set[tuple[str, int]] = field(default_factory=set)
    approvals: set[tuple[str, int]] = field(default_factory=set)
    targets_done: dict[tuple[str, str], str] = field(default_factory=dict)  # -> version
    targets_failed: dict[tuple[str, str], str] = field(default_factory=dict)  # -> reason
    touched: list[tuple[str, str]] = field(default_factory=list)  # first deploy begin, in order
    rolled_back: set[tuple[str, str]] = field(default_factory=set)
    rollback_started: bool = False
    rollback_scope: list[str] = field(default_factory=list)
    expand_started: bool = False
    expand_done: bool = False
    contract_started: bool = False
    contract_done: bool = False
    deployment_hooks_done: set[str] = field(default_factory=set)
    last_seq: int = 0
    resumes: int = 0


def replay(entries: Iterable[JournalEntry]) -> Progress:
    """Fold journal entries (in sequence order) into a :class:`Progress`."""
    progress = Progress()
    for entry in entries:
        progress.last_seq = entry.seq
        key = (entry.service, entry.target)
        rollback = bool(entry.data.get("rollback"))
        if entry.kind == "deploy" and entry.phase == "begin" and not rollback:
            if key not in progress.touched:
                progress.touched.append(key)
        elif entry.kind == "target" and entry.phase == "end":
            if rollback:
                progress.rolled_back.add(key)
            else:
                progress.targets_done[key] = str(entry.data.get("version", ""))
                progress.targets_failed.pop(key, None)
        elif entry.kind == "target" and entry.phase == "fail" and not rollback:
            progress.targets_failed[key] = str(entry.data.get("reason", ""))
        elif entry.kind == "wave" and entry.phase == "end":
            progress.waves_done.add((entry.service, int(entry.data["wave"])))
        elif entry.kind == "bake" and entry.phase == "end":
            progress.bakes_done.add((entry.service, int(entry.data["wave"])))
        elif entry.kind == "approval" and entry.phase == "end":
            progress.approvals.add((entry.service, int(entry.data["wave"])))
        elif entry.kind == "service" and entry.phase == "end":
            progress.services_done.add(entry.service)
        elif entry.kind == "service" and entry.phase == "fail":
            progress.services_failed.add(entry.service)
        elif entry.kind == "rollback" and entry.phase == "begin":
            progress.rollback_started = True
            progress.rollback_scope = list(entry.data.get("services", []))
        elif entry.kind in ("expand", "contract"):
            if entry.phase == "begin":
                setattr(progress, f"{entry.kind}_started", True)
            elif entry.phase == "end":
                setattr(progress, f"{entry.kind}_done", True)
        elif entry.kind.startswith("hook:") and entry.phase == "end" and not entry.service:
            progress.deployment_hooks_done.add(entry.kind.removeprefix("hook:"))
        elif entry.kind == "resume":
            progress.resumes += 1
    return progress
