"""Durations, counts and percentages: the value types of rollwave.yaml. Pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator

__all__ = [
    "Count",
    "Duration",
    "Percent",
    "Quantity",
    "QuantityField",
    "format_duration",
    "parse_duration",
    "parse_quantity",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``500ms``, ``90s``, ``2m``, ``1h30m`` (or a plain number of seconds).

    >>> parse_duration("1h30m")
    5400.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 90s or 2m, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite, non-negative number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 90s or 2m, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError("expected a duration such as 90s or 2m, got an empty string")
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(
            f"bad duration {value!r}: use a number and a unit (ms, s, m, h), such as 500ms, 90s, 1h30m"
        )
    return total


def format_duration(seconds: float) -> str:
    """The short human form of a duration: ``90.0 -> '1m30s'``, ``0.5 -> '500ms'``."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


Duration = Annotated[
    float,
    PlainValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


@dataclass(frozen=True)
class Count:
    """An absolute number of targets."""

    value: int

    def of(self, total: int) -> int:
        return min(self.value, total)

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Percent:
    """A share of a service's targets, written ``10%``."""

    value: float

    def __str__(self) -> str:
        text = f"{self.value:g}"
        return f"{text}%"


Quantity = Count | Percent

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_quantity(value: Any) -> Quantity:
    """A count (``3``) or a percentage (``"25%"``); anything else is invalid."""
    if isinstance(value, Count | Percent):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a count such as 2 or a percentage such as 25%, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count cannot be negative, got {value}")
        return Count(value)
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match:
            percent = float(match.group(1))
            if percent > 100:
                raise ValueError(f"a percentage cannot exceed 100%, got {value}")
            return Percent(percent)
        if value.strip().isdigit():
            return Count(int(value.strip()))
    raise ValueError(f"expected a count such as 2 or a percentage such as 25%, got {value!r}")


QuantityField = Annotated[
    Count | Percent,
    PlainValidator(parse_quantity),
    PlainSerializer(lambda q: q.value if isinstance(q, Count) else str(q)),
]
