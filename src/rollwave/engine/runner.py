"""From a loaded config to a finished deployment: lock, plan, preflight, execute, resume.

This is the library entry point the CLI (and the demo, and the API) call.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollwave.engine.clock import SystemClock
from rollwave.engine.executor import Adapters, Executor, Listener, Outcome
from rollwave.engine.observe import observe_versions
from rollwave.engine.ports import Clock, Deployment, DeploymentState, Store
from rollwave.engine.wiring import build_driver, build_prober, build_traffic
from rollwave.errors import FrozenError, InputError, PreflightError, RollwaveError, StoreError
from rollwave.plan.planner import Plan, plan
from rollwave.spec.load import Config

__all__ = [
    "ApplyResult",
    "PreflightError",
    "apply",
    "build_adapters",
    "check_freeze",
    "make_plan",
    "open_state",
    "preflight",
    "preflight_only",
    "who_am_i",
]


@dataclass(frozen=True)
class ApplyResult:
    deployment: Deployment | None  # None when there was nothing to do or the user declined
    outcome: Outcome
    resumed: bool
    plan: Plan


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def open_state(config: Config) -> Store:
    """The environment's store; a store that cannot be opened is invalid input (exit 2)."""
    from rollwave.store import open_store

    try:
        return open_store(config.spec.state, config.base_dir)
    except StoreError as exc:
        raise InputError(f"{config.path.name}: state: {exc.message}", hint=exc.hint) from exc


def build_adapters(config: Config, clock: Clock) -> Adapters:
    drivers = {name: build_driver(config, name, clock) for name in config.spec.services}
    return Adapters(
        drivers=drivers,
        traffic={name: build_traffic(config, name, clock) for name in config.spec.services},
        probers={name: build_prober(config, name, drivers[name]) for name in config.spec.services},
    )


async def _plan_with(config: Config, adapters: Adapters) -> Plan:
    observed = await observe_versions(config, adapters.drivers)
    return plan(config.spec, {s: list(t) for s, t in config.targets.items()}, observed)


async def make_plan(config: Config, clock: Clock | None = None) -> Plan:
    """Observe every target's version and plan the deployment."""
    adapters = build_adapters(config, clock or SystemClock())
    try:
        return await _plan_with(config, adapters)
    finally:
        await adapters.close()


async def preflight(config: Config, the_plan: Plan, adapters: Adapters) -> None:
    """Check every target before anything changes; PreflightError lists every problem."""
    problems: list[str] = []
    gate = asyncio.Semaphore(32)

    async def one(service: str, name: str, version: str, previous: str | None) -> None:
        target = config.inventory.target(name)
        async with gate:
            try:
                driver = adapters.drivers[service]
                await driver.check(target, version)
                if previous:
                    present = await driver.releases(target)
                    if previous not in present:
                        problems.append(
                            f"{service}/{name}: preflight: release {previous} (the rollback target) "
                            "is no longer present, so a rollback would be impossible"
                        )
                await adapters.traffic[service].check(target)
            except RollwaveError as exc:
                problems.append(f"{service}/{name}: preflight: {exc.message}")

    jobs = [
        one(s.name, name, s.version, s.previous.get(name))
        for s in the_plan.services
        for name in s.targets
    ]
    await asyncio.gather(*jobs)
    if problems:
        problems.sort()
        raise PreflightError(
            "\n".join(problems),
            hint="nothing was changed; fix the targets above and run again",
        )


async def preflight_only(config: Config, the_plan: Plan) -> None:
    adapters = build_adapters(config, SystemClock())
    try:
        await preflight(config, the_plan, adapters)
    finally:
        await adapters.close()


def check_freeze(config: Config, store: Store, now: float) -> str | None:
    """Why the environment is frozen now (a one-line reason naming until when), or None."""
    from datetime import UTC, datetime

    from rollwave.plan.freeze import active_freeze

    manual = store.manual_freeze(config.spec.environment)
    if manual is not None:
        since = datetime.fromtimestamp(manual.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"environment {config.spec.environment} is frozen by {manual.who} since {since}: "
            f"{manual.reason} (until `rollwave freeze off`)"
        )
    window = active_freeze(config.spec.freeze, now)
    if window is not None:
        until = datetime.fromtimestamp(window.end, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"environment {config.spec.environment} is frozen until {until}: {window.reason} "
            f"(freeze {window.index + 1} in {config.path.name})"
        )
    return None


async def apply(
    config: Config,
    *,
    confirm: Callable[[Plan], bool] | None = None,
    listeners: Sequence[Listener] = (),
    clock: Clock | None = None,
    lock_ttl: float | None = None,
    on_start: Callable[[Deployment, Plan, bool], None] | None = None,
    override_freeze: str | None = None,
    notify_grace: float = 0.5,
) -> ApplyResult:
    """Run the plan of ``config``, or resume the environment's unfinished deployment.

    A new deployment does not start inside a freeze (FrozenError, exit 3)
    unless ``override_freeze`` gives the reason, which is journaled with
    who overrode. Resuming an unfinished deployment is allowed in a freeze:
    finishing it is safer than leaving the fleet half way.
    """
    clock = clock or SystemClock()
    ttl = lock_ttl if lock_ttl is not None else float(os.environ.get("ROLLWAVE_LOCK_TTL", "15"))
    store = open_state(config)
    adapters = build_adapters(config, clock)
    try:
        lease = store.acquire_lock(
            config.spec.environment, who_am_i(), os.getpid(), ttl, clock.now()
        )
        try:
            unfinished = store.unfinished_deployment(config.spec.environment)
            if unfinished is not None:
                the_plan = Plan.from_dict(unfinished.plan)
                deployment = unfinished
                resumed = True
            else:
                frozen = check_freeze(config, store, clock.now())
                if frozen is not None and override_freeze is None:
                    raise FrozenError(
                        frozen,
                        hint="to deploy anyway: rollwave apply --override-freeze --reason TEXT",
                    )
                the_plan = await _plan_with(config, adapters)
                resumed = False
                if not any(s.waves for s in the_plan.services):
                    return ApplyResult(
                        None,
                        Outcome(
                            DeploymentState.SUCCEEDED,
                            "NothingToDo",
                            "every target already runs its version",
                        ),
                        False,
                        the_plan,
                    )
                if confirm is not None and not confirm(the_plan):
                    return ApplyResult(
                        None,
                        Outcome(
                            DeploymentState.ABORTED,
                            "Declined",
                            "not confirmed: nothing was changed",
                        ),
                        False,
                        the_plan,
                    )
                await preflight(config, the_plan, adapters)
                deployment = store.create_deployment(
                    lease, who_am_i(), config.digest, the_plan.to_dict(), clock.now()
                )
                if frozen is not None:
                    store.append(
                        lease,
                        deployment.id,
                        "freeze_override",
                        "info",
                        clock.now(),
                        data={"who": who_am_i(), "reason": override_freeze, "freeze": frozen},
                    )
            if on_start is not None:
                on_start(deployment, the_plan, resumed)
            notifier = None
            if config.spec.notify:
                from rollwave.notify import Notifier

                def record(deployment_id: int, kind: str, data: Mapping[str, Any]) -> None:
                    with contextlib.suppress(RollwaveError):
                        store.add_event(deployment_id, kind, data, clock.now())

                notifier = Notifier(
                    config.spec.notify,
                    environment=config.spec.environment,
                    record=record,
                    clock=clock,
                )
                notifier.start()
                listeners = [*listeners, notifier]
            executor = Executor(
                config=config,
                plan=the_plan,
                store=store,
                lease=lease,
                deployment=deployment,
                adapters=adapters,
                clock=clock,
                listeners=listeners,
                lock_ttl=ttl,
            )
            try:
                outcome = await executor.run()
            finally:
                if notifier is not None:
                    await notifier.close(notify_grace)
            return ApplyResult(store.get_deployment(deployment.id), outcome, resumed, the_plan)
        finally:
            with contextlib.suppress(RollwaveError):
                store.release_lock(lease)
    finally:
        await adapters.close()
        store.close()
