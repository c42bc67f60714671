"""Traffic managed by the user's own commands (a script calling a cloud API, ``consul maint``...).

Each command is an argv template (no shell) run on this machine, with
``{name}``, ``{address}`` and whatever ``context_for(target)`` adds. A
non-zero exit is a :class:`~rollwave.errors.TrafficError` quoting the
command's stderr. The ``state`` command prints ``ready``, ``drain`` or
``maint`` on stdout.

rollwave cannot see a balancer's sessions through a command, so
:meth:`CommandTraffic.wait_drained` simply waits its whole ``timeout`` (the
service's ``traffic.drain`` duration): the time the user granted in-flight
requests to finish.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from rollwave.engine.local_run import run_argv
from rollwave.engine.ports import Clock, CommandResult, TrafficState
from rollwave.errors import TrafficError
from rollwave.inventory.model import Target
from rollwave.spec.templates import render_argv

__all__ = ["CommandTraffic"]

_STDERR_MAX = 300  # characters of a failed command's output quoted in the error


class CommandTraffic:
    """:class:`~rollwave.engine.ports.TrafficManager` driven by user commands.

    A command that is None is not needed: ``drain``/``enable`` do nothing,
    and ``state`` answers UNKNOWN (the engine then drains and enables again,
    which the commands must tolerate: they are meant to be idempotent).
    ``timeout`` bounds each command.
    """

    def __init__(
        self,
        *,
        drain: list[str] | None,
        enable: list[str] | None,
        state: list[str] | None,
        context_for: Callable[[Target], Mapping[str, Any]],
        timeout: float,
        clock: Clock,
    ) -> None:
        for what, argv in (("drain", drain), ("enable", enable), ("state", state)):
            if argv is not None and not argv:
                raise ValueError(f"traffic.{what} must be a command or absent, not empty")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.drain_argv = drain
        self.enable_argv = enable
        self.state_argv = state
        self.context_for = context_for
        self.timeout = timeout
        self.clock = clock

    async def check(self, target: Target) -> None:
        """Every command renders for the target and its executable is found."""
        for what, argv in self._commands():
            exe = self._argv(target, what, argv)[0]
            if not _executable(exe):
                raise TrafficError(target.name, f"traffic {what} command {exe} not found")

    async def drain(self, target: Target) -> None:
        if self.drain_argv is not None:
            await self._run(target, "drain", self.drain_argv)

    async def wait_drained(self, target: Target, timeout: float) -> None:
        """Wait the whole ``timeout``: sessions cannot be observed through a command."""
        if self.drain_argv is not None:
            await self.clock.sleep(timeout)

    async def enable(self, target: Target) -> None:
        if self.enable_argv is not None:
            await self._run(target, "enable", self.enable_argv)

    async def state(self, target: Target) -> TrafficState:
        if self.state_argv is None:
            return TrafficState.UNKNOWN
        result = await self._run(target, "state", self.state_argv)
        words = result.stdout.split()
        said = words[0].lower() if words else ""
        if said in (TrafficState.READY, TrafficState.DRAIN, TrafficState.MAINT):
            return TrafficState(said)
        raise TrafficError(
            target.name,
            f"traffic state command printed {result.stdout.strip()[:80]!r}, "
            "expected ready, drain or maint",
        )

    async def close(self) -> None:
        """Nothing to release."""

    def _commands(self) -> list[tuple[str, list[str]]]:
        named = (
            ("drain", self.drain_argv),
            ("enable", self.enable_argv),
            ("state", self.state_argv),
        )
        return [(what, argv) for what, argv in named if argv is not None]

    def _argv(self, target: Target, what: str, argv: list[str]) -> list[str]:
        context = {"name": target.name, "address": target.address, **self.context_for(target)}
        try:
            return render_argv(argv, context)
        except KeyError as exc:
            raise TrafficError(
                target.name, f"traffic {what} command uses unknown placeholder {{{exc.args[0]}}}"
            ) from exc

    async def _run(self, target: Target, what: str, template: list[str]) -> CommandResult:
        argv = self._argv(target, what, template)
        try:
            result = await run_argv(argv, timeout=self.timeout, clock=self.clock)
        except OSError as exc:
            raise TrafficError(target.name, f"cannot run {shlex.join(argv)}: {exc}") from exc
        if not result.ok:
            said = " ".join((result.stderr or result.stdout).split())[:_STDERR_MAX]
            raise TrafficError(
                target.name,
                f"traffic {what} command {shlex.join(argv)} exited {result.exit_code}"
                + (f": {said}" if said else ""),
            )
        return result


def _executable(exe: str) -> bool:
    """``exe`` is an executable file (a path) or found on PATH (a bare name)."""
    if "/" in exe:
        return os.access(exe, os.X_OK) and not os.path.isdir(exe)
    return shutil.which(exe) is not None
