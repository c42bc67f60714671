"""A real Prometheus for integration tests, on a free loopback port with its own config and data.

:func:`prometheus_server` writes the configuration (``scrape_configs`` as
given, every job scraped each ``scrape_interval``) into a temporary
directory, keeps the TSDB there too, starts ``prometheus`` listening on
127.0.0.1 only, waits until it answers, and on the way out ends that
process by its PID (SIGTERM, then SIGKILL) and removes the directory, also
when the test failed. Without the binary the test fails under CI
(``ROLLWAVE_REQUIRE_ALL``) and skips elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.requirements import require_binary

__all__ = ["PrometheusServer", "prometheus_server", "static_job"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def static_job(job: str, targets: Mapping[str, str]) -> dict[str, Any]:
    """A scrape config of static targets (``label → host:port``), each labelled ``rollwave_target``."""
    return {
        "job_name": job,
        "static_configs": [
            {"targets": [address], "labels": {"rollwave_target": name}}
            for name, address in targets.items()
        ],
    }


@dataclass
class PrometheusServer:
    """A running Prometheus: its URL, its process and its working directory."""

    url: str
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "prometheus.log"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (``[]`` when it matched nothing)."""
        answer = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expression}, timeout=5
        ).json()
        if answer.get("status") != "success":
            raise AssertionError(f"prometheus refused {expression!r}: {answer}")
        return list(answer["data"]["result"])

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.process.returncode}: {self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until ``/-/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"prometheus was not ready within {timeout:g}s: {self.log_tail()}")

    def wait_scraped(self, job: str, scrapes: int, timeout: float = 60) -> None:
        """Wait until every target of ``job`` was scraped successfully ``scrapes`` times lately.

        Counts ``up == 1`` samples over the last ``scrapes + 1`` seconds, so it
        assumes the 1s scrape interval this module configures by default.
        """
        expression = f'min(sum_over_time(up{{job="{job}"}}[{scrapes + 1}s]))'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._alive()
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError):
                result = self.query(expression)
                if result and float(result[0]["value"][1]) >= scrapes:
                    return
            time.sleep(0.25)
        raise AssertionError(
            f"prometheus had no {scrapes} successful scrapes of every {job} target "
            f"within {timeout:g}s: {self.log_tail()}"
        )

    def stop(self, timeout: float = 15) -> None:
        """End the process this server started, by its PID only."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def prometheus_server(
    scrape_configs: Sequence[Mapping[str, Any]],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Iterator[PrometheusServer]:
    """A Prometheus scraping ``scrape_configs``, ready to be queried; stopped and removed on exit."""
    binary = require_binary("prometheus", "prometheus")
    port = _free_port()
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "scrape_configs": [dict(c) for c in scrape_configs],
    }
    with tempfile.TemporaryDirectory(prefix="rollwave-prometheus-") as tmp:
        root = Path(tmp)
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with (root / "prometheus.log").open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
            )
        server = PrometheusServer(f"http://127.0.0.1:{port}", process, root)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()
