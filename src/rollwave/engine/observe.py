"""Observe what runs where: the version of every target of every service."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from rollwave.engine.ports import Driver
from rollwave.errors import PreflightError, RollwaveError
from rollwave.spec.load import Config

__all__ = ["observe_versions"]


async def observe_versions(
    config: Config, drivers: Mapping[str, Driver], *, limit: int = 32
) -> dict[str, dict[str, str | None]]:
    """``{service: {target: current version or None}}``, asked of each service's driver."""
    gate = asyncio.Semaphore(limit)
    result: dict[str, dict[str, str | None]] = {}
    problems: list[str] = []

    async def one(service: str, name: str) -> None:
        async with gate:
            target = config.inventory.target(name)
            try:
                result[service][name] = await drivers[service].current_version(target)
            except RollwaveError as exc:
                problems.append(f"{service}/{name}: observe current version: {exc.message}")

    jobs: list[Coroutine[Any, Any, None]] = []
    for service, targets in config.targets.items():
        result[service] = {}
        jobs.extend(one(service, t.name) for t in targets)
    await asyncio.gather(*jobs)
    if problems:
        raise PreflightError(
            "\n".join(sorted(problems)),
            hint="nothing was changed; reach these targets and run again",
        )
    return result
