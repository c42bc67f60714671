"""Health probes and wait_healthy against a real process on a loopback port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rollwave.drivers.local import LocalDriver
from rollwave.engine.clock import SystemClock
from rollwave.errors import HealthError
from rollwave.health.probes import CommandProber, HttpProber, TcpProber, wait_healthy
from rollwave.health.verdict import HEALTH_DEADLINE_EXCEEDED, HEALTHY, HealthStatus
from rollwave.inventory.model import Target

pytestmark = pytest.mark.integration

APP = Path(__file__).parents[1] / "fixtures" / "tinyapp" / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


AppStarter = Callable[..., int]


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[AppStarter]:
    """Start the tiny app on a free port (returned); every process started is killed in teardown."""
    children: list[subprocess.Popen[bytes]] = []
    (tmp_path / "app").mkdir()
    shutil.copy(APP, tmp_path / "app" / "app.py")
    (tmp_path / "app" / "VERSION").write_text("1.0\n")

    def start(*extra: str) -> int:
        port = free_port()
        child = subprocess.Popen(
            [sys.executable, str(tmp_path / "app" / "app.py"), "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children.append(child)
        wait_listening(port)
        return port

    try:
        yield start
    finally:
        for child in children:
            child.kill()
            child.wait()


def target(port: int) -> Target:
    return Target("web-1", "127.0.0.1", vars={"http_port": port})


def context(port: int) -> dict[str, object]:
    return {"name": "web-1", "address": "127.0.0.1", "http_port": port}


URL = "http://{address}:{http_port}/healthz"


def test_http_probe(start_app: AppStarter) -> None:
    """HTTP probes pass on the expected status and body, and say why they fail."""
    good, sick, closed = start_app(), start_app("--health-status", "503"), free_port()

    async def scenario() -> None:
        result = await HttpProber(URL).probe(target(good), context(good))
        assert (result.ok, result.detail) == (True, f"GET http://127.0.0.1:{good}/healthz -> 200")
        result = await HttpProber(URL, body_contains="ok").probe(target(good), context(good))
        assert result.ok
        result = await HttpProber(URL, body_contains="ready").probe(target(good), context(good))
        assert (result.ok, result.detail) == (
            False,
            f"GET http://127.0.0.1:{good}/healthz -> 200 without 'ready' in the body",
        )
        result = await HttpProber(URL).probe(target(sick), context(sick))
        assert (result.ok, result.detail) == (False, f"GET http://127.0.0.1:{sick}/healthz -> 503")
        result = await HttpProber(URL, expect_status=503).probe(target(sick), context(sick))
        assert result.ok
        result = await HttpProber(URL).probe(target(closed), context(closed))
        assert (result.ok, result.detail) == (
            False,
            f"GET http://127.0.0.1:{closed}/healthz connection refused",
        )
        with pytest.raises(HealthError) as info:
            await HttpProber("http://{nope}/").probe(target(good), context(good))
        assert str(info.value) == (
            "web-1: health url 'http://{nope}/' uses unknown placeholder {nope}"
        )

    asyncio.run(scenario())


def test_http_probe_times_out() -> None:
    """A server that accepts but never answers is a failed probe after the timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        async def scenario() -> None:
            started = time.monotonic()
            result = await HttpProber(URL, timeout=0.3).probe(target(port), context(port))
            assert time.monotonic() - started < 3
            assert (result.ok, result.detail) == (
                False,
                f"GET http://127.0.0.1:{port}/healthz timed out after 0.3s",
            )

        asyncio.run(scenario())


def test_tcp_probe(start_app: AppStarter) -> None:
    """TCP probes pass when the port accepts and fail, without raising, when it refuses."""
    good, closed = start_app(), free_port()

    async def scenario() -> None:
        prober = TcpProber("{address}", "{http_port}")
        result = await prober.probe(target(good), context(good))
        assert (result.ok, result.detail) == (True, f"TCP 127.0.0.1:{good} connected")
        result = await prober.probe(target(closed), context(closed))
        assert (result.ok, result.detail) == (False, f"TCP 127.0.0.1:{closed} connection refused")
        result = await TcpProber("127.0.0.1", good).probe(target(good), {})
        assert result.ok

    asyncio.run(scenario())


def test_command_probe(start_app: AppStarter, tmp_path: Path) -> None:
    """Command probes run through the driver: exit 0 passes, anything else fails with its output."""
    good, closed = start_app(), free_port()
    driver = LocalDriver(
        service="web",
        artifact="dist/app-{version}",
        root="fleet/{name}",
        start=["true"],
        keep=2,
        base_dir=tmp_path,
        clock=SystemClock(),
    )
    fetch = [
        sys.executable,
        "-c",
        "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)",
        "http://127.0.0.1:{http_port}/healthz",
    ]

    async def scenario() -> None:
        result = await CommandProber(fetch, driver).probe(target(good), context(good))
        assert result.ok
        assert result.detail.endswith(f"http://127.0.0.1:{good}/healthz -> exit 0")
        result = await CommandProber(fetch, driver).probe(target(closed), context(closed))
        assert not result.ok
        assert f"http://127.0.0.1:{closed}/healthz -> exit 1: " in result.detail
        assert "Connection refused" in result.detail
        result = await CommandProber(["no-such-rollwave-exe"], driver).probe(target(good), {})
        assert (result.ok, result.detail) == (
            False,
            "no-such-rollwave-exe -> exit 127: no-such-rollwave-exe: not found",
        )

    asyncio.run(scenario())


def test_wait_healthy_reaches_healthy(start_app: AppStarter) -> None:
    """With a real clock, a healthy app passes the required streak and is declared healthy."""
    port = start_app()
    clock = SystemClock()

    async def scenario() -> None:
        started = clock.now()
        verdict = await wait_healthy(
            HttpProber(URL),
            target(port),
            context(port),
            successes=3,
            min_healthy=0.4,
            deadline=10,
            interval=0.1,
            clock=clock,
        )
        assert (verdict.status, verdict.reason) == (HealthStatus.HEALTHY, HEALTHY)
        assert 0.4 <= clock.now() - started < 5

    asyncio.run(scenario())


def test_wait_healthy_fails_at_the_deadline(start_app: AppStarter) -> None:
    """With a real clock, a sick app fails at its deadline, the message naming the last failure."""
    port = start_app("--health-status", "503")
    clock = SystemClock()

    async def scenario() -> None:
        started = clock.now()
        verdict = await wait_healthy(
            HttpProber(URL),
            target(port),
            context(port),
            successes=1,
            min_healthy=0,
            deadline=0.6,
            interval=0.1,
            clock=clock,
        )
        assert (verdict.status, verdict.reason) == (HealthStatus.FAILED, HEALTH_DEADLINE_EXCEEDED)
        assert verdict.message == (
            f"not healthy after 0.6s: GET http://127.0.0.1:{port}/healthz -> 503"
        )
        assert 0.6 <= clock.now() - started < 3

    asyncio.run(scenario())
