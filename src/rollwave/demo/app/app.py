"""The rollwave demo application: a tiny versioned HTTP service, standard library only.

It is shipped inside release artifacts and started as
``python3 {release}/app.py --port N`` by the local driver (and on SSH
hosts), so it must not import anything outside the standard library.

Routes::

    GET /         200 "<version>\\n" with header X-Version (or 500, see error_rate)
    GET /healthz  200 "ok\\n" (503 when fail_health)
    GET /metrics  Prometheus text exposition format:
                  rollwave_demo_requests_total{code,version}          counter
                  rollwave_demo_request_duration_seconds{version}     histogram
                  rollwave_demo_info{version}                         gauge, always 1

Requests to ``/healthz`` and ``/metrics`` are not counted: the metrics
describe the service's traffic, not its probes and scrapes.

The version comes from the file ``VERSION`` next to this file, else from
``--version``. Misbehaviour comes from the JSON file ``BEHAVIOUR`` next to
this file, overridden key by key by environment variables:

    {"fail_health": true}    ROLLWAVE_DEMO_FAIL_HEALTH=1     /healthz answers 503
    {"exit_at_start": true}  ROLLWAVE_DEMO_EXIT_AT_START=1   exit with code 3 at once
    {"error_rate": 0.05}     ROLLWAVE_DEMO_ERROR_RATE=0.05   that fraction of / answers 500
    {"latency_ms": 50}       ROLLWAVE_DEMO_LATENCY_MS=50     added to every / request

The error rate is applied deterministically (error diffusion: after n
requests, floor(n * rate) of them failed), so a test can count on it.

SIGTERM (or SIGINT) stops accepting connections, lets in-flight requests
finish and exits 0. Unknown behaviour keys or bad values exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).parent
EXIT_AT_START_CODE = 3
EXIT_BAD_BEHAVIOUR = 2
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENV_PREFIX = "ROLLWAVE_DEMO_"
KEYS = ("fail_health", "exit_at_start", "error_rate", "latency_ms")
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Behaviour:
    fail_health: bool = False
    exit_at_start: bool = False
    error_rate: float = 0.0
    latency_ms: float = 0.0


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise ValueError(f"{key} must be true or false, not {value!r}")


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{key} must be between {low:g} and {high:g}, not {number:g}")
    return number


def load_behaviour(directory: Path, environ: dict[str, str]) -> Behaviour:
    """Read ``BEHAVIOUR`` (absent means healthy), then let environment variables override it."""
    raw: dict[str, Any] = {}
    path = directory / "BEHAVIOUR"
    if path.exists():
        loaded = json.loads(path.read_text(encoding="utf-8") or "{}")
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must hold a JSON object")
        raw.update(loaded)
    for key in KEYS:
        env_value = environ.get(ENV_PREFIX + key.upper())
        if env_value:
            raw[key] = env_value
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown behaviour {', '.join(unknown)}")
    return Behaviour(
        fail_health=_flag("fail_health", raw.get("fail_health", False)),
        exit_at_start=_flag("exit_at_start", raw.get("exit_at_start", False)),
        error_rate=_number("error_rate", raw.get("error_rate", 0.0), 0.0, 1.0),
        latency_ms=_number("latency_ms", raw.get("latency_ms", 0.0), 0.0, 600_000.0),
    )


def read_version(directory: Path, fallback: str | None) -> str:
    path = directory / "VERSION"
    if path.exists():
        version = path.read_text(encoding="utf-8").strip()
        if version:
            return version
    if fallback:
        return fallback
    raise ValueError(f"no version: {path} is missing and --version was not given")


class Metrics:
    """Counters and a histogram, shared by all request threads."""

    def __init__(self, version: str, error_rate: float) -> None:
        self.version = version
        self.error_rate = error_rate
        self._lock = threading.Lock()
        self._requests: dict[int, int] = {}
        self._bucket_counts = [0] * len(BUCKETS)
        self._count = 0
        self._sum = 0.0
        self._served = 0
        self._failed = 0

    def should_fail(self) -> bool:
        """Error diffusion: fail this request when the failures so far fall behind the rate."""
        with self._lock:
            self._served += 1
            if self._failed < int(self._served * self.error_rate + 1e-9):
                self._failed += 1
                return True
            return False

    def observe(self, code: int, seconds: float) -> None:
        with self._lock:
            self._requests[code] = self._requests.get(code, 0) + 1
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._bucket_counts[i] += 1

    def render(self) -> str:
        v = _label(self.version)
        with self._lock:
            requests = sorted(self._requests.items())
            buckets = list(self._bucket_counts)
            count, total = self._count, self._sum
        lines = [
            "# HELP rollwave_demo_requests_total Requests served, by status code.",
            "# TYPE rollwave_demo_requests_total counter",
        ]
        lines += [
            f'rollwave_demo_requests_total{{code="{code}",version="{v}"}} {n}'
            for code, n in requests
        ]
        lines += [
            "# HELP rollwave_demo_request_duration_seconds Time to answer a request.",
            "# TYPE rollwave_demo_request_duration_seconds histogram",
        ]
        lines += [
            f'rollwave_demo_request_duration_seconds_bucket{{version="{v}",le="{bound}"}} {n}'
            for bound, n in zip(BUCKETS, buckets, strict=True)
        ]
        lines += [
            f'rollwave_demo_request_duration_seconds_bucket{{version="{v}",le="+Inf"}} {count}',
            f'rollwave_demo_request_duration_seconds_sum{{version="{v}"}} {total!r}',
            f'rollwave_demo_request_duration_seconds_count{{version="{v}"}} {count}',
            "# HELP rollwave_demo_info The running version.",
            "# TYPE rollwave_demo_info gauge",
            f'rollwave_demo_info{{version="{v}"}} 1',
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Handler(BaseHTTPRequestHandler):
    """One request; HTTP/1.0, so every connection carries one request and then closes."""

    server: DemoServer
    server_version = "rollwave-demo"
    timeout = 30  # seconds per socket operation: a stalled client cannot hold shutdown forever

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            if self.server.behaviour.fail_health:
                self._send(503, "unhealthy\n")
            else:
                self._send(200, "ok\n")
        elif path == "/metrics":
            self._send(200, self.server.metrics.render(), "text/plain; version=0.0.4")
        else:
            self._serve(path)

    def _serve(self, path: str) -> None:
        started = time.monotonic()
        behaviour = self.server.behaviour
        if behaviour.latency_ms:
            time.sleep(behaviour.latency_ms / 1000)
        if path != "/":
            code, body = 404, "not found\n"
        elif self.server.metrics.should_fail():
            code, body = 500, "injected error\n"
        else:
            code, body = 200, self.server.version + "\n"
        self._send(code, body)
        self.server.metrics.observe(code, time.monotonic() - started)

    def _send(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Version", self.server.version)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a load test would flood the log."""


class DemoServer(ThreadingHTTPServer):
    # Non-daemon threads, joined by server_close(): in-flight requests finish on SIGTERM.
    daemon_threads = False
    block_on_close = True
    # socketserver listens with a backlog of 5: a busy CPU then drops connections.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], version: str, behaviour: Behaviour, metrics: Metrics
    ) -> None:
        self.version = version
        self.behaviour = behaviour
        self.metrics = metrics
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore peers that hang up early (HAProxy closes checks with a reset); print the rest."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rollwave demo application")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--version", dest="version", default=None, help="used when VERSION is absent"
    )
    args = parser.parse_args(argv)
    try:
        behaviour = load_behaviour(HERE, dict(os.environ))
        version = read_version(HERE, args.version)
    except ValueError as exc:
        print(f"app.py: {exc}", file=sys.stderr)
        return EXIT_BAD_BEHAVIOUR
    if behaviour.exit_at_start:
        print("app.py: exit_at_start is set, exiting", file=sys.stderr)
        return EXIT_AT_START_CODE

    server = DemoServer(
        (args.host, args.port), version, behaviour, Metrics(version, behaviour.error_rate)
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this
        # (the main) thread: call it from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"app.py: version {version} listening on {args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        # Closes the listening socket first, then joins every request thread.
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
