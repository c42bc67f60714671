"""The typed, frozen model of ``rollwave.yaml`` (pydantic v2). Pure.

Every section of the contract in DESIGN.md is modelled here, including the
parts later capabilities execute (analysis, migrations, hooks, freeze,
notify), so that a spec is validated whole before anything runs. Checks
that need the inventory (host patterns, placeholders, wave arithmetic per
service) live in :mod:`rollwave.spec.load`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from rollwave.spec.units import Count, Duration, Percent, QuantityField

__all__ = [
    "AnalysisCheck",
    "AnalysisSpec",
    "CanarySpec",
    "CommandTrafficSpec",
    "FailureSpec",
    "FreezeSpec",
    "HAProxySpec",
    "HealthSpec",
    "HookSpec",
    "HooksSpec",
    "LocalDriverSpec",
    "MigrationStep",
    "MigrationsSpec",
    "NotifySpec",
    "SSHDriverSpec",
    "ServiceSpec",
    "Spec",
    "StrategySpec",
    "TrafficSpec",
]

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
NOTIFY_EVENTS = (
    "started",
    "wave_completed",
    "paused",
    "approval_needed",
    "failed",
    "rolled_back",
    "succeeded",
    "aborted",
)


def _safe_name(kind: str) -> Any:
    def check(value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError(
                f"{kind} {value!r} may hold only letters, digits and . _ + - "
                "(and must start with a letter or digit)"
            )
        return value

    return AfterValidator(check)


Name = Annotated[str, _safe_name("name")]
Version = Annotated[str, _safe_name("version")]
Argv = Annotated[list[str], Field(min_length=1)]


def _version_from_number(value: Any) -> Any:
    # YAML reads 2.4 as a float and 3 as an int; a version is text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ------------------------------------------------------------------ drivers


class LocalDriverSpec(Frozen):
    """Each target is a process slot on this machine."""

    kind: Literal["local"]
    artifact: str
    root: str
    start: Argv
    keep: int = Field(default=3, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    stop_grace: Duration = 10.0


class SSHDriverSpec(Frozen):
    """Each target is a host reached over SSH; releases are Capistrano-style."""

    kind: Literal["ssh"]
    artifact: str
    root: str
    restart: Argv
    stop: Argv | None = None
    keep: int = Field(default=5, ge=1)
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key: str | None = None
    known_hosts: str | None = None
    insecure_skip_host_key_check: bool = False
    jump_host: str | None = None
    connect_timeout: Duration = 10.0
    command_timeout: Duration = 300.0
    concurrency: int = Field(default=20, ge=1)


DriverSpec = Annotated[LocalDriverSpec | SSHDriverSpec, Field(discriminator="kind")]


# ------------------------------------------------------------------- health


class HealthSpec(Frozen):
    """When a target is ready again: one probe, judged over time."""

    http: str | None = None
    tcp: str | None = None
    command: Argv | None = None
    on: Literal["controller", "target"] = (
        "target"  # where a `command` runs; http and tcp probe from here
    )
    expect_status: int = Field(default=200, ge=100, le=599)
    body_contains: str | None = None
    interval: Duration = 1.0
    timeout: Duration = 2.0
    successes: int = Field(default=1, ge=1)
    min_healthy: Duration = 0.0
    deadline: Duration = 60.0

    @model_validator(mode="after")
    def _one_probe(self) -> HealthSpec:
        given = [k for k in ("http", "tcp", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of http, tcp or command")
        return self


# ------------------------------------------------------------------ traffic


class HAProxySpec(Frozen):
    socket: str | None = None
    address: str | None = None
    backend: str
    server: str = "{name}"
    wait_up: Duration = 30.0

    @model_validator(mode="after")
    def _one_endpoint(self) -> HAProxySpec:
        if (self.socket is None) == (self.address is None):
            raise ValueError(
                "give exactly one of socket (a unix socket path) or address (host:port)"
            )
        return self


class CommandTrafficSpec(Frozen):
    drain: Argv | None = None
    enable: Argv | None = None
    state: Argv | None = None
    timeout: Duration = 30.0


class TrafficSpec(Frozen):
    haproxy: HAProxySpec | None = None
    command: CommandTrafficSpec | None = None
    drain: Duration = 15.0

    @model_validator(mode="after")
    def _one_manager(self) -> TrafficSpec:
        if self.haproxy is not None and self.command is not None:
            raise ValueError("give at most one of haproxy or command")
        return self


# ----------------------------------------------------------------- services


class ServiceSpec(Frozen):
    hosts: str = Field(min_length=1)
    version: Annotated[Version, BeforeValidator(_version_from_number)]
    driver: DriverSpec
    health: HealthSpec | None = None
    traffic: TrafficSpec | None = None
    depends_on: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------- strategy


def _whole_fleet() -> list[Count | Percent]:
    return [Percent(100.0)]


class FailureSpec(Frozen):
    tolerate: int = Field(default=0, ge=0)
    action: Literal["rollback", "pause", "abort"] = "rollback"
    scope: Literal["service", "deployment"] = "service"


class StrategySpec(Frozen):
    order: Literal["staged", "parallel"] = "staged"
    waves: Annotated[list[QuantityField], Field(min_length=1)] = Field(default_factory=_whole_fleet)
    max_unavailable: QuantityField = Count(1)
    progress_deadline: Duration = 600.0
    bake: Duration = 0.0
    approve_before: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    approval_timeout: Duration | None = None
    approval_timeout_action: Literal["fail", "pause"] = "fail"
    spread_by: str | None = None
    failure: FailureSpec = FailureSpec()

    @field_validator("max_unavailable")
    @classmethod
    def _some_unavailable(cls, value: Count | Percent) -> Count | Percent:
        if value.value == 0:
            raise ValueError("max_unavailable must allow at least one target, got 0")
        return value


# ----------------------------------------------------------------- analysis


class AnalysisCheck(Frozen):
    name: str
    prometheus: str | None = None
    scrape: str | None = None
    query: str
    max: float | None = None
    min: float | None = None
    failure_limit: int = Field(default=1, ge=1)
    inconclusive_limit: int = Field(default=3, ge=1)
    inconclusive: Literal["fail", "pass", "pause"] = "fail"

    @model_validator(mode="after")
    def _source_and_bound(self) -> AnalysisCheck:
        if (self.prometheus is None) == (self.scrape is None):
            raise ValueError(
                "give exactly one source: prometheus (a URL) or scrape (a metrics URL template, e.g. http://{address}:{http_port}/metrics)"
            )
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        return self


class CanarySpec(Frozen):
    """Canary vs baseline, metric by metric (Mann-Whitney U), scored like Kayenta.

    ``directions`` says, per metric, which difference is harmful:
    ``increase`` (higher is worse), ``decrease`` (lower is worse) or
    ``either``. A metric without one takes the default by its name:
    latency* and error* increase, throughput and request_rate decrease,
    anything else either.
    """

    metrics: Annotated[list[str], Field(min_length=1)]
    confidence: float = Field(default=0.95, gt=0, lt=1)
    pass_score: float = Field(default=95.0, alias="pass", ge=0, le=100)
    marginal: float = Field(default=75.0, ge=0, le=100)
    min_samples: int = Field(default=10, ge=3)
    scrape: str | None = None  # metrics URL template per target; default: the first scrape check's
    directions: dict[str, Literal["increase", "decrease", "either"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _directions_of_metrics(self) -> CanarySpec:
        unknown = sorted(set(self.directions) - set(self.metrics))
        if unknown:
            raise ValueError(f"directions name {', '.join(unknown)}, which metrics does not list")
        return self


class AnalysisSpec(Frozen):
    interval: Duration = 15.0
    checks: list[AnalysisCheck] = Field(default_factory=list)
    canary: CanarySpec | None = None


# ------------------------------------------------------- migrations, hooks


class MigrationStep(Frozen):
    run: Argv
    on: str | None = None
    timeout: Duration = 600.0
    after: Duration = 0.0


class MigrationsSpec(Frozen):
    expand: MigrationStep | None = None
    contract: MigrationStep | None = None


def _hook_from_argv(value: Any) -> Any:
    # `verify: [./smoke.sh, "{address}"]` is short for `verify: {run: [...]}`.
    if isinstance(value, list):
        return {"run": value}
    return value


class HookSpec(Frozen):
    run: Argv
    on: Literal["local", "target"] = "local"
    timeout: Duration = 60.0


Hook = Annotated[HookSpec, BeforeValidator(_hook_from_argv)]


class HooksSpec(Frozen):
    before_deployment: Hook | None = None
    after_deployment: Hook | None = None
    before_wave: Hook | None = None
    after_wave: Hook | None = None
    before_target: Hook | None = None
    after_target: Hook | None = None
    verify: Hook | None = None


# --------------------------------------------------------- freeze, notify


class FreezeSpec(Frozen):
    reason: str = Field(min_length=1)
    cron: str | None = None
    duration: Duration | None = None
    start: datetime | None = None
    end: datetime | None = None
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _window(self) -> FreezeSpec:
        if self.cron is not None:
            if self.duration is None or self.start is not None or self.end is not None:
                raise ValueError("a cron freeze takes cron and duration (and no start/end)")
            from croniter import croniter  # local: keeps module import light

            if not croniter.is_valid(self.cron):
                raise ValueError(f"bad cron expression {self.cron!r}")
        elif self.start is not None and self.end is not None:
            if self.end <= self.start:
                raise ValueError("a freeze must end after it starts")
        else:
            raise ValueError("give either cron and duration, or start and end")
        return self


class NotifySpec(Frozen):
    webhook: Annotated[str, Field(pattern=r"^https?://\S+$")]
    events: list[Literal[NOTIFY_EVENTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(NOTIFY_EVENTS)
    )
    timeout: Duration = 5.0
    headers: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------- spec


class Spec(Frozen):
    environment: Name
    state: str = ".rollwave/state.db"
    inventory: str
    services: Annotated[dict[Name, ServiceSpec], Field(min_length=1)]
    strategy: StrategySpec = StrategySpec()
    analysis: AnalysisSpec | None = None
    migrations: MigrationsSpec | None = None
    hooks: HooksSpec | None = None
    freeze: list[FreezeSpec] = Field(default_factory=list)
    notify: list[NotifySpec] = Field(default_factory=list)
