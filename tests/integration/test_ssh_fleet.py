"""`rollwave apply` through the CLI, over SSH, to namespace hosts behind a real HAProxy.

The hosts, their sshd and supervisors, the bridge and HAProxy come from the
``ssh_fleet`` fixture (support/netns.py). The CLI runs in a subprocess; the
load generator runs in this test's event loop meanwhile and sends every
request through HAProxy on a fresh connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from rollwave.demo.loadgen import LoadGenerator, LoadReport
from support.fleet import read_journal
from support.netns import APP_PORT, Host, SSHFleet

pytestmark = pytest.mark.integration

Fleet = Callable[..., SSHFleet]
RATE = 40.0  # requests per second through HAProxy
LOAD_TIMEOUT = 10.0  # a request fails when HAProxy cannot answer it, not when it is slow


class CLI:
    """The `rollwave` command on a spec in the fleet's directory."""

    def __init__(self, fleet: SSHFleet) -> None:
        self.fleet = fleet
        self.spec_path = fleet.base / "rollwave.yaml"
        self.extra_env: dict[str, str] = {}
        fleet.write_inventory(fleet.base / "inventory.yaml")

    def write_spec(
        self,
        version: str,
        *,
        waves: list[Any],
        max_unavailable: Any,
        tolerate: int = 0,
        keep: int = 2,
        health: dict[str, Any] | None = None,
        bake: str = "0s",
    ) -> None:
        assert self.fleet.haproxy is not None
        spec = {
            "environment": "fleet",
            "inventory": "inventory.yaml",
            "services": {
                "app": {
                    "hosts": "app",
                    "version": version,
                    "driver": {
                        "kind": "ssh",
                        "artifact": "dist/app-{version}.tar.gz",
                        "root": "{app_root}",
                        "restart": self.fleet.restart_argv(),
                        "stop": self.fleet.stop_argv(),
                        "known_hosts": "client/known_hosts",
                        "keep": keep,
                        "connect_timeout": "2s",
                        "command_timeout": "20s",
                    },
                    "health": health
                    or {
                        "http": f"http://{{address}}:{APP_PORT}/healthz",
                        "interval": "200ms",
                        "successes": 2,
                        "deadline": "15s",
                    },
                    "traffic": {
                        "haproxy": {
                            "socket": str(self.fleet.haproxy.socket_path),
                            "backend": "app",
                            "server": "{name}",
                        },
                        "drain": "300ms",
                    },
                }
            },
            "strategy": {
                "waves": waves,
                "max_unavailable": max_unavailable,
                "failure": {"tolerate": tolerate, "action": "rollback"},
                "bake": bake,
            },
        }
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rollwave.cli", *args, "-f", str(self.spec_path)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "ROLLWAVE_DEBUG_DIR": str(self.fleet.base), **self.extra_env}

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    def json(self, *args: str) -> dict[str, Any]:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return dict(json.loads(result.stdout))

    def journal(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(kind, phase, target, data) of every journal entry, read straight from the state file."""
        return read_journal(self.fleet.base / ".rollwave" / "state.db")

    def wait_journal(
        self,
        kind: str,
        phase: str,
        target: str,
        child: subprocess.Popen[str],
        since: int,
        timeout: float = 120,
    ) -> None:
        """Wait until the journal, past its first ``since`` entries, shows that step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e[:3] == (kind, phase, target) for e in self.journal()[since:]):
                return
            if child.poll() is not None:
                out, err = child.communicate()
                tail = "\n".join(str(e) for e in self.journal()[-15:])
                raise AssertionError(
                    f"apply ended before {kind} {phase} {target}:\n{out}{err}\njournal:\n{tail}"
                )
            time.sleep(0.05)
        raise AssertionError(f"the journal never showed {kind} {phase} {target}")


def haproxy_status(fleet: SSHFleet) -> dict[str, str]:
    """Each server's status (UP, DOWN, DRAIN, MAINT...) from HAProxy's runtime API."""
    assert fleet.haproxy is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(fleet.haproxy.socket_path))
        sock.sendall(b"show stat\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {
        r["svname"]: r["status"]
        for r in rows
        if r["pxname"] == "app" and r["svname"] not in ("BACKEND", "FRONTEND")
    }


def wait_all_up(fleet: SSHFleet, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(haproxy_status(fleet).values()) == {"UP"}:
            return
        time.sleep(0.1)
    raise AssertionError(f"HAProxy servers not all UP: {haproxy_status(fleet)}")


def served(host: Host) -> str:
    try:
        return httpx.get(
            f"http://{host.address}:{APP_PORT}/", timeout=2, trust_env=False
        ).text.strip()
    except httpx.HTTPError:
        return "down"


def deploy_v1(fleet: SSHFleet, cli: CLI) -> None:
    """Every host on 1.0 at once (a first deployment), all UP in HAProxy."""
    cli.write_spec("1.0", waves=["100%"], max_unavailable="100%")
    result = cli.run("apply", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_all_up(fleet)
    assert {served(h) for h in fleet.hosts} == {"1.0"}


async def apply_under_load(cli: CLI, url: str) -> tuple[int, str, LoadReport]:
    """Run `rollwave apply --yes` while a load generator sends RATE requests/s to ``url``."""
    load = LoadGenerator(url, RATE, timeout=LOAD_TIMEOUT)
    load.start()
    try:
        await asyncio.sleep(1.0)  # steady load before the first drain
        child = await asyncio.create_subprocess_exec(
            *cli.argv("apply", "--yes"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=cli.env(),
        )
        output, _ = await asyncio.wait_for(child.communicate(), 240)
        await asyncio.sleep(1.0)  # and after the last enable
    finally:
        report = await load.stop()
    assert child.returncode is not None
    return child.returncode, output.decode(errors="replace"), report


def describe(report: LoadReport) -> str:
    return (
        f"{report.total} requests, {report.failed} failed {dict(report.failures)}, "
        f"versions {report.version_counts()}, failed per second "
        f"{[b.failed for b in report.timeline]}"
    )


# --------------------------------------------------------------------- tests


def test_rollout_to_ten_hosts_under_load_has_zero_failed_requests(ssh_fleet: Fleet) -> None:
    """Two rollouts over SSH to 10 hosts under steady load fail no request; current and prune are right."""
    fleet = ssh_fleet(10, haproxy=True)
    for version in ("1.0", "2.0", "3.0"):
        fleet.build(version)
    cli = CLI(fleet)
    deploy_v1(fleet, cli)
    assert fleet.haproxy is not None

    for version in ("2.0", "3.0"):
        cli.write_spec(version, waves=[1, "50%", "100%"], max_unavailable=3)
        code, output, report = asyncio.run(apply_under_load(cli, fleet.haproxy.url))
        assert code == 0, output
        assert report.failed == 0, describe(report)
        assert report.total >= RATE * 3, describe(report)
        assert report.version_counts().get(version, 0) > 0, describe(report)
        assert {fleet.current(h) for h in fleet.hosts} == {version}
        wait_all_up(fleet)

    for host in fleet.hosts:
        assert fleet.current(host) == "3.0"
        assert fleet.releases(host) == ["2.0", "3.0"]  # keep: 2; 1.0 pruned
        assert (host.app_root / "previous").read_text() == "2.0\n"
        assert served(host) == "3.0"
    status = cli.json("status")
    assert status["state"] == "succeeded"
    again = cli.run("apply", "--yes", "--json")
    assert again.returncode == 0
    assert '"reason": "NothingToDo"' in again.stdout


def cut_mid_rollout(
    fleet: SSHFleet, cli: CLI, tolerate: int
) -> tuple[Host, subprocess.Popen[str], int]:
    """Start an apply of 2.0 one target at a time; once the first target is done, cut the last one's link."""
    cli.write_spec("2.0", waves=[1, "100%"], max_unavailable=1, tolerate=tolerate)
    plan = cli.json("plan")
    order = [t for wave in plan["services"][0]["waves"] for t in wave["targets"]]
    victim = next(h for h in fleet.hosts if h.name == order[-1])
    since = len(cli.journal())
    child = cli.popen("apply", "--yes")
    cli.wait_journal("target", "end", order[0], child, since)
    fleet.set_link(victim, up=False)
    return victim, child, since


def test_unreachable_host_with_tolerate_0_rolls_back(ssh_fleet: Fleet) -> None:
    """A host cut off mid-rollout fails its target and, with tolerate 0, the deployment rolls back.

    The link comes back once the target has failed, so the rollback can
    reach that host too (over a new connection): every host ends on 1.0.
    """
    fleet = ssh_fleet(4, haproxy=True)
    fleet.build("1.0")
    fleet.build("2.0")
    cli = CLI(fleet)
    deploy_v1(fleet, cli)
    victim, child, since = cut_mid_rollout(fleet, cli, tolerate=0)
    try:
        cli.wait_journal("target", "fail", victim.name, child, since)
    finally:
        fleet.set_link(victim, up=True)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 1, out + err
    failure = next(e for e in cli.journal()[since:] if e[:3] == ("target", "fail", victim.name))
    assert victim.address in failure[3]["reason"]
    status = cli.json("status")
    assert status["state"] == "rolled_back", status
    assert status["reason"] == "BudgetExceeded"
    assert status["services"][0]["failed"] == [victim.name]
    assert {fleet.current(h) for h in fleet.hosts} == {"1.0"}
    assert {served(h) for h in fleet.hosts} == {"1.0"}
    wait_all_up(fleet)


def test_unreachable_host_with_tolerate_1_completes(ssh_fleet: Fleet) -> None:
    """A host cut off mid-rollout fails its target; with tolerate 1 the others finish on the new version."""
    fleet = ssh_fleet(4, haproxy=True)
    fleet.build("1.0")
    fleet.build("2.0")
    cli = CLI(fleet)
    deploy_v1(fleet, cli)
    victim, child, _ = cut_mid_rollout(fleet, cli, tolerate=1)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 0, out + err
    status = cli.json("status")
    assert status["state"] == "succeeded", status
    assert status["services"][0]["failed"] == [victim.name]
    others = [h for h in fleet.hosts if h is not victim]
    assert {fleet.current(h) for h in others} == {"2.0"}
    assert {served(h) for h in others} == {"2.0"}
    assert fleet.current(victim) == "1.0"  # never reached: nothing changed on it
    assert haproxy_status(fleet)[victim.name] != "UP"
    report = cli.json("report")
    assert report["failed"] == [victim.name]
    line = next(t for t in report["targets"] if t["target"] == victim.name)
    assert line["outcome"] == "failed"
    assert victim.address in line["reason"]


def test_resume_after_sigkill_mid_wave(ssh_fleet: Fleet) -> None:
    """SIGKILL of the engine in the middle of a wave, then `apply` again: the rollout resumes and completes."""
    fleet = ssh_fleet(4, haproxy=True)
    fleet.build("1.0")
    fleet.build("2.0")
    cli = CLI(fleet)
    deploy_v1(fleet, cli)
    cli.extra_env["ROLLWAVE_LOCK_TTL"] = "3"
    cli.write_spec("2.0", waves=[1, "100%"], max_unavailable=2)
    plan = cli.json("plan")
    second_wave = plan["services"][0]["waves"][1]["targets"]
    since = len(cli.journal())
    child = cli.popen("apply", "--yes")
    cli.wait_journal("health", "begin", second_wave[0], child, since)
    child.kill()
    child.communicate()
    time.sleep(3.5)  # the dead engine's lease expires
    resumed = cli.run("apply", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming deployment" in resumed.stdout
    assert {fleet.current(h) for h in fleet.hosts} == {"2.0"}
    assert {served(h) for h in fleet.hosts} == {"2.0"}
    wait_all_up(fleet)
    kinds = [k for k, _, _, _ in cli.journal()[since:]]
    assert "resume" in kinds
    assert cli.json("status")["state"] == "succeeded"


def test_health_command_runs_on_the_target(ssh_fleet: Fleet) -> None:
    """A `command` health check runs on the target over SSH (on: target), not on the controller."""
    fleet = ssh_fleet(2, haproxy=True)
    fleet.build("1.0")
    fleet.build("2.0")
    cli = CLI(fleet)
    deploy_v1(fleet, cli)
    probe = (
        'echo "$SSH_CONNECTION" > "$0/probed-over"; '
        'exec python3 -c "import sys, urllib.request; '
        'sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)" '
        f'"http://$1:{APP_PORT}/healthz"'
    )
    cli.write_spec(
        "2.0",
        waves=["100%"],
        max_unavailable=1,
        health={
            "command": ["sh", "-c", probe, "{app_root}", "{address}"],
            "on": "target",
            "interval": "200ms",
            "deadline": "15s",
        },
    )
    result = cli.run("apply", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in fleet.hosts:
        seen = (host.app_root / "probed-over").read_text().split()
        assert seen[2] == host.address  # SSH_CONNECTION: client ip, port, server ip, port
        assert served(host) == "2.0"
