"""Health probes (http, tcp, command) and the loop that waits for a verdict.

A probe never raises because the target is unhealthy: a refused connection,
a timeout or a 503 is a :class:`~rollwave.engine.ports.ProbeResult` with
``ok=False`` and a detail naming what was tried and what happened
(``GET http://127.0.0.1:8001/healthz -> 503``). It raises
:class:`~rollwave.errors.HealthError` only when the probe itself is invalid
for the target (a template placeholder the context lacks), which no retry
can fix. No httpx exception leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from rollwave.engine.ports import Clock, CommandResult, Prober, ProbeResult
from rollwave.errors import DriverError, HealthError
from rollwave.health.verdict import HealthTracker, Verdict, format_seconds
from rollwave.inventory.model import Target
from rollwave.spec.templates import render, render_argv

__all__ = ["CommandProber", "HttpProber", "TcpProber", "wait_healthy"]

_DETAIL_MAX = 200  # characters of command output quoted in a probe detail


def _render(target: Target, what: str, template: str, context: Mapping[str, Any]) -> str:
    try:
        return render(template, context)
    except KeyError as exc:
        raise HealthError(
            target.name, f"health {what} {template!r} uses unknown placeholder {{{exc.args[0]}}}"
        ) from exc


def _refused(exc: BaseException) -> bool:
    """True when a ConnectionRefusedError is anywhere in ``exc``'s cause chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConnectionRefusedError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _last_line(text: str) -> str:
    """The last non-empty line of a command's output (where the error usually is), clipped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    return last if len(last) <= _DETAIL_MAX else last[: _DETAIL_MAX - 1] + "…"


class HttpProber:
    """``GET url`` passes when the status is ``expect_status`` (and the body contains a text).

    ``url`` is a template over the probe context. Redirects are not
    followed, and proxy settings from the environment are ignored: the probe
    talks to the target itself. A fresh connection is made for each probe.
    """

    def __init__(
        self,
        url: str,
        expect_status: int = 200,
        body_contains: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.url = url
        self.expect_status = expect_status
        self.body_contains = body_contains
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None

    async def probe(self, target: Target, context: Mapping[str, Any]) -> ProbeResult:
        url = _render(target, "url", self.url, context)
        what = f"GET {url}"
        if self._ssl is None:  # loading CA certificates is slow: once per prober
            self._ssl = httpx.create_ssl_context()
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, trust_env=False, verify=self._ssl, follow_redirects=False
            ) as client:
                response = await client.get(url)
        except httpx.TimeoutException:
            return ProbeResult(False, f"{what} timed out after {format_seconds(self.timeout)}")
        except httpx.HTTPError as exc:
            if _refused(exc):
                return ProbeResult(False, f"{what} connection refused")
            return ProbeResult(False, f"{what} failed: {exc or type(exc).__name__}")
        except ValueError as exc:  # an unusable URL (httpx raises a few of these outside its tree)
            return ProbeResult(False, f"{what} failed: {exc}")
        if response.status_code != self.expect_status:
            return ProbeResult(False, f"{what} -> {response.status_code}")
        if self.body_contains is not None and self.body_contains not in response.text:
            return ProbeResult(
                False,
                f"{what} -> {response.status_code} without {self.body_contains!r} in the body",
            )
        return ProbeResult(True, f"{what} -> {response.status_code}")


class TcpProber:
    """Passes when a TCP connection to ``host:port`` opens within ``timeout``.

    ``host`` and ``port`` are templates (``"{address}"``, ``"{http_port}"``).
    """

    def __init__(self, host: str, port: str | int, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.host = host
        self.port = str(port)
        self.timeout = timeout

    async def probe(self, target: Target, context: Mapping[str, Any]) -> ProbeResult:
        host = _render(target, "host", self.host, context)
        port_text = _render(target, "port", self.port, context)
        try:
            port = int(port_text)
        except ValueError as exc:
            raise HealthError(target.name, f"health port {port_text!r} is not a number") from exc
        what = f"TCP {host}:{port}"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        except TimeoutError:
            return ProbeResult(False, f"{what} timed out after {format_seconds(self.timeout)}")
        except ConnectionRefusedError:
            return ProbeResult(False, f"{what} connection refused")
        except OSError as exc:
            if _refused(exc):
                return ProbeResult(False, f"{what} connection refused")
            return ProbeResult(False, f"{what} failed: {exc.strerror or exc}")
        writer.close()
        with contextlib.suppress(OSError):  # it opened; how it closes does not matter
            await writer.wait_closed()
        return ProbeResult(True, f"{what} connected")


class Runner(Protocol):
    """Anything that runs an argv for a target: a Driver (on the target), or a local runner."""

    async def run(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult: ...


class CommandProber:
    """Passes when ``argv`` (a template) exits 0, run on the target (a driver) or here."""

    def __init__(self, argv: Sequence[str], driver: Runner, timeout: float = 10.0) -> None:
        if not argv:
            raise ValueError("a command probe needs a command")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.argv = list(argv)
        self.driver = driver
        self.timeout = timeout

    async def probe(self, target: Target, context: Mapping[str, Any]) -> ProbeResult:
        try:
            argv = render_argv(self.argv, context)
        except KeyError as exc:
            raise HealthError(
                target.name, f"health command uses unknown placeholder {{{exc.args[0]}}}"
            ) from exc
        what = shlex.join(argv)
        try:
            result = await self.driver.run(target, argv, timeout=self.timeout)
        except DriverError as exc:
            return ProbeResult(False, f"{what} failed: {exc.reason}")
        if result.ok:
            return ProbeResult(True, f"{what} -> exit 0")
        said = _last_line(result.stderr) or _last_line(result.stdout)
        return ProbeResult(
            False, f"{what} -> exit {result.exit_code}" + (f": {said}" if said else "")
        )


async def wait_healthy(
    prober: Prober,
    target: Target,
    context: Mapping[str, Any],
    *,
    successes: int,
    min_healthy: float,
    deadline: float,
    interval: float,
    clock: Clock,
) -> Verdict:
    """Probe every ``interval`` seconds until the target is healthy or its deadline passed.

    Probes start ``interval`` apart (a slow probe shortens the pause after
    it), and the last pause is cut short to observe right at the deadline.
    Returns the final :class:`~rollwave.health.verdict.Verdict`; raises
    only :class:`~rollwave.errors.HealthError` for an invalid probe.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval}")
    started = clock.now()
    tracker = HealthTracker(successes, min_healthy, deadline, started)
    while True:
        probed_at = clock.now()
        result = await prober.probe(target, context)
        verdict = tracker.observe(clock.now(), result.ok, result.detail)
        if verdict.done:
            return verdict
        wake = min(probed_at + interval, started + deadline)
        await clock.sleep(max(0.0, wake - clock.now()))
