"""The Protocols the engine drives, and the plain records they exchange.

One small Protocol per outside system: ``Driver`` (how a target is changed),
``TrafficManager`` (how it leaves and rejoins service), ``Prober`` (one
health observation), ``Store`` (deployments, journal, locks, operator
commands) and ``Clock`` (time, injected). Adapters live in ``drivers/``,
``traffic/``, ``health/`` and ``store/`` and translate every foreign
exception into the tree of :mod:`rollwave.errors`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rollwave.inventory.model import Target

__all__ = [
    "Clock",
    "Command",
    "CommandResult",
    "Deployment",
    "DeploymentState",
    "Driver",
    "JournalEntry",
    "Lease",
    "ManualFreeze",
    "ProbeResult",
    "Prober",
    "Store",
    "TrafficManager",
    "TrafficState",
]


# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    """Wall time and sleeping, injected so engine tests can run on a fake clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None: ...


# -------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command: a non-zero exit code is a result, not an exception."""

    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Driver(Protocol):
    """How one service's targets are changed.

    Every method is idempotent: calling it again after a crash re-observes
    the target and finishes or redoes the work. Transport failures raise
    :class:`rollwave.errors.DriverError`.
    """

    async def current_version(self, target: Target) -> str | None:
        """The version ``current`` points to, or None for an empty target."""
        ...

    async def releases(self, target: Target) -> list[str]:
        """The versions present on the target (unpacked releases)."""
        ...

    async def check(self, target: Target, version: str) -> None:
        """Preflight: the target is reachable and ``version`` can be deployed to it."""
        ...

    async def deploy(self, target: Target, version: str) -> None:
        """Make ``version`` the target's current release (stage it, switch ``current``, prune)."""
        ...

    async def restart(self, target: Target) -> None:
        """Stop whatever runs for the target and start its current release."""
        ...

    async def stop(self, target: Target) -> None:
        """Stop the target's process and remove ``current``: the rollback of a first deploy."""
        ...

    async def run(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` on (or for) the target; never through a shell."""
        ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------------- traffic


class TrafficState(enum.StrEnum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"
    UNKNOWN = "unknown"


class TrafficManager(Protocol):
    """How a target is taken out of service and put back."""

    async def check(self, target: Target) -> None:
        """Preflight: the target is known to the load balancer."""
        ...

    async def drain(self, target: Target) -> None: ...

    async def wait_drained(self, target: Target, timeout: float) -> None:
        """Return when no session is left on the target, or when ``timeout`` passed."""
        ...

    async def enable(self, target: Target) -> None:
        """Put the target back in service; return once the load balancer sends it traffic."""
        ...

    async def state(self, target: Target) -> TrafficState: ...

    async def close(self) -> None: ...


# -------------------------------------------------------------------------- health


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


class Prober(Protocol):
    """One health observation of one target (http, tcp or command)."""

    async def probe(self, target: Target, context: Mapping[str, Any]) -> ProbeResult: ...


# --------------------------------------------------------------------------- store


class DeploymentState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in {
            DeploymentState.SUCCEEDED,
            DeploymentState.FAILED,
            DeploymentState.ROLLED_BACK,
            DeploymentState.ABORTED,
        }


@dataclass(frozen=True)
class Lease:
    """The lock of one environment: who holds it, until when, and its fencing token."""

    environment: str
    holder: str
    pid: int
    token: int
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class Deployment:
    id: int
    environment: str
    state: DeploymentState
    reason: str
    message: str
    who: str
    created_at: float
    updated_at: float
    spec_digest: str
    plan: Mapping[str, Any] = field(compare=False, hash=False)


@dataclass(frozen=True)
class JournalEntry:
    """One append-only journal record. ``phase`` is begin, end, fail or info."""

    seq: int
    deployment_id: int
    token: int
    at: float
    kind: str
    phase: str
    service: str = ""
    target: str = ""
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ManualFreeze:
    """An environment frozen by hand with `rollwave freeze on`: who, why and since when."""

    environment: str
    reason: str
    who: str
    since: float


@dataclass(frozen=True)
class Command:
    """An operator command posted from another terminal: pause, resume, abort, approve, rollback."""

    id: int
    deployment_id: int
    kind: str
    args: Mapping[str, Any]
    who: str
    at: float


class Store(Protocol):
    """Durable state: deployments, the journal, locks, events and operator commands.

    Synchronous on purpose: every call is one short transaction. A
    PostgreSQL implementation provides the same methods.
    """

    def close(self) -> None: ...

    # locks
    def acquire_lock(
        self, environment: str, holder: str, pid: int, ttl: float, now: float
    ) -> Lease:
        """Take the environment's lease with a new, larger token, or raise LockedError."""
        ...

    def renew_lock(self, lease: Lease, ttl: float, now: float) -> Lease:
        """Extend the lease; FencedError if a newer token exists."""
        ...

    def release_lock(self, lease: Lease) -> None: ...

    def lock_info(self, environment: str) -> Lease | None:
        """The lease as stored (possibly expired), or None."""
        ...

    # deployments
    def create_deployment(
        self, lease: Lease, who: str, spec_digest: str, plan: Mapping[str, Any], now: float
    ) -> Deployment: ...

    def get_deployment(self, deployment_id: int) -> Deployment:
        """NotFoundError when there is no such deployment."""
        ...

    def latest_deployment(self, environment: str) -> Deployment | None: ...

    def unfinished_deployment(self, environment: str) -> Deployment | None: ...

    def list_deployments(self, environment: str, limit: int = 50) -> list[Deployment]: ...

    def set_state(
        self,
        lease: Lease,
        deployment_id: int,
        state: DeploymentState,
        reason: str,
        message: str,
        now: float,
    ) -> None: ...

    # journal
    def append(
        self,
        lease: Lease,
        deployment_id: int,
        kind: str,
        phase: str,
        now: float,
        *,
        service: str = "",
        target: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> JournalEntry:
        """Append one entry; FencedError if a newer token than ``lease.token`` exists."""
        ...

    def journal(self, deployment_id: int, after_seq: int = 0) -> list[JournalEntry]: ...

    # events (notifications, deliveries, annotations)
    def add_event(
        self, deployment_id: int, kind: str, data: Mapping[str, Any], now: float
    ) -> int: ...

    def events(self, deployment_id: int) -> list[tuple[int, float, str, Mapping[str, Any]]]: ...

    # operator commands
    def post_command(
        self, deployment_id: int, kind: str, args: Mapping[str, Any], who: str, now: float
    ) -> Command: ...

    def commands(self, deployment_id: int, after_id: int = 0) -> list[Command]: ...

    # manual freezes
    def set_freeze(
        self, environment: str, frozen: bool, reason: str, who: str, now: float
    ) -> None: ...

    def manual_freeze(self, environment: str) -> ManualFreeze | None:
        """The environment's manual freeze, or None when it is not frozen by hand."""
        ...
