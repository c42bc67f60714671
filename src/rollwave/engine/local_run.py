"""Run an argv on the controller (hooks, migrations, command traffic managers, the local driver).

Never through a shell: every argument is passed as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from rollwave.engine.ports import Clock, CommandResult

__all__ = ["run_argv"]

_PIPE_DRAIN = 1.0  # seconds to wait for EOF after a command exited (a background child may hold it)


async def run_argv(
    argv: Sequence[str],
    *,
    timeout: float,
    clock: Clock,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
) -> CommandResult:
    """Run ``argv`` on this machine without a shell and collect its output.

    The command runs in its own session; on timeout the whole session's
    process group gets SIGKILL and the result is exit code 124 (as with
    ``timeout(1)``) with ``timed out after <timeout>s`` appended to stderr. A
    command killed by a signal exits ``128 + signal``. A missing executable is
    exit code 127 with stderr ``<exe>: not found``; one that may not be
    executed is 126. Other ``OSError`` (a missing ``cwd``) propagates.
    """
    if not argv:
        raise ValueError("run_argv needs a command")
    started = clock.now()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        if cwd is not None and exc.filename is not None and str(exc.filename) == str(cwd):
            raise
        code, what = (127, "not found") if exc.errno == errno.ENOENT else (126, "permission denied")
        return CommandResult(code, "", f"{argv[0]}: {what}", clock.now() - started)

    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = bytearray(), bytearray()
    readers = [
        asyncio.ensure_future(_collect(proc.stdout, out)),
        asyncio.ensure_future(_collect(proc.stderr, err)),
    ]
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            await proc.wait()
        await asyncio.wait(readers, timeout=_PIPE_DRAIN)
    except BaseException:  # cancelled: take the command down with us
        _kill_group(proc)
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    finally:
        for reader in readers:
            reader.cancel()
    code = proc.returncode if proc.returncode is not None else -1
    if code < 0:
        code = 128 - code  # killed by signal n: 128 + n, as a shell reports it
    stderr = err.decode("utf-8", "replace")
    if timed_out:
        code = 124
        if stderr and not stderr.endswith("\n"):
            stderr += "\n"
        stderr += f"{argv[0]}: timed out after {timeout:g}s"
    return CommandResult(code, out.decode("utf-8", "replace"), stderr, clock.now() - started)


async def _collect(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into += chunk


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:  # not reaped yet, so its PID (and group) cannot be reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------- /proc helpers
