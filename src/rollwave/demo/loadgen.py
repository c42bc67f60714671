"""An open-loop HTTP load generator that counts failed requests and which version answered.

It sends ``rate`` requests per second on the clock, whether or not earlier
ones have been answered (open loop: a slow or dead server cannot slow the
load down and hide its own failures), each on a fresh connection so that a
load balancer sees, and balances, every request.

Every answer becomes a :class:`Sample`; :func:`build_report` (pure) turns
samples into a :class:`LoadReport`: totals, failures by kind, latency
quantiles, and a version timeline of one-second buckets. ``mark(label)``
splits one run into phases (``report_since("rollout-2")``), so a single
generator can span several rollouts.

Failure kinds: ``http_5xx``, ``http_4xx`` (a status >= 400), ``connect``
(refused, unreachable), ``timeout`` (any phase, ``timeout`` seconds),
``network`` (reset or closed mid-exchange), ``protocol`` (malformed or
empty answer), ``other``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from rollwave.engine.clock import SystemClock
from rollwave.engine.ports import Clock

__all__ = [
    "FAILURE_KINDS",
    "Bucket",
    "LoadGenerator",
    "LoadReport",
    "Sample",
    "build_report",
    "classify_status",
]

OK = "ok"
FAILURE_KINDS = ("http_5xx", "http_4xx", "connect", "timeout", "network", "protocol", "other")


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent (clock seconds), how it ended, which version answered.

    ``outcome`` is ``"ok"`` or one of :data:`FAILURE_KINDS`; ``seq`` is the
    order in which requests were sent.
    """

    seq: int
    sent_at: float
    latency: float
    outcome: str
    status: int | None = None
    version: str | None = None


@dataclass(frozen=True)
class Bucket:
    """One second of the timeline: answers per version, and failed requests, by send time."""

    second: int
    versions: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0


@dataclass(frozen=True)
class LoadReport:
    """What a load generator saw between ``started_at`` and ``ended_at`` (clock seconds).

    Only finished requests count; ``timeline[i].second`` is ``i``, the whole
    seconds between ``started_at`` and the request's send time.
    """

    started_at: float
    ended_at: float
    total: int
    ok: int
    failed: int
    failures: Mapping[str, int]
    timeline: tuple[Bucket, ...]
    latency_p50: float = 0.0
    latency_p99: float = 0.0
    latency_max: float = 0.0

    @property
    def duration(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    @property
    def versions(self) -> tuple[str, ...]:
        """Every version that answered, in order of first appearance."""
        seen: dict[str, None] = {}
        for bucket in self.timeline:
            seen.update(dict.fromkeys(bucket.versions))
        return tuple(seen)

    def version_counts(self) -> dict[str, int]:
        """Answers per version over the whole report."""
        counts: Counter[str] = Counter()
        for bucket in self.timeline:
            counts.update(bucket.versions)
        return dict(counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "latency": {"p50": self.latency_p50, "p99": self.latency_p99, "max": self.latency_max},
            "timeline": [
                {"second": b.second, "versions": dict(b.versions), "failed": b.failed}
                for b in self.timeline
            ],
        }


def classify_status(status: int) -> str:
    """``ok`` below 400, else ``http_4xx`` or ``http_5xx``."""
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return OK


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def build_report(samples: Iterable[Sample], started_at: float, ended_at: float) -> LoadReport:
    """Summarise ``samples`` (pure).

    Worked example: started_at=100.0, samples sent at 100.2 (v1, ok), 101.7
    (v1, http_5xx), 101.9 (connect, no version) and 103.0 (v2, ok), ended_at
    103.5 give total 4, ok 2, failed 2, failures {http_5xx: 1, connect: 1}
    and a timeline of four buckets: 0 {v1: 1}; 1 {v1: 1} failed 2; 2 {};
    3 {v2: 1}. Seconds without samples are kept, so gaps show.
    """
    items = list(samples)
    failures: Counter[str] = Counter(s.outcome for s in items if s.outcome != OK)
    last_second = max(
        [math.ceil(ended_at - started_at) - 1 if ended_at > started_at else 0]
        + [int(s.sent_at - started_at) for s in items if s.sent_at >= started_at]
    )
    versions: list[Counter[str]] = [Counter() for _ in range(last_second + 1)]
    failed: list[int] = [0] * (last_second + 1)
    for sample in items:
        second = max(0, int(sample.sent_at - started_at))
        if sample.version is not None:
            versions[second][sample.version] += 1
        if sample.outcome != OK:
            failed[second] += 1
    latencies = sorted(s.latency for s in items)
    return LoadReport(
        started_at=started_at,
        ended_at=ended_at,
        total=len(items),
        ok=len(items) - sum(failures.values()),
        failed=sum(failures.values()),
        failures=dict(sorted(failures.items())),
        timeline=tuple(
            Bucket(second=i, versions=dict(versions[i]), failed=failed[i])
            for i in range(last_second + 1)
        ),
        latency_p50=_quantile(latencies, 0.50),
        latency_p99=_quantile(latencies, 0.99),
        latency_max=latencies[-1] if latencies else 0.0,
    )


@dataclass(frozen=True)
class _Mark:
    seq: int
    at: float


class LoadGenerator:
    """Send ``rate`` GET requests per second to ``url`` until stopped.

    Use inside a running event loop: ``start()``, then ``await stop()``
    (or ``async with LoadGenerator(...) as load:``). ``snapshot()`` and
    ``report_since(label)`` may be called at any moment in between.
    """

    def __init__(
        self, url: str, rate: float, timeout: float = 2.0, *, clock: Clock | None = None
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.url = url
        self.rate = rate
        self.timeout = timeout
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._samples: list[Sample] = []
        self._marks: dict[str, _Mark] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain http://host:port/path, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # One connection per request (Connection: close), so HAProxy balances every one.
        self._request_bytes = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
            "User-Agent: rollwave-loadgen\r\n\r\n"
        ).encode("ascii")
        self._sent = 0
        self._started_at: float | None = None
        self._stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._stopped_at is None

    def start(self) -> None:
        """Begin sending; must be called from inside a running event loop."""
        if self._scheduler is not None:
            raise RuntimeError("this LoadGenerator was already started")
        self._started_at = self._clock.now()
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule())

    async def stop(self) -> LoadReport:
        """Stop sending, wait for the requests in flight (at most ``timeout``), report all."""
        if self._scheduler is None:
            raise RuntimeError("this LoadGenerator was never started")
        if self._stopped_at is None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            self._stopped_at = self._clock.now()
        return self.snapshot()

    def mark(self, label: str) -> None:
        """Start a phase: requests sent from now on belong to ``report_since(label)``."""
        if label in self._marks:
            raise ValueError(f"mark {label!r} already set")
        self._marks[label] = _Mark(seq=self._sent, at=self._clock.now())

    def snapshot(self) -> LoadReport:
        """Everything finished so far, since start."""
        started = self._started_at if self._started_at is not None else self._clock.now()
        return build_report(self._samples, started, self._end())

    def report_since(self, label: str, until: str | None = None) -> LoadReport:
        """The finished requests sent after ``mark(label)`` (and before ``mark(until)``)."""
        begin = self._marks[label]
        end = self._marks[until] if until is not None else None
        samples = [
            s for s in self._samples if s.seq >= begin.seq and (end is None or s.seq < end.seq)
        ]
        return build_report(samples, begin.at, end.at if end is not None else self._end())

    def _end(self) -> float:
        return self._stopped_at if self._stopped_at is not None else self._clock.now()

    async def _schedule(self) -> None:
        """Launch request n at start + n / rate, catching up at once when late."""
        assert self._started_at is not None
        n = 0
        while True:
            delay = self._started_at + n / self.rate - self._clock.now()
            if delay > 0:
                await self._clock.sleep(delay)
            task = asyncio.get_running_loop().create_task(self._request(self._sent))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            self._sent += 1
            n += 1

    async def _request(self, seq: int) -> None:
        sent_at = self._clock.now()
        status: int | None = None
        version: str | None = None
        try:
            answered, version = await asyncio.wait_for(self._get(), self.timeout)
            status = answered
            outcome = classify_status(answered)
        except TimeoutError:
            outcome = "timeout"
        except (ConnectionRefusedError, socket.gaierror):
            outcome = "connect"
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            outcome = "network"
        except (ValueError, asyncio.LimitOverrunError):
            outcome = "protocol"
        except Exception:  # a load generator records every failure as data, never dies of one
            outcome = "other"
        latency = self._clock.now() - sent_at
        self._samples.append(Sample(seq, sent_at, latency, outcome, status, version))

    async def _get(self) -> tuple[int, str | None]:
        """One GET on its own connection: (status, version from X-Version or the body).

        A minimal HTTP/1.1 client on asyncio streams: a general-purpose client
        costs several milliseconds of CPU per request, which at hundreds of
        requests per second on a small machine starves the very rollout the
        load is meant to watch.
        """
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(self._request_bytes)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = lines[0].split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/"):
                raise ValueError(f"not an HTTP response: {lines[0]!r}")
            status = int(fields[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length is not None else reader.read())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        version = headers.get("x-version")
        if version is None and 200 <= status < 300:
            version = body.decode("utf-8", "replace").strip() or None
        return status, version

    async def __aenter__(self) -> LoadGenerator:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running:
            await self.stop()
