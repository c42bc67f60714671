"""The local driver against real files and real processes on loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from rollwave.drivers.local import LocalDriver
from rollwave.engine.clock import SystemClock
from rollwave.errors import DriverError
from rollwave.inventory.model import Target
from support.processes import Processes, alive, free_port, proc_start, slot_pids

pytestmark = pytest.mark.integration

APP = Path(__file__).parents[1] / "fixtures" / "tinyapp" / "app.py"
START = [sys.executable, "{release}/app.py", "--port", "{http_port}"]


# ----------------------------------------------------------------- helpers


def build(base: Path, version: str, kind: str = "tar") -> None:
    """The tiny app at ``version`` as dist/app-<version>.tar.gz or the directory dist/app-<version>."""
    src = base / "build" / version
    src.mkdir(parents=True)
    shutil.copy(APP, src / "app.py")
    (src / "VERSION").write_text(f"{version}\n")
    (base / "dist").mkdir(exist_ok=True)
    if kind == "tar":
        with tarfile.open(base / "dist" / f"app-{version}.tar.gz", "w:gz") as tar:
            tar.add(src, arcname=".")
    else:
        shutil.copytree(src, base / "dist" / f"app-{version}")


def make_driver(base: Path, kind: str = "tar", **kwargs: object) -> LocalDriver:
    options: dict[str, object] = {
        "service": "web",
        "artifact": "dist/app-{version}.tar.gz" if kind == "tar" else "dist/app-{version}",
        "root": "fleet/{name}",
        "start": START,
        "keep": 3,
        "base_dir": base,
        "stop_grace": 5.0,
        "clock": SystemClock(),
    }
    options.update(kwargs)
    return LocalDriver(**options)  # type: ignore[arg-type]


def target(name: str = "web-1", port: int | None = None) -> Target:
    return Target(name, "127.0.0.1", vars={"http_port": port or free_port()})


async def served(port: int, expect: str, timeout: float = 15.0) -> str:
    """GET / until it answers ``expect`` (or the timeout), returning the last answer."""
    last = ""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                last = (await client.get(f"http://127.0.0.1:{port}/")).text.strip()
            except httpx.HTTPError as exc:
                last = repr(exc)
            if last == expect:
                return last
            await asyncio.sleep(0.05)
    return last


def assert_one_process(root: Path, version: str) -> int:
    """The slot runs exactly the process in its PID file, in the ``version`` release."""
    record = json.loads((root / "pid").read_text())
    pid = record["pid"]
    assert slot_pids(str(root)) == {pid: record["start"]}
    assert alive(pid, record["start"])
    assert os.readlink(f"/proc/{pid}/cwd") == str(root / "releases" / version)
    return int(pid)


async def restart(driver: LocalDriver, t: Target, procs: Processes, root: Path) -> int:
    await driver.restart(t)
    return procs.record_slot(root)


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["tar", "dir"], ids=["tar.gz artifact", "directory artifact"])
def test_deploy_v1_then_v2(tmp_path: Path, procs: Processes, kind: str) -> None:
    """Deploy and restart switch current and the served version, with one process per target."""
    build(tmp_path, "v1", kind)
    build(tmp_path, "v2", kind)
    driver = make_driver(tmp_path, kind)
    t = target()
    port = t.vars["http_port"]
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        assert await driver.current_version(t) is None
        await driver.check(t, "v1")
        await driver.deploy(t, "v1")
        assert os.readlink(root / "current") == "releases/v1"
        assert await driver.current_version(t) == "v1"
        pid1 = await restart(driver, t, procs, root)
        assert await served(port, "v1") == "v1"
        assert assert_one_process(root, "v1") == pid1

        await driver.deploy(t, "v2")
        assert await driver.current_version(t) == "v2"
        assert await driver.releases(t) == ["v1", "v2"]
        pid2 = await restart(driver, t, procs, root)
        assert await served(port, "v2") == "v2"
        assert assert_one_process(root, "v2") == pid2
        assert not alive(pid1)
        assert not list((root / "releases").glob(".*")), "no temporary release left behind"
        assert not list(root.glob("*.tmp-*")), "no temporary symlink or pid file left behind"

    asyncio.run(scenario())


def test_keep_prunes_oldest_but_never_current_or_previous(tmp_path: Path) -> None:
    """Pruning keeps ``keep`` releases, never the current one nor the one it replaced."""
    for version in ("v1", "v2", "v3", "v4"):
        build(tmp_path, version)
    t = target()

    async def scenario() -> None:
        keep2 = make_driver(tmp_path, keep=2, root="fleet/keep2")
        for version in ("v1", "v2", "v3"):
            await keep2.deploy(t, version)
        assert await keep2.releases(t) == ["v2", "v3"]

        keep1 = make_driver(tmp_path, keep=1, root="fleet/keep1")
        await keep1.deploy(t, "v1")
        await keep1.deploy(t, "v2")
        assert await keep1.releases(t) == ["v1", "v2"], "v1 is the rollback target"
        await keep1.deploy(t, "v3")
        assert await keep1.releases(t) == ["v2", "v3"]

        # rolling back to a kept release needs no artifact, and re-deploying is a no-op
        (tmp_path / "dist" / "app-v2.tar.gz").unlink()
        await keep1.deploy(t, "v2")
        await keep1.deploy(t, "v2")
        assert await keep1.current_version(t) == "v2"
        assert await keep1.releases(t) == ["v3", "v2"], "v3 is now the rollback target"

    asyncio.run(scenario())


def test_stop_leaves_nothing_running(tmp_path: Path, procs: Processes) -> None:
    """stop() ends the slot's process and removes its PID file and ``current``."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path)
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        pid = await restart(driver, t, procs, root)
        assert await served(t.vars["http_port"], "v1") == "v1"
        await driver.stop(t)
        assert not alive(pid)
        assert slot_pids(str(root)) == {}
        assert not (root / "pid").exists()
        assert not (root / "current").is_symlink()
        assert await driver.current_version(t) is None
        await driver.stop(t)  # idempotent

    asyncio.run(scenario())


def test_missing_artifact(tmp_path: Path) -> None:
    """A missing artifact is a DriverError naming it as the spec wrote it."""
    driver = make_driver(tmp_path)
    t = target()

    async def scenario() -> None:
        for attempt in (driver.check(t, "9"), driver.deploy(t, "9")):
            with pytest.raises(DriverError) as info:
                await attempt
            assert str(info.value) == "web-1: artifact dist/app-9.tar.gz not found"
        assert await driver.current_version(t) is None

    asyncio.run(scenario())


def test_missing_start_executable(tmp_path: Path, procs: Processes) -> None:
    """A start command that does not exist is a DriverError naming the executable."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path, start=["no-such-rollwave-exe", "--port", "{http_port}"])
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        with pytest.raises(DriverError) as info:
            await driver.check(t, "v1")
        assert str(info.value) == "web-1: start executable no-such-rollwave-exe not found on PATH"
        await driver.deploy(t, "v1")
        with pytest.raises(DriverError) as info:
            await driver.restart(t)
        assert str(info.value) == "web-1: start executable no-such-rollwave-exe not found"
        assert not (root / "pid").exists()
        assert slot_pids(str(root)) == {}

    asyncio.run(scenario())


@pytest.mark.parametrize("content", ["recycled", "bare pid", "garbage"])
def test_foreign_pid_is_never_signalled(tmp_path: Path, procs: Processes, content: str) -> None:
    """A PID file naming a process that is not ours (recycled PID, old format, junk) kills nothing."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path)
    t = target()
    root = tmp_path / "fleet" / "web-1"
    foreign = procs.popen(["sleep", "60"])
    info = proc_start(foreign.pid)
    assert info is not None

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        text = {
            "recycled": json.dumps({"pid": foreign.pid, "start": info[1] - 1}),
            "bare pid": f"{foreign.pid}\n",
            "garbage": "{not json",
        }[content]
        (root / "pid").write_text(text)
        await restart(driver, t, procs, root)
        assert await served(t.vars["http_port"], "v1") == "v1"
        assert_one_process(root, "v1")
        (root / "pid").write_text(text)
        await driver.stop(t)  # stops our app (found by its slot) and still spares the foreign one
        assert slot_pids(str(root)) == {}
        assert foreign.poll() is None, "the foreign process was signalled"

    asyncio.run(scenario())


def test_sigkilled_process_then_restart(tmp_path: Path, procs: Processes) -> None:
    """After the process is SIGKILLed, restart leaves exactly one process, serving again."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path)
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        pid = await restart(driver, t, procs, root)
        assert await served(t.vars["http_port"], "v1") == "v1"
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if not alive(pid):
                break
            await asyncio.sleep(0.02)
        new = await restart(driver, t, procs, root)
        assert new != pid
        assert await served(t.vars["http_port"], "v1") == "v1"
        assert assert_one_process(root, "v1") == new

    asyncio.run(scenario())


def test_unrecorded_process_is_stopped_on_restart(tmp_path: Path, procs: Processes) -> None:
    """A process whose PID never reached the PID file (a crash) is found by its slot and stopped."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path)
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        old = await restart(driver, t, procs, root)
        (root / "pid").unlink()
        new = await restart(driver, t, procs, root)
        assert not alive(old)
        assert await served(t.vars["http_port"], "v1") == "v1"
        assert assert_one_process(root, "v1") == new

    asyncio.run(scenario())


def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path, procs: Processes) -> None:
    """A process ignoring SIGTERM is SIGKILLed after ``stop_grace``."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path, start=[*START, "--ignore-term"], stop_grace=0.3)
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        old = await restart(driver, t, procs, root)
        assert await served(t.vars["http_port"], "v1") == "v1"
        new = await restart(driver, t, procs, root)
        assert not alive(old)
        assert await served(t.vars["http_port"], "v1") == "v1"
        assert assert_one_process(root, "v1") == new

    asyncio.run(scenario())


def test_process_exiting_at_once_is_not_an_error(tmp_path: Path, procs: Processes) -> None:
    """A start command that exits at once starts without error and leaves a consistent PID file."""
    build(tmp_path, "v1")
    driver = make_driver(tmp_path, start=[sys.executable, "-c", "raise SystemExit(3)"])
    t = target()
    root = tmp_path / "fleet" / "web-1"

    async def scenario() -> None:
        await driver.deploy(t, "v1")
        pid = await restart(driver, t, procs, root)
        for _ in range(200):
            if not alive(pid):
                break
            await asyncio.sleep(0.02)
        assert not alive(pid)
        await driver.restart(t)  # the dead PID is recognised as gone
        await driver.stop(t)
        assert not (root / "pid").exists()

    asyncio.run(scenario())


def test_run_commands(tmp_path: Path) -> None:
    """run() returns exit codes and output, 127 for a missing command, 124 after a timeout."""
    driver = make_driver(tmp_path)
    t = target()

    async def scenario() -> None:
        result = await driver.run(
            t,
            [sys.executable, "-c", "import os,sys; print(os.environ['X']); sys.exit(3)"],
            timeout=10,
            env={"X": "hello"},
        )
        assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\n", "")
        missing = await driver.run(t, ["no-such-rollwave-exe"], timeout=5)
        assert (missing.exit_code, missing.stdout, missing.stderr) == (
            127,
            "",
            "no-such-rollwave-exe: not found",
        )
        started = time.monotonic()
        slow = await driver.run(
            t,
            [sys.executable, "-c", "import time; print('begun', flush=True); time.sleep(60)"],
            timeout=0.5,
        )
        assert time.monotonic() - started < 5
        assert slow.exit_code == 124
        assert slow.stdout == "begun\n"
        assert slow.stderr == f"{sys.executable}: timed out after 0.5s"

    asyncio.run(scenario())
