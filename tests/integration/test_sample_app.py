"""The demo application and its artifacts, run as real processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollwave.demo.artifacts import app_source, build_artifact

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temporary directory, removed at teardown even when the test fails."""
    with tempfile.TemporaryDirectory(prefix="rollwave-test-") as name:
        yield Path(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unpack(root: Path, version: str, behaviour: dict[str, Any] | None = None) -> Path:
    """Build the artifact of ``version`` and unpack it as a release directory."""
    archive = build_artifact(root / "dist", version, behaviour)
    release = root / "releases" / version
    release.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(release, filter="data")
    return release


class App:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartApp = Callable[..., App]


@pytest.fixture
def start_app(workdir: Path) -> Iterator[StartApp]:
    """Start demo apps (``python -S``: the standard library only); kill each one at teardown."""
    started: list[App] = []

    def start(
        release: Path,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> App:
        port = free_port()
        log = workdir / f"app-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-S", str(release / "app.py"), "--port", str(port), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        app = App(process, port, log)
        started.append(app)
        if wait:
            wait_listening(app)
        return app

    yield start
    for app in started:
        if app.process.poll() is None:
            app.process.kill()
        app.process.wait()


def wait_listening(app: App, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            raise AssertionError(f"app exited with {app.process.returncode}: {app.log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", app.port), 0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"app did not listen on {app.port} within {timeout}s")


def test_root_answers_the_version_from_the_version_file(workdir: Path, start_app: StartApp) -> None:
    """GET / answers 200 with the VERSION file's content as body and X-Version header."""
    app = start_app(unpack(workdir, "1.2.3"))

    response = httpx.get(app.url + "/")

    assert response.status_code == 200
    assert response.text == "1.2.3\n"
    assert response.headers["X-Version"] == "1.2.3"


def test_version_flag_is_the_fallback_without_a_version_file(
    workdir: Path, start_app: StartApp
) -> None:
    """Without a VERSION file the app takes --version."""
    release = workdir / "bare"
    release.mkdir()
    (release / "app.py").write_bytes(app_source())
    app = start_app(release, args=["--version", "9.9"])

    assert httpx.get(app.url + "/").headers["X-Version"] == "9.9"


def test_healthz_answers_ok(workdir: Path, start_app: StartApp) -> None:
    """GET /healthz answers 200 ok for a healthy app."""
    app = start_app(unpack(workdir, "1.0.0"))

    response = httpx.get(app.url + "/healthz")

    assert (response.status_code, response.text) == (200, "ok\n")


def test_metrics_are_valid_prometheus_text(workdir: Path, start_app: StartApp) -> None:
    """/metrics parses as Prometheus text with request counters, a latency histogram and info."""
    app = start_app(unpack(workdir, "2.0.0"))
    for _ in range(3):
        httpx.get(app.url + "/")
    httpx.get(app.url + "/nope")
    httpx.get(app.url + "/healthz")  # probes are not counted

    families = {
        f.name: f for f in text_string_to_metric_families(httpx.get(app.url + "/metrics").text)
    }

    requests = families["rollwave_demo_requests"]
    assert requests.type == "counter"
    assert {(s.labels["code"], s.labels["version"], s.value) for s in requests.samples} == {
        ("200", "2.0.0", 3.0),
        ("404", "2.0.0", 1.0),
    }
    duration = families["rollwave_demo_request_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in duration.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] <= buckets["2.5"] == buckets["+Inf"] == 4.0
    assert len(buckets) == 10
    count = next(s for s in duration.samples if s.name.endswith("_count"))
    assert (count.labels, count.value) == ({"version": "2.0.0"}, 4.0)
    info = families["rollwave_demo_info"]
    assert [(s.labels, s.value) for s in info.samples] == [({"version": "2.0.0"}, 1.0)]


def test_fail_health_makes_healthz_answer_503(workdir: Path, start_app: StartApp) -> None:
    """With fail_health, /healthz answers 503 while / still serves."""
    app = start_app(unpack(workdir, "1.0.0", {"fail_health": True}))

    assert httpx.get(app.url + "/healthz").status_code == 503
    assert httpx.get(app.url + "/").status_code == 200


def test_environment_variables_override_the_behaviour_file(
    workdir: Path, start_app: StartApp
) -> None:
    """ROLLWAVE_DEMO_FAIL_HEALTH=0 overrides a BEHAVIOUR file's fail_health, and =1 sets it."""
    healed = start_app(
        unpack(workdir, "1.0.0", {"fail_health": True}), env={"ROLLWAVE_DEMO_FAIL_HEALTH": "0"}
    )
    broken = start_app(unpack(workdir, "1.0.1"), env={"ROLLWAVE_DEMO_FAIL_HEALTH": "1"})

    assert httpx.get(healed.url + "/healthz").status_code == 200
    assert httpx.get(broken.url + "/healthz").status_code == 503


def test_exit_at_start_exits_with_code_3(workdir: Path, start_app: StartApp) -> None:
    """With exit_at_start the app exits 3 at once, without listening."""
    app = start_app(unpack(workdir, "1.0.0", {"exit_at_start": True}), wait=False)

    assert app.process.wait(timeout=10) == 3


def test_unknown_behaviour_exits_with_code_2(workdir: Path, start_app: StartApp) -> None:
    """A BEHAVIOUR file with an unknown key is refused with exit code 2 and a message."""
    release = unpack(workdir, "1.0.0")
    (release / "BEHAVIOUR").write_text('{"fail_helth": true}')

    app = start_app(release, wait=False)

    assert app.process.wait(timeout=10) == 2
    assert "unknown behaviour fail_helth" in app.log.read_text()


def test_error_rate_fails_that_fraction_of_requests(workdir: Path, start_app: StartApp) -> None:
    """error_rate 0.25 makes exactly a quarter of 200 requests answer 500 (error diffusion)."""
    app = start_app(unpack(workdir, "1.0.0", {"error_rate": 0.25}))

    with httpx.Client() as client:
        codes = [client.get(app.url + "/").status_code for _ in range(200)]

    assert codes.count(500) == 50
    assert codes.count(200) == 150


def test_latency_is_added_to_root_requests_only(workdir: Path, start_app: StartApp) -> None:
    """latency_ms 300 delays / by at least 0.3 s and leaves /healthz fast."""
    app = start_app(unpack(workdir, "1.0.0", {"latency_ms": 300}))

    root = httpx.get(app.url + "/")
    health = httpx.get(app.url + "/healthz")

    assert root.elapsed.total_seconds() >= 0.3
    assert health.elapsed.total_seconds() < 0.3


def test_sigterm_stops_accepting_and_finishes_in_flight_requests(
    workdir: Path, start_app: StartApp
) -> None:
    """On SIGTERM the app refuses new connections, answers the slow in-flight request, exits 0."""
    app = start_app(unpack(workdir, "1.0.0", {"latency_ms": 1500}))
    answers: list[httpx.Response | BaseException] = []

    def slow_request() -> None:
        try:
            answers.append(httpx.get(app.url + "/", timeout=10))
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        time.sleep(0.3)  # the request is in flight, sleeping in the app
        app.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # shutdown polls every 0.1 s
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", app.port), 1).close()
        assert app.process.poll() is None, "exited before the in-flight request finished"
    finally:
        thread.join(10)

    assert app.process.wait(timeout=10) == 0
    assert len(answers) == 1
    response = answers[0]
    assert isinstance(response, httpx.Response)
    assert (response.status_code, response.text) == (200, "1.0.0\n")


def test_artifact_is_deterministic_and_holds_the_release(workdir: Path) -> None:
    """Two builds of one version and behaviour give identical bytes with app.py, VERSION, BEHAVIOUR."""
    first = build_artifact(workdir / "a", "3.1.4+build.7", {"latency_ms": 5})
    time.sleep(1.1)  # a different wall-clock second must not change the bytes
    second = build_artifact(workdir / "b", "3.1.4+build.7", {"latency_ms": 5})

    assert first.name == "app-3.1.4+build.7.tar.gz"
    assert (
        hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    )
    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["app.py", "VERSION", "BEHAVIOUR"]
        assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())
        version_file = tar.extractfile("VERSION")
        assert version_file is not None
        assert version_file.read() == b"3.1.4+build.7\n"
    assert sorted(p.name for p in (workdir / "a").iterdir()) == [first.name]


@pytest.mark.parametrize("version", ["", "-1", ".hidden", "1.0/../x", "1 0", "v1\n"], ids=repr)
def test_artifact_rejects_bad_versions(workdir: Path, version: str) -> None:
    """A version outside ^[A-Za-z0-9][A-Za-z0-9._+-]*$ is a ValueError, and nothing is written."""
    with pytest.raises(ValueError, match="invalid version"):
        build_artifact(workdir, version)
    assert list(workdir.iterdir()) == []


def test_artifact_rejects_unknown_behaviours(workdir: Path) -> None:
    """A behaviour the app does not know is refused when the artifact is built."""
    with pytest.raises(ValueError, match="unknown behaviour 'crash'"):
        build_artifact(workdir, "1.0.0", {"crash": True})
