"""The Protocol the analysis loop reads metrics through.

One small Protocol, as in :mod:`rollwave.engine.ports`: a ``MetricSource``
turns a check's query (a template) into one number per interval. Two
adapters live in :mod:`rollwave.analysis.sources`: ``PrometheusSource``
(the Prometheus HTTP API) and ``ScrapeSource`` (each target's ``/metrics``,
read by rollwave itself). Every failure is one of
:mod:`rollwave.analysis.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["MetricSource"]


class MetricSource(Protocol):
    """Where a check's number comes from."""

    async def refresh(self) -> None:
        """Start a new interval: a scraping source reads every target, a query source does nothing.

        Called once per analysis interval, before that interval's ``measure``
        calls. Raises :class:`~rollwave.analysis.errors.SourceUnreachable`.
        """
        ...

    async def measure(self, query: str, context: Mapping[str, Any]) -> float:
        """The one number ``query`` (rendered with ``context``) gives now.

        ``context`` holds ``service``, ``version``, ``previous_version``,
        ``environment`` and ``targets`` (the wave's target names). Raises
        :class:`~rollwave.analysis.errors.QueryError`,
        :class:`~rollwave.analysis.errors.SourceUnreachable` or
        :class:`~rollwave.analysis.errors.NoData`; never returns NaN.
        """
        ...

    async def close(self) -> None: ...
