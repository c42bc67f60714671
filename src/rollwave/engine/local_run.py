"""Run an argv on the controller (hooks, migrations, local commands): never through a shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rollwave.engine.ports import CommandResult

__all__ = ["run_local"]


async def run_local(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` here; a missing executable is exit 127, a timeout is exit 124 (as coreutils)."""
    started = time.monotonic()
    environment = {**os.environ, **(env or {})}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: not found", time.monotonic() - started)
    except PermissionError:
        return CommandResult(126, "", f"{argv[0]}: permission denied", time.monotonic() - started)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return CommandResult(
            124, "", f"{argv[0]}: timed out after {timeout:g}s", time.monotonic() - started
        )
    return CommandResult(
        process.returncode if process.returncode is not None else -1,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )
