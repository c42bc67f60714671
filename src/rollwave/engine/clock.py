"""The real clock: wall time and asyncio sleeping.

This is the one place that reads the system time; everything else takes a
:class:`rollwave.engine.ports.Clock` so it can run on a fake one.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["SystemClock"]


class SystemClock:
    """:class:`~rollwave.engine.ports.Clock` on ``time.time`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (a negative value sleeps not at all)."""
        await asyncio.sleep(max(0.0, seconds))
