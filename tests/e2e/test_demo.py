"""`rollwave demo` as a newcomer runs it: a real rollout under load, then a rollback, then a clean machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.processes import Processes, alive
from support.requirements import require_binary

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment mentions ``text`` (read from /proc, nothing killed)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline or text.encode() in environ:
            found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


def test_demo_json(tmp_path: Path) -> None:
    """The demo's v2 rollout succeeds without a failed request and v3 is rolled back; nothing is left behind."""
    require_binary("haproxy", "haproxy")
    before = set(Path("/tmp").glob("rollwave-demo-*"))
    result = subprocess.run(
        [sys.executable, "-m", "rollwave.cli", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ROLLWAVE_DEBUG_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    rollouts = {r["version"]: r for r in summary["rollouts"]}
    assert rollouts["2.0.0"]["state"] == "succeeded"
    assert rollouts["2.0.0"]["failed_requests"] == 0
    assert rollouts["2.0.0"]["requests"] > 200
    assert rollouts["2.0.0"]["version_mix"][-1]["share"] == {"2.0.0": 100}
    assert rollouts["3.0.0"]["state"] == "rolled_back"
    for rollout in summary["rollouts"]:
        assert set(rollout) >= {"version", "state", "requests", "failed_requests", "duration_s"}
    leftovers = set(Path("/tmp").glob("rollwave-demo-*")) - before
    assert leftovers == set()


def test_demo_ctrl_c_cleans_up(procs: Processes) -> None:
    """Ctrl-C in the middle of a rollout stops every process the demo started and removes its files."""
    require_binary("haproxy", "haproxy")
    child = subprocess.Popen(
        [sys.executable, "-m", "rollwave.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.children.append(child)  # type: ignore[arg-type]
    assert child.stdout is not None
    workdir = None
    deadline = time.monotonic() + 120
    for line in child.stdout:
        found = re.search(r"work directory (/tmp/rollwave-demo-\S+)", line)
        if found:
            workdir = found.group(1)
        if "rolling out v2.0.0" in line:
            break
        assert time.monotonic() < deadline
    assert workdir is not None
    time.sleep(2)
    assert processes_mentioning(workdir), "the demo's fleet should be running mid-rollout"
    child.send_signal(signal.SIGINT)
    child.wait(timeout=60)
    assert child.returncode == 130
    time.sleep(0.5)
    assert processes_mentioning(workdir) == []
    assert not Path(workdir).exists()


def test_demo_keep_leaves_fleet_running(tmp_path: Path) -> None:
    """--keep leaves HAProxy and the fleet serving, and says how to reach and stop them."""
    require_binary("haproxy", "haproxy")
    result = subprocess.run(
        [sys.executable, "-m", "rollwave.cli", "demo", "--json", "--keep"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = json.loads(result.stdout)
    kept = summary["kept"]
    try:
        assert result.returncode == 0, result.stderr
        answer = httpx.get(kept["url"], timeout=5)
        assert answer.status_code == 200
        assert answer.text.strip() == "2.0.0"
        assert len(kept["pids"]) == 7  # HAProxy and six slots
    finally:
        for pid in kept["pids"]:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(kept["workdir"], ignore_errors=True)
