"""What can go wrong when a metric source is asked for a number.

Each outcome is its own class, so the analysis loop can treat them apart:
a refused query is a mistake in the spec, an unreachable source and an
empty answer are reasons to call one interval inconclusive::

    RollwaveError                  (rollwave.errors)
    └── AnalysisError              a metric source could not give a measurement
        ├── QueryError             the source refused the query: Prometheus' errorType and
        │                          error text (bad_data, execution, ...), a scrape expression
        │                          rollwave does not know, a placeholder without a value
        ├── SourceUnreachable      no usable answer: connection refused, timeout (ours, or
        │                          Prometheus' errorType timeout/canceled/unavailable), an
        │                          HTTP status without a Prometheus API body, a body that is
        │                          not JSON or not the exposition format
        └── NoData                 the query was fine and matched nothing (no series, NaN,
                                   no request between two scrapes)

No httpx or prometheus_client exception leaves :mod:`rollwave.analysis`.
"""

from __future__ import annotations

from rollwave.errors import RollwaveError

__all__ = ["AnalysisError", "NoData", "QueryError", "SourceUnreachable"]


class AnalysisError(RollwaveError):
    """A metric source could not give a measurement."""


class QueryError(AnalysisError):
    """The source refused the query; ``error_type`` is Prometheus' ``errorType`` when it gave one.

    ``error`` holds the source's own text (Prometheus' ``error`` field), so
    a person can read what the server said about the query.
    """

    def __init__(
        self,
        message: str,
        *,
        query: str,
        error_type: str = "",
        error: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.query = query
        self.error_type = error_type
        self.error = error


class SourceUnreachable(AnalysisError):
    """The source gave no usable answer: transport failure, timeout, or an answer not understood."""

    def __init__(self, message: str, *, url: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url = url


class NoData(AnalysisError):
    """The query was accepted and matched nothing."""

    def __init__(self, message: str, *, query: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.query = query
