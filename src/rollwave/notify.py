"""Webhook notifications: a journal listener that never slows a rollout down.

Each subscribed event becomes one JSON POST with a Slack-compatible ``text``
field. Every webhook has its own queue and one sender, so its events arrive
in order; a failed delivery is retried with backoff; every outcome is
recorded through ``record``. The rollout never waits for a webhook: at the
end, :meth:`Notifier.close` gives pending deliveries a short grace and
abandons (and records) what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from rollwave.engine.ports import Clock, JournalEntry
from rollwave.spec.model import NotifySpec

__all__ = ["Notifier", "event_of", "redact"]

RETRIES = 3
BACKOFF = 0.25  # seconds before the second attempt; doubles after each failure

Recorder = Callable[[int, str, Mapping[str, Any]], None]


def redact(url: str) -> str:
    """A webhook URL without its path and query, which often carry the secret token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/…"


def event_of(entry: JournalEntry) -> str | None:
    """The notification event a journal entry stands for, if any."""
    if entry.kind == "deployment" and entry.phase == "begin":
        return "started"
    if entry.kind == "wave" and entry.phase == "end":
        return "wave_completed"
    if entry.kind == "state":
        state = entry.data.get("state")
        if state == "paused":
            return "approval_needed" if entry.data.get("reason") == "AwaitingApproval" else "paused"
        if state in ("failed", "rolled_back", "succeeded", "aborted"):
            return str(state)
    return None


class Notifier:
    """Journal listener posting subscribed events to webhooks."""

    def __init__(
        self,
        specs: Sequence[NotifySpec],
        *,
        environment: str,
        record: Recorder,
        clock: Clock,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.specs = list(specs)
        self.environment = environment
        self.record = record
        self.clock = clock
        self._queues: list[asyncio.Queue[tuple[int, dict[str, Any]]]] = [
            asyncio.Queue() for _ in self.specs
        ]
        self._senders: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(
            transport=transport, trust_env=False, follow_redirects=False
        )

    def start(self) -> None:
        self._senders = [
            asyncio.create_task(self._send_all(spec, queue))
            for spec, queue in zip(self.specs, self._queues, strict=True)
        ]

    def __call__(self, entry: JournalEntry) -> None:
        event = event_of(entry)
        if event is None:
            return
        body = self._body(event, entry)
        for spec, queue in zip(self.specs, self._queues, strict=True):
            if event in spec.events:
                queue.put_nowait((entry.deployment_id, body))

    def _body(self, event: str, entry: JournalEntry) -> dict[str, Any]:
        data = dict(entry.data)
        body: dict[str, Any] = {
            "event": event,
            "environment": self.environment,
            "deployment": entry.deployment_id,
            "at": datetime.fromtimestamp(entry.at, UTC).isoformat(),
            "seq": entry.seq,
        }
        if entry.service:
            body["service"] = entry.service
        for key in ("wave", "state", "reason", "message"):
            if key in data:
                body[key] = data[key]
        detail = f" — {data['message']}" if data.get("message") else ""
        where = f" {entry.service} wave {data['wave']}" if event == "wave_completed" else ""
        body["text"] = (
            f"rollwave: {self.environment} deployment {entry.deployment_id}{where}: "
            f"{event.replace('_', ' ')}{detail}"
        )
        return body

    async def _send_all(
        self, spec: NotifySpec, queue: asyncio.Queue[tuple[int, dict[str, Any]]]
    ) -> None:
        while True:
            deployment, body = await queue.get()
            try:
                await self._deliver(spec, deployment, body)
            except asyncio.CancelledError:
                self.record(
                    deployment,
                    "notify",
                    {
                        "webhook": redact(spec.webhook),
                        "event": body["event"],
                        "ok": False,
                        "abandoned": True,
                    },
                )
                raise
            finally:
                queue.task_done()

    async def _deliver(self, spec: NotifySpec, deployment: int, body: Mapping[str, Any]) -> None:
        delay = BACKOFF
        for attempt in range(1, RETRIES + 1):
            outcome: dict[str, Any] = {
                "webhook": redact(spec.webhook),
                "event": body["event"],
                "attempt": attempt,
            }
            try:
                response = await self._client.post(
                    spec.webhook, json=body, headers=dict(spec.headers), timeout=spec.timeout
                )
            except httpx.HTTPError as exc:
                outcome.update(
                    ok=False,
                    error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                )
            else:
                ok = response.status_code < 300
                outcome.update(ok=ok, status=response.status_code)
                if ok:
                    self.record(deployment, "notify", outcome)
                    return
                if response.status_code < 500 and response.status_code != 429:
                    self.record(deployment, "notify", {**outcome, "final": True})
                    return  # a client error will not get better by retrying
            self.record(deployment, "notify", {**outcome, "final": attempt == RETRIES})
            if attempt < RETRIES:
                await self.clock.sleep(delay)
                delay *= 2

    async def close(self, grace: float = 0.5) -> None:
        """Give queued deliveries ``grace`` seconds, then abandon the rest (recorded)."""
        pending = [q.join() for q in self._queues]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), timeout=grace)
        for spec, queue in zip(self.specs, self._queues, strict=True):
            while not queue.empty():
                deployment, body = queue.get_nowait()
                self.record(
                    deployment,
                    "notify",
                    {
                        "webhook": redact(spec.webhook),
                        "event": body["event"],
                        "ok": False,
                        "abandoned": True,
                    },
                )
        for sender in self._senders:
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        await self._client.aclose()
