"""``rollwave demo``: a real rolling deployment on this machine, under load.

Six slots of the sample app through the local driver, a real HAProxy in
front of them (its own configuration, pid and runtime socket in a temporary
directory), a steady load through HAProxy, then two rollouts: v1 -> v2,
which succeeds without a failed request, and v3, which never turns healthy
and is rolled back by itself. Everything started here is stopped here,
also on Ctrl-C, unless ``keep`` is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rollwave.demo.artifacts import build_artifact
from rollwave.demo.haproxy import HAProxyProcess
from rollwave.demo.loadgen import LoadGenerator, LoadReport
from rollwave.engine.clock import SystemClock
from rollwave.engine.executor import Listener
from rollwave.engine.runner import apply
from rollwave.errors import RollwaveError
from rollwave.spec.load import load_config

__all__ = ["DemoResult", "Rollout", "run_demo"]

SLOTS = 6
RATE = 200.0  # requests per second through HAProxy


@dataclass(frozen=True)
class Rollout:
    version: str
    state: str
    reason: str
    requests: int
    failed_requests: int
    duration_s: float
    deployment: int | None
    version_mix: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "duration_s": round(self.duration_s, 2),
            "deployment": self.deployment,
            "version_mix": self.version_mix,
        }


@dataclass
class DemoResult:
    workdir: Path
    url: str
    rollouts: list[Rollout] = field(default_factory=list)
    kept: bool = False
    pids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"rollouts": [r.to_dict() for r in self.rollouts]}
        if self.kept:
            data["kept"] = {"url": self.url, "workdir": str(self.workdir), "pids": self.pids}
        return data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spec(version: str, socket_path: Path, *, first: bool) -> dict[str, Any]:
    return {
        "environment": "demo",
        "state": "state.db",
        "inventory": "inventory.yaml",
        "services": {
            "app": {
                "hosts": "app",
                "version": version,
                "driver": {
                    "kind": "local",
                    "artifact": "dist/app-{version}.tar.gz",
                    "root": "fleet/{name}",
                    "start": [sys.executable, "{release}/app.py", "--port", "{http_port}"],
                    "keep": 3,
                    "stop_grace": "5s",
                },
                "health": {
                    "http": "http://127.0.0.1:{http_port}/healthz",
                    "interval": "200ms",
                    "successes": 3,
                    "deadline": "4s",
                },
                "traffic": {
                    "haproxy": {"socket": str(socket_path), "backend": "app", "server": "{name}"},
                    "drain": "2s",
                },
            }
        },
        "strategy": {
            "waves": ["100%"] if first else [1, "50%", "100%"],
            "max_unavailable": "100%" if first else 1,
            "bake": "0s" if first else "1s",
            "failure": {"tolerate": 0, "action": "rollback"},
        },
    }


def _mix(report: LoadReport) -> list[dict[str, Any]]:
    """Per second: the share of each version among the answers (percent)."""
    mix = []
    for bucket in report.timeline:
        total = sum(bucket.versions.values())
        shares = (
            {v: round(100 * n / total) for v, n in sorted(bucket.versions.items())} if total else {}
        )
        mix.append({"second": bucket.second, "share": shares, "failed": bucket.failed})
    return mix


async def run_demo(
    *,
    keep: bool = False,
    listeners: Sequence[Listener] = (),
    say: Callable[[str], None] = lambda _: None,
    workdir: Path | None = None,
) -> DemoResult:
    """Run the demo; ``say`` gets one line per phase for people to read."""
    root = workdir or Path(tempfile.mkdtemp(prefix="rollwave-demo-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    ports = {f"app-{i}": _free_port() for i in range(1, SLOTS + 1)}
    (root / "inventory.yaml").write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {
                        "name": name,
                        "address": "127.0.0.1",
                        "groups": ["app"],
                        "vars": {"http_port": port},
                    }
                    for name, port in ports.items()
                ]
            }
        )
    )
    for version, behaviour in (("1.0.0", None), ("2.0.0", None), ("3.0.0", {"fail_health": True})):
        build_artifact(root / "dist", version, behaviour)
    frontend = _free_port()
    haproxy = HAProxyProcess(
        root / "haproxy",
        frontend,
        "app",
        [(name, "127.0.0.1", port) for name, port in ports.items()],
    )
    result = DemoResult(workdir=root, url=haproxy.url)
    spec_path = root / "rollwave.yaml"

    def write(version: str, first: bool = False) -> None:
        spec_path.write_text(
            yaml.safe_dump(_spec(version, haproxy.socket_path, first=first), sort_keys=False)
        )

    load: LoadGenerator | None = None
    try:
        haproxy.start()
        say(f"HAProxy on {haproxy.url}, {SLOTS} slots of the sample app, work directory {root}")
        write("1.0.0", first=True)
        say("installing v1.0.0 on every slot")
        first = await apply(load_config(spec_path), listeners=listeners)
        if first.outcome.state.value != "succeeded":
            raise RollwaveError(f"the demo could not install v1.0.0: {first.outcome.message}")
        load = LoadGenerator(haproxy.url, RATE, clock=SystemClock())
        load.start()
        await asyncio.sleep(1.0)
        for version, expect in (
            ("2.0.0", "a healthy release"),
            ("3.0.0", "a release that never turns healthy"),
        ):
            write(version)
            say(f"rolling out v{version}: {expect}, under {RATE:.0f} requests/s through HAProxy")
            load.mark(version)
            outcome = await apply(load_config(spec_path), listeners=listeners)
            await asyncio.sleep(0.5)  # let the last requests of this rollout finish
            load.mark(f"{version}-end")
            report = load.report_since(version, until=f"{version}-end")
            result.rollouts.append(
                Rollout(
                    version=version,
                    state=outcome.outcome.state.value,
                    reason=outcome.outcome.reason,
                    requests=report.total,
                    failed_requests=report.failed,
                    duration_s=report.duration,
                    deployment=outcome.deployment.id if outcome.deployment else None,
                    version_mix=_mix(report),
                )
            )
            say(
                f"v{version}: {outcome.outcome.state.value} — {report.total} requests, {report.failed} failed"
            )
        await load.stop()
        load = None
        if keep:
            result.kept = True
            result.pids = [pid for pid in [haproxy.pid, *_slot_pids(root, ports)] if pid]
            return result
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                await load.stop()
        if not result.kept:
            await _stop_fleet(spec_path, ports)
            haproxy.stop()
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)
    return result


def _slot_pids(root: Path, ports: dict[str, int]) -> list[int]:
    import json

    pids = []
    for name in ports:
        path = root / "fleet" / name / "pid"
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(int(json.loads(path.read_text())["pid"]))
    return pids


async def _stop_fleet(spec_path: Path, ports: dict[str, int]) -> None:
    """Stop every slot through the driver (the PIDs it recorded, nothing else)."""
    if not spec_path.exists():
        return
    from rollwave.engine.wiring import build_driver

    config = load_config(spec_path)
    driver = build_driver(config, "app", SystemClock())
    for name in ports:
        with contextlib.suppress(RollwaveError, OSError):
            await driver.stop(config.inventory.target(name))
    await driver.close()
