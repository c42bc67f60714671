"""A fleet of local process slots running the sample app, driven by the real `rollwave` CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollwave.demo.artifacts import build_artifact
from support.processes import Processes, free_port, slot_pids

__all__ = ["LocalFleet", "read_journal"]

TRAFFIC_SCRIPT = """#!/bin/sh
# traffic.sh ACTION NAME: a load balancer stand-in that records each target's state in a file.
dir="$(dirname "$0")/traffic"
mkdir -p "$dir"
case "$1" in
  drain) sleep "${ROLLWAVE_TEST_DRAIN_DELAY:-0}"; echo drain > "$dir/$2" ;;
  enable) echo ready > "$dir/$2" ;;
  state) cat "$dir/$2" 2>/dev/null || echo ready ;;
esac
"""


def read_journal(path: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, phase, target, data) of every journal entry of a state file, read-only."""
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT kind, phase, target, data FROM journal ORDER BY seq"
            ).fetchall()
    except sqlite3.OperationalError:
        return []
    return [(k, p, t, json.loads(d or "{}")) for k, p, t, d in rows]


class LocalFleet:
    """N slots of the sample app on free loopback ports, a spec, and the CLI to drive them."""

    def __init__(self, base: Path, size: int, procs: Processes) -> None:
        self.base = base
        self.procs = procs
        self.names = [f"app-{i}" for i in range(1, size + 1)]
        self.ports = {name: free_port() for name in self.names}
        self.env: dict[str, str] = {}
        inventory = {
            "targets": [
                {
                    "name": name,
                    "address": "127.0.0.1",
                    "groups": ["app"],
                    "vars": {"http_port": self.ports[name], "fail": "", "zone": f"z{i % 2}"},
                }
                for i, name in enumerate(self.names)
            ]
        }
        (base / "inventory.yaml").write_text(yaml.safe_dump(inventory))
        script = base / "traffic.sh"
        script.write_text(TRAFFIC_SCRIPT)
        script.chmod(0o755)

    # ------------------------------------------------------------- set-up

    def build(self, version: str, behaviour: dict[str, Any] | None = None) -> None:
        build_artifact(self.base / "dist", version, behaviour)

    def set_var(self, name: str, key: str, value: Any) -> None:
        data = yaml.safe_load((self.base / "inventory.yaml").read_text())
        for target in data["targets"]:
            if target["name"] == name:
                target["vars"][key] = value
        (self.base / "inventory.yaml").write_text(yaml.safe_dump(data))

    def service(
        self,
        version: str,
        *,
        hosts: str = "app",
        deadline: str = "6s",
        successes: int = 2,
        start: list[str] | None = None,
        depends_on: list[str] | None = None,
    ) -> dict[str, Any]:
        """One service of sample-app slots, with health checks and the file-backed traffic manager."""
        script = str(self.base / "traffic.sh")
        return {
            "hosts": hosts,
            "version": version,
            "depends_on": depends_on or [],
            "driver": {
                "kind": "local",
                "artifact": "dist/app-{version}.tar.gz",
                "root": "fleet/{name}",
                "start": start
                or [
                    "env",
                    "ROLLWAVE_DEMO_FAIL_HEALTH={fail}",
                    sys.executable,
                    "{release}/app.py",
                    "--port",
                    "{http_port}",
                ],
                "keep": 3,
                "stop_grace": "5s",
            },
            "health": {
                "http": "http://127.0.0.1:{http_port}/healthz",
                "interval": "200ms",
                "successes": successes,
                "deadline": deadline,
            },
            "traffic": {
                "command": {
                    "drain": [script, "drain", "{name}"],
                    "enable": [script, "enable", "{name}"],
                    "state": [script, "state", "{name}"],
                },
                "drain": "100ms",
            },
        }

    def write_spec(
        self,
        version: str,
        *,
        waves: list[Any] | None = None,
        max_unavailable: Any = 1,
        tolerate: int = 0,
        action: str = "rollback",
        scope: str = "service",
        bake: str = "0s",
        approve_before: list[int] | None = None,
        deadline: str = "6s",
        successes: int = 2,
        state: str = ".rollwave/state.db",
        start: list[str] | None = None,
        services: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        progress_deadline: str = "10m",
    ) -> Path:
        """Write rollwave.yaml: one service ``app`` of every slot, unless ``services`` is given."""
        spec: dict[str, Any] = {
            "environment": "test",
            "state": state,
            "inventory": "inventory.yaml",
            "services": services
            or {"app": self.service(version, deadline=deadline, successes=successes, start=start)},
            "strategy": {
                "waves": waves or [1, "100%"],
                "max_unavailable": max_unavailable,
                "bake": bake,
                "approve_before": approve_before or [],
                "failure": {"tolerate": tolerate, "action": action, "scope": scope},
                "progress_deadline": progress_deadline,
            },
        }
        if extra:
            spec.update(extra)
        path = self.base / "rollwave.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    def set_groups(self, groups: dict[str, list[str]]) -> None:
        """Put each slot into the given groups (replacing ``app``)."""
        data = yaml.safe_load((self.base / "inventory.yaml").read_text())
        for target in data["targets"]:
            target["groups"] = [g for g, names in groups.items() if target["name"] in names]
        (self.base / "inventory.yaml").write_text(yaml.safe_dump(data))

    # ---------------------------------------------------------------- CLI

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ROLLWAVE_LOCK_TTL": "2",
            "ROLLWAVE_DEBUG_DIR": str(self.base),
            **self.env,
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rollwave.cli", *args, "-f", str(self.base / "rollwave.yaml")]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(),
        )
        self.procs.children.append(child)  # type: ignore[arg-type]
        return child

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def show(self, deployment: int | None = None) -> dict[str, Any]:
        args = ["show", str(deployment), "--json"] if deployment else ["show", "--json"]
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    # -------------------------------------------------------------- world

    def journal(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(kind, phase, target, data) of every journal entry, read straight from the state file."""
        return read_journal(self.base / ".rollwave" / "state.db")

    def wait_for(
        self, kind: str, phase: str, target: str = "", timeout: float = 60, since: int = 0
    ) -> None:
        """Wait until the journal, past its first ``since`` entries, shows that step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, p, t, _ in self.journal()[since:]:
                if k == kind and p == phase and (not target or t == target):
                    return
            time.sleep(0.05)
        raise AssertionError(f"journal never showed {kind} {phase} {target}")

    def served(self) -> dict[str, str]:
        """What each slot answers on / right now ('down' when it does not answer)."""
        answers = {}
        for name, port in self.ports.items():
            try:
                answers[name] = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text.strip()
            except httpx.HTTPError:
                answers[name] = "down"
        return answers

    def current(self) -> dict[str, str | None]:
        result: dict[str, str | None] = {}
        for name in self.names:
            link = self.base / "fleet" / name / "current"
            result[name] = Path(os.readlink(link)).name if link.is_symlink() else None
        return result

    def traffic(self) -> dict[str, str]:
        states = {}
        for name in self.names:
            path = self.base / "traffic" / name
            states[name] = path.read_text().strip() if path.exists() else "untouched"
        return states

    def processes(self) -> dict[str, list[int]]:
        """The live processes of each slot, found by the slot marker in their environment."""
        return {
            name: sorted(slot_pids(str((self.base / "fleet" / name).resolve())))
            for name in self.names
        }

    def assert_one_process_each(self) -> None:
        """Each slot runs exactly one process: the one its PID file names."""
        for name, pids in self.processes().items():
            record = json.loads((self.base / "fleet" / name / "pid").read_text())
            assert pids == [record["pid"]], f"{name}: processes {pids}, PID file {record['pid']}"
