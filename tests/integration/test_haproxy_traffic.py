"""HAProxyTraffic against a real HAProxy in front of three real demo apps."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollwave.demo.artifacts import build_artifact
from rollwave.demo.haproxy import HAProxyProcess
from rollwave.demo.loadgen import LoadGenerator
from rollwave.engine.clock import SystemClock
from rollwave.engine.ports import TrafficState
from rollwave.errors import TrafficError
from rollwave.inventory.model import Target
from rollwave.traffic.haproxy import HAProxyTraffic

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temporary directory, removed at teardown even when the test fails."""
    with tempfile.TemporaryDirectory(prefix="rollwave-test-") as name:
        yield Path(name)


NAMES = ("web-1", "web-2", "web-3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_api(sock: Path, command: str) -> str:
    """One runtime API command, independent of the code under test."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(sock))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


class Fleet:
    """Demo apps on fixed ports behind one HAProxy; every process started is killed at close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {name: free_port() for name in NAMES}
        self.apps: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self.haproxy = HAProxyProcess(
            root / "lb",
            free_port(),
            "api",
            [(name, "127.0.0.1", port) for name, port in self.ports.items()],
        )

    def target(self, name: str) -> Target:
        return Target(name=name, address="127.0.0.1", vars={"http_port": self.ports.get(name, 1)})

    def traffic(self, **options: Any) -> HAProxyTraffic:
        return HAProxyTraffic(
            socket=str(self.haproxy.socket_path),
            backend="{service}",
            server="{name}",
            drain_timeout=5.0,
            clock=SystemClock(),
            context_for=lambda t: {
                "name": t.name,
                "address": t.address,
                "service": "api",
                **t.vars,
            },
            **options,
        )

    def start(self, name: str, version: str, behaviour: dict[str, Any] | None = None) -> None:
        """Start ``version`` of the app in ``name``'s slot and wait until it listens."""
        archive = build_artifact(self.root / "dist", version, behaviour)
        release = self.root / name / version
        release.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(release, filter="data")
        port = self.ports[name]
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-S", str(release / "app.py"), "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with self._lock:
            self.started.append(process)
            self.apps[name] = process
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{name} exited with {process.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.02)
        raise AssertionError(f"{name} did not listen on {port}")

    def stop(self, name: str) -> int:
        """SIGTERM the app in ``name``'s slot and return its exit code."""
        process = self.apps.pop(name)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=10)

    def servers(self) -> dict[str, dict[str, str]]:
        """``show servers state`` and ``show stat`` merged, per server name."""
        state = runtime_api(self.haproxy.socket_path, "show servers state api").splitlines()
        header = state[1].lstrip("#").split()
        rows = {
            r["srv_name"]: r
            for r in (dict(zip(header, line.split(), strict=False)) for line in state[2:] if line)
        }
        stat = runtime_api(self.haproxy.socket_path, "show stat api 4 -1").splitlines()
        columns = stat[0].lstrip("# ").split(",")
        for line in stat[1:]:
            if line:
                row = dict(zip(columns, line.split(","), strict=False))
                rows[row["svname"]].update(row)
        return rows

    def wait_for(self, name: str, op_state: str, timeout: float = 10.0) -> None:
        """Wait until HAProxy's checks put ``name`` in ``op_state`` (0 down, 2 up)."""
        deadline = time.monotonic() + timeout
        while self.servers()[name]["srv_op_state"] != op_state:
            assert time.monotonic() < deadline, (
                f"{name} not in op state {op_state}: {self.servers()[name]}"
            )
            time.sleep(0.05)

    def close(self) -> None:
        self.haproxy.stop()
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def fleet(workdir: Path) -> Iterator[Fleet]:
    """Three apps (version 1.0+<name>) behind a checked HAProxy, all UP; all stopped at teardown."""
    fleet = Fleet(workdir)
    try:
        for name in NAMES:
            fleet.start(name, f"1.0+{name}")
        fleet.haproxy.start()
        for name in NAMES:
            fleet.wait_for(name, "2")
        yield fleet
    finally:
        fleet.close()


def versions_seen(fleet: Fleet, requests: int = 30) -> set[str]:
    with httpx.Client() as client:
        return {client.get(fleet.haproxy.url).headers["X-Version"] for _ in range(requests)}


def test_drain_wait_drained_enable_round_trip(fleet: Fleet) -> None:
    """drain takes a server out of rotation, wait_drained returns, enable puts it back, state follows."""
    traffic = fleet.traffic()
    web1 = fleet.target("web-1")

    async def drain() -> tuple[TrafficState, TrafficState, float]:
        before = await traffic.state(web1)
        await traffic.drain(web1)
        await traffic.drain(web1)  # idempotent
        started = time.monotonic()
        await traffic.wait_drained(web1, timeout=5)
        return before, await traffic.state(web1), time.monotonic() - started

    before, drained, waited = asyncio.run(drain())

    assert (before, drained) == (TrafficState.READY, TrafficState.DRAIN)
    assert waited < 1
    assert fleet.servers()["web-1"]["status"] == "DRAIN"
    assert versions_seen(fleet) == {"1.0+web-2", "1.0+web-3"}

    async def enable() -> TrafficState:
        await traffic.enable(web1)
        await traffic.enable(web1)  # idempotent
        await traffic.check(web1)
        return await traffic.state(web1)

    assert asyncio.run(enable()) == TrafficState.READY
    assert fleet.servers()["web-1"]["status"] == "UP"
    assert versions_seen(fleet) == {"1.0+web-1", "1.0+web-2", "1.0+web-3"}


def test_maint_is_reported_as_maint(fleet: Fleet) -> None:
    """A server an operator put in maintenance reads as MAINT, and enable brings it back."""
    traffic = fleet.traffic()
    runtime_api(fleet.haproxy.socket_path, "set server api/web-2 state maint")

    async def scenario() -> tuple[TrafficState, TrafficState]:
        maint = await traffic.state(fleet.target("web-2"))
        await traffic.enable(fleet.target("web-2"))
        return maint, await traffic.state(fleet.target("web-2"))

    assert asyncio.run(scenario()) == (TrafficState.MAINT, TrafficState.READY)


def test_wait_drained_waits_for_in_flight_sessions_until_the_timeout(fleet: Fleet) -> None:
    """wait_drained returns when the last in-flight request ends, or at its timeout without error."""
    fleet.stop("web-1")
    fleet.start("web-1", "1.1-slow", {"latency_ms": 1500})
    fleet.wait_for("web-1", "2")
    traffic = fleet.traffic()
    for other in ("web-2", "web-3"):
        asyncio.run(traffic.drain(fleet.target(other)))

    async def scenario() -> tuple[float, float, httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            request = asyncio.create_task(client.get(fleet.haproxy.url))
            await asyncio.sleep(0.3)  # the request is in flight on web-1, the only ready server
            await traffic.drain(fleet.target("web-1"))
            started = time.monotonic()
            await traffic.wait_drained(fleet.target("web-1"), timeout=0.3)
            gave_up = time.monotonic() - started
            started = time.monotonic()
            await traffic.wait_drained(fleet.target("web-1"), timeout=10)
            drained = time.monotonic() - started
            return gave_up, drained, await request

    gave_up, drained, response = asyncio.run(scenario())

    assert 0.3 <= gave_up < 0.8
    assert 0.5 < drained < 2.0
    assert (response.status_code, response.headers["X-Version"]) == (200, "1.1-slow")


def test_enable_waits_until_the_server_is_up(fleet: Fleet) -> None:
    """enable on a drained server that is down returns only once HAProxy's checks see it UP."""
    traffic = fleet.traffic()
    web2 = fleet.target("web-2")
    asyncio.run(traffic.drain(web2))
    assert fleet.stop("web-2") == 0
    fleet.wait_for("web-2", "0")
    restart = threading.Timer(1.0, fleet.start, args=("web-2", "2.0"))

    async def scenario() -> float:
        started = time.monotonic()
        restart.start()
        await traffic.enable(web2)
        return time.monotonic() - started

    try:
        elapsed = asyncio.run(scenario())
    finally:
        restart.cancel()
        restart.join()

    assert elapsed >= 1.0
    assert fleet.servers()["web-2"]["srv_op_state"] == "2"
    assert "2.0" in versions_seen(fleet)


def test_enable_fails_when_the_server_stays_down(fleet: Fleet) -> None:
    """enable raises a TrafficError naming the server and its last check when it is not UP in time."""
    fleet.stop("web-3")
    fleet.start("web-3", "3.0-sick", {"fail_health": True})
    fleet.wait_for("web-3", "0")
    traffic = fleet.traffic(wait_up=0.5)

    with pytest.raises(TrafficError) as caught:
        asyncio.run(traffic.enable(fleet.target("web-3")))

    assert str(caught.value) == (
        "web-3: haproxy: server api/web-3 not UP 0.5s after enable "
        f"(DOWN, last check L7STS 503; socket {fleet.haproxy.socket_path})"
    )


def test_unknown_server_and_backend_are_traffic_errors(fleet: Fleet) -> None:
    """An unknown server or backend is a one-line TrafficError naming it and the socket."""
    traffic = fleet.traffic()
    where = f"socket {fleet.haproxy.socket_path}"
    web9 = fleet.target("web-9")

    for call in (traffic.check, traffic.drain, traffic.enable, traffic.state):
        with pytest.raises(TrafficError) as caught:
            asyncio.run(call(web9))
        assert str(caught.value) == f"web-9: haproxy: no such server api/web-9 ({where})"
    with pytest.raises(TrafficError) as caught:
        asyncio.run(traffic.wait_drained(web9, timeout=1))
    assert str(caught.value) == f"web-9: haproxy: no such server api/web-9 ({where})"

    other = HAProxyTraffic(
        socket=str(fleet.haproxy.socket_path),
        backend="nope",
        server="{name}",
        drain_timeout=1,
        clock=SystemClock(),
        context_for=lambda t: {"name": t.name},
    )
    for call in (other.check, other.drain, other.state):
        with pytest.raises(TrafficError) as caught:
            asyncio.run(call(fleet.target("web-1")))
        assert str(caught.value) == f"web-1: haproxy: no such backend nope ({where})"


def test_unreachable_runtime_api_is_a_traffic_error(workdir: Path) -> None:
    """A missing socket or a refused TCP address is a one-line TrafficError naming it."""
    missing = workdir / "missing.sock"
    address = f"127.0.0.1:{free_port()}"
    target = Target(name="web-1", address="127.0.0.1")

    def traffic(**where: str) -> HAProxyTraffic:
        return HAProxyTraffic(
            backend="api",
            server="{name}",
            drain_timeout=1,
            clock=SystemClock(),
            context_for=lambda t: {"name": t.name},
            **where,
        )

    with pytest.raises(TrafficError) as caught:
        asyncio.run(traffic(socket=str(missing)).drain(target))
    assert str(caught.value) == f"web-1: haproxy: runtime API socket not found (socket {missing})"

    with pytest.raises(TrafficError) as caught:
        asyncio.run(traffic(address=address).state(target))
    assert str(caught.value) == (
        f"web-1: haproxy: connection refused, is haproxy running? (address {address})"
    )


def test_replacing_a_server_under_load_fails_no_request(fleet: Fleet) -> None:
    """Under 250 req/s, drain, SIGTERM, restart with a new version and enable lose no request."""
    traffic = fleet.traffic()
    web1 = fleet.target("web-1")
    rate = 250.0

    async def scenario() -> LoadGenerator:
        load = LoadGenerator(fleet.haproxy.url, rate=rate)
        load.start()
        await asyncio.sleep(1.0)
        await traffic.drain(web1)
        load.mark("drained")
        await traffic.wait_drained(web1, timeout=5)
        assert await asyncio.to_thread(fleet.stop, "web-1") == 0
        await asyncio.sleep(0.5)  # HAProxy's checks see web-1 DOWN meanwhile
        await asyncio.to_thread(fleet.start, "web-1", "2.0")
        await traffic.enable(web1)
        load.mark("enabled")
        await asyncio.sleep(1.5)
        await load.stop()
        return load

    load = asyncio.run(scenario())
    report = load.snapshot()

    assert report.failures == {}
    assert report.failed == 0
    assert report.total >= 0.9 * rate * report.duration
    assert "1.0+web-1" not in load.report_since("drained", until="enabled").version_counts()
    assert "2.0" in load.report_since("enabled").version_counts()
    assert report.versions[0].startswith("1.0+")
