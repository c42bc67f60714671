"""No load balancer: every target is always in service.

For services nobody routes to by a balancer rollwave controls (a worker
queue, a single process slot, the demo). Draining does nothing and waits
for nothing: with no balancer there are no sessions rollwave could observe.
"""

from __future__ import annotations

from rollwave.engine.ports import TrafficState
from rollwave.inventory.model import Target

__all__ = ["NoTraffic"]


class NoTraffic:
    """:class:`~rollwave.engine.ports.TrafficManager` that does nothing; state is always READY."""

    async def check(self, target: Target) -> None:
        """Nothing to check."""

    async def drain(self, target: Target) -> None:
        """Nothing to drain."""

    async def wait_drained(self, target: Target, timeout: float) -> None:
        """Return at once: there are no sessions to wait for."""

    async def enable(self, target: Target) -> None:
        """Nothing to enable."""

    async def state(self, target: Target) -> TrafficState:
        return TrafficState.READY

    async def close(self) -> None:
        """Nothing to release."""
