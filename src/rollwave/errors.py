"""The whole exception tree of rollwave.

Every error carries a ``message`` naming the thing and the fact, and an
optional ``hint`` naming the next action. The CLI maps each class to one
line and a documented exit code::

    RollwaveError                 exit 1 unless a subclass says otherwise
    ├── InputError                exit 2  bad input: spec, inventory, arguments
    │   ├── SpecError             rollwave.yaml problems, one Problem per line
    │   │   └── InventoryError    inventory problems, with file and line
    │   └── PreflightError        a target cannot be deployed to (named with its step)
    ├── LockedError               exit 3  another run holds the environment
    ├── FrozenError               exit 3  the environment is in a freeze
    ├── DeploymentFailed          exit 1  rolled back, or left paused
    ├── DeploymentAborted         exit 4  aborted by an operator
    ├── StoreError                        the state store failed
    │   └── FencedError                   a newer lock token exists: this run lost its lease
    ├── TargetError                       one target failed a step
    │   ├── DriverError                   the driver could not act (transport, file system)
    │   ├── TrafficError                  the traffic manager could not act
    │   └── HealthError                   the target did not turn healthy in time
    └── NotFoundError             exit 2  no such deployment
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DeploymentAborted",
    "DeploymentFailed",
    "DriverError",
    "FencedError",
    "FrozenError",
    "HealthError",
    "InputError",
    "InventoryError",
    "LockedError",
    "NotFoundError",
    "PreflightError",
    "Problem",
    "RollwaveError",
    "SpecError",
    "StoreError",
    "TargetError",
    "TrafficError",
]


class RollwaveError(Exception):
    """Base of every error rollwave raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(RollwaveError):
    """The user's input (files, arguments) is invalid; nothing was changed."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in one input file, printed as ``file:line:col: path: message``."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(InputError):
    """One or more problems in a rollwave.yaml (or a file it names)."""

    def __init__(self, problems: list[Problem], *, hint: str | None = None) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems), hint=hint)


class InventoryError(SpecError):
    """One or more problems in an inventory file."""


class PreflightError(InputError):
    """A target cannot be observed or deployed to; nothing was changed. One line per target."""


class NotFoundError(InputError):
    """A deployment, target or service that was asked for does not exist."""


class LockedError(RollwaveError):
    """The environment is locked by another running deployment."""

    exit_code = 3


class FrozenError(RollwaveError):
    """The environment is inside a freeze window."""

    exit_code = 3


class DeploymentFailed(RollwaveError):
    """The deployment failed: it was rolled back or left paused."""

    exit_code = 1


class DeploymentAborted(RollwaveError):
    """An operator aborted the deployment."""

    exit_code = 4


class StoreError(RollwaveError):
    """The state store could not be read or written."""


class FencedError(StoreError):
    """A journal write carried a fencing token older than the lock's newest one."""


class TargetError(RollwaveError):
    """A step on one target failed."""

    def __init__(self, target: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{target}: {message}", hint=hint)
        self.target = target
        self.reason = message


class DriverError(TargetError):
    """The driver could not act on a target."""


class TrafficError(TargetError):
    """The traffic manager could not drain, enable or read a target."""


class HealthError(TargetError):
    """A target did not become healthy before its deadline."""
