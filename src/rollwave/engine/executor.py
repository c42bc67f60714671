"""The executor: runs a plan, service by service and wave by wave.

For each target: ``drain -> wait_drained -> deploy -> restart -> health ->
verify -> enable``, each step journaled before its side effect and again
after it. Inside a wave, at most ``max_unavailable`` targets are out of
service at once and the window slides: a worker takes the next target as
soon as its last one is done. Between waves come bake and approval gates.
A failure past ``failure.tolerate`` triggers the policy: rollback (a forward
run toward the releases the targets had before), pause or abort.

The executor never prints: it appends journal entries, and every entry is
also handed to the listeners (terminal progress, JSON lines).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollwave.engine.journal import Progress, replay
from rollwave.engine.ports import (
    Clock,
    CommandResult,
    Deployment,
    DeploymentState,
    Driver,
    JournalEntry,
    Lease,
    Prober,
    Store,
    TrafficManager,
)
from rollwave.engine.wiring import target_context
from rollwave.errors import FencedError, RollwaveError
from rollwave.health.probes import wait_healthy
from rollwave.inventory.model import Target
from rollwave.plan.planner import Plan, ServicePlan, Wave
from rollwave.spec.load import Config
from rollwave.spec.model import HookSpec
from rollwave.spec.templates import render_argv

__all__ = ["Adapters", "Executor", "Outcome"]

Listener = Callable[[JournalEntry], None]

OUTPUT_LIMIT = 4096  # bytes of hook output kept in the journal


@dataclass
class Adapters:
    drivers: Mapping[str, Driver]
    traffic: Mapping[str, TrafficManager]
    probers: Mapping[str, Prober | None]

    async def close(self) -> None:
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                await driver.close()
        for manager in self.traffic.values():
            with contextlib.suppress(Exception):
                await manager.close()


@dataclass(frozen=True)
class Outcome:
    state: DeploymentState
    reason: str
    message: str


class _Stop(Exception):
    """Internal: unwind a service run (abort, rollback requested, lease lost)."""


@dataclass
class _Controls:
    """Operator intent, read from the store's command table."""

    paused: bool = False
    aborted: bool = False
    rollback: bool = False
    approvals: set[tuple[str, int]] = field(default_factory=set)
    any_approvals: set[int] = field(default_factory=set)
    last_id: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Executor:
    """Runs one deployment to its end (or until it is stopped)."""

    def __init__(
        self,
        *,
        config: Config,
        plan: Plan,
        store: Store,
        lease: Lease,
        deployment: Deployment,
        adapters: Adapters,
        clock: Clock,
        listeners: Sequence[Listener] = (),
        poll_interval: float = 0.25,
        lock_ttl: float = 15.0,
    ) -> None:
        self.config = config
        self.plan = plan
        self.store = store
        self.lease = lease
        self.deployment = deployment
        self.adapters = adapters
        self.clock = clock
        self.listeners = list(listeners)
        self.poll_interval = poll_interval
        self.lock_ttl = lock_ttl
        self.controls = _Controls()
        self.progress = Progress()
        self._failure: tuple[str, str] | None = None  # (reason, message) of the first failure
        self._lease_lost: str | None = None
        self._state = deployment.state
        self._reason = deployment.reason
        self._approver: dict[tuple[str, int], str] = {}

    # ------------------------------------------------------------- journal

    def record(
        self,
        kind: str,
        phase: str,
        *,
        service: str = "",
        target: str = "",
        **data: Any,
    ) -> JournalEntry:
        entry = self.store.append(
            self.lease,
            self.deployment.id,
            kind,
            phase,
            self.clock.now(),
            service=service,
            target=target,
            data=data,
        )
        for listener in self.listeners:
            listener(entry)
        return entry

    def set_state(self, state: DeploymentState, reason: str, message: str) -> None:
        self._state = state
        self._reason = reason
        self.store.set_state(
            self.lease, self.deployment.id, state, reason, message, self.clock.now()
        )
        self.record("state", "info", state=state.value, reason=reason, message=message)

    # ----------------------------------------------------------------- run

    async def run(self) -> Outcome:
        """Run (or resume) the deployment; returns its final state."""
        entries = self.store.journal(self.deployment.id)
        self.progress = replay(entries)
        for command in self.store.commands(self.deployment.id):
            self._apply_command(command.kind, dict(command.args), command.who, quiet=True)
            self.controls.last_id = command.id
        background = [
            asyncio.create_task(self._poll_commands()),
            asyncio.create_task(self._heartbeat()),
        ]
        try:
            if any(e.kind == "deployment" for e in entries):
                self.record("resume", "info", after_seq=self.progress.last_seq)
            else:
                self.record("deployment", "begin", environment=self.plan.environment)
            if (
                self._state is not DeploymentState.RUNNING
                and not self.progress.rollback_started
                and not self.controls.paused
            ):
                self.set_state(DeploymentState.RUNNING, "Resumed", "resumed")
            outcome = await self._run()
            self.set_state(outcome.state, outcome.reason, outcome.message)
            self.record("deployment", "end", state=outcome.state.value, reason=outcome.reason)
            return outcome
        except FencedError as exc:
            return Outcome(DeploymentState.FAILED, "LeaseLost", exc.message)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _run(self) -> Outcome:
        if self.progress.rollback_started:
            return await self._rollback(self.progress.rollback_scope or None, resumed=True)
        if self.controls.rollback:
            return await self._rollback(None)
        if "before_deployment" not in self.progress.deployment_hooks_done:
            try:
                await self._hook("before_deployment", None)
            except RollwaveError as exc:
                return Outcome(DeploymentState.FAILED, "HookFailed", exc.message)
        failed_expand = await self._migration("expand")
        if failed_expand is not None:
            return failed_expand
        outcome = await self._run_services()
        if outcome.state is not DeploymentState.SUCCEEDED:
            return outcome
        failed_contract = await self._migration("contract")
        if failed_contract is not None:
            return failed_contract
        try:
            await self._hook("after_deployment", None)
        except RollwaveError as exc:
            return Outcome(DeploymentState.FAILED, "HookFailed", exc.message)
        return outcome

    async def _run_services(self) -> Outcome:
        order = self.plan.order
        stages: dict[int, list[ServicePlan]] = {}
        for service in self.plan.services:
            stages.setdefault(service.stage, []).append(service)
        groups = (
            [stages[s] for s in sorted(stages)]
            if order == "parallel"
            else [[s] for s in self.plan.services]
        )
        for group in groups:
            results = await asyncio.gather(
                *(
                    self._run_service_guarded(s)
                    for s in group
                    if s.name not in self.progress.services_done
                )
            )
            if self.controls.aborted:
                return Outcome(DeploymentState.ABORTED, "Aborted", "aborted by an operator")
            if self._lease_lost:
                raise FencedError(self._lease_lost)
            if self.controls.rollback and self._failure is None:
                return await self._rollback(None)
            failed = [name for name, ok in results if not ok]
            if failed:
                outcome = await self._on_failure(failed)
                if outcome is not None:
                    return outcome
        if self.controls.rollback:
            return await self._rollback(None)
        return Outcome(
            DeploymentState.SUCCEEDED,
            "Completed",
            "every service is on its new version",
        )

    async def _on_failure(self, failed: list[str]) -> Outcome | None:
        """Apply the failure policy; None means the operator resumed and we go on."""
        policy = self.config.spec.strategy.failure
        reason, message = self._failure or ("Failed", f"service {', '.join(failed)} failed")
        if self.controls.rollback or policy.action == "rollback":
            scope = None if policy.scope == "deployment" else failed
            return await self._rollback(scope, reason=reason, message=message)
        if policy.action == "abort":
            return Outcome(DeploymentState.FAILED, reason, message)
        # pause: wait for an operator to resume, roll back or abort
        self.set_state(DeploymentState.PAUSED, reason, message + " — waiting for an operator")
        self.controls.paused = True
        while self.controls.paused and not self.controls.aborted and not self.controls.rollback:
            await self._wait_controls()
        if self.controls.aborted:
            return Outcome(DeploymentState.ABORTED, "Aborted", "aborted by an operator")
        if self.controls.rollback:
            return await self._rollback(None, reason=reason, message=message)
        if self._state is not DeploymentState.RUNNING:
            self.set_state(DeploymentState.RUNNING, "Resumed", "resumed by an operator")
        self._failure = None
        # Go on with the failed services from where they stopped.
        for name in failed:
            ok = (await self._run_service_guarded(self.plan.service(name)))[1]
            if not ok:
                return await self._on_failure([name])
        return None

    # ------------------------------------------------------------ services

    async def _run_service_guarded(self, service: ServicePlan) -> tuple[str, bool]:
        try:
            return service.name, await self._run_service(service)
        except _Stop:
            return service.name, False

    async def _run_service(self, service: ServicePlan) -> bool:
        self.record("service", "begin", service=service.name, version=service.version)
        budget = _Budget(self.config.spec.strategy.failure.tolerate)
        budget.failed = sum(1 for (s, _t) in self.progress.targets_failed if s == service.name)
        for wave in service.waves:
            key = (service.name, wave.number)
            if key not in self.progress.waves_done and not await self._run_wave(
                service, wave, budget
            ):
                return False
            # A bake a crash interrupted is baked again, whole: its analysis needs fresh data.
            baking = wave.bake and key not in self.progress.bakes_done
            if baking and not await self._bake(service, wave):
                self.record(
                    "service",
                    "fail",
                    service=service.name,
                    wave=wave.number,
                    reason="AnalysisFailed",
                )
                return False
        self.record("service", "end", service=service.name, version=service.version)
        self.progress.services_done.add(service.name)
        return True

    async def _run_wave(self, service: ServicePlan, wave: Wave, budget: _Budget) -> bool:
        """Approval gate, hooks and the targets of one wave; False when the service failed."""
        if wave.approve and not self._approved(service.name, wave.number):
            await self._await_approval(service, wave)
        if not await self._wave_hook("before_wave", service, wave):
            return False
        self.record(
            "wave", "begin", service=service.name, wave=wave.number, targets=list(wave.targets)
        )
        for segment in wave.segments():
            if not await self._run_segment(service, wave, segment, budget):
                self.record(
                    "service",
                    "fail",
                    service=service.name,
                    wave=wave.number,
                    reason=(self._failure or ("Failed", ""))[0],
                )
                return False
        self.record("wave", "end", service=service.name, wave=wave.number)
        self.progress.waves_done.add((service.name, wave.number))
        return await self._wave_hook("after_wave", service, wave)

    async def _wave_hook(self, name: str, service: ServicePlan, wave: Wave) -> bool:
        try:
            await self._hook(name, service, wave=wave)
        except RollwaveError as exc:
            self._fail_once("HookFailed", exc.message)
            self.record(
                "service", "fail", service=service.name, wave=wave.number, reason="HookFailed"
            )
            return False
        return True

    async def _run_segment(
        self, service: ServicePlan, wave: Wave, segment: Sequence[str], budget: _Budget
    ) -> bool:
        """Replace ``segment``'s targets with a sliding window of ``max_unavailable`` workers."""
        queue = [t for t in segment if (service.name, t) not in self.progress.targets_done]
        queue = [t for t in queue if (service.name, t) not in self.progress.targets_failed]
        stop = asyncio.Event()
        deadline = self.config.spec.strategy.progress_deadline
        last_progress = [self.clock.now()]

        async def worker() -> None:
            while queue and not stop.is_set():
                await self._gate(stop)
                if stop.is_set() or not queue:
                    return
                name = queue.pop(0)
                ok = await self._replace(service, self.config.inventory.target(name))
                if ok:
                    last_progress[0] = self.clock.now()
                else:
                    budget.failed += 1
                    budget.last = (
                        f"{name}: {self.progress.targets_failed.get((service.name, name), '')}"
                    )
                    if budget.exceeded:
                        stop.set()

        async def watchdog() -> None:
            while True:
                await self.clock.sleep(min(1.0, deadline))
                if self.controls.paused:
                    last_progress[0] = self.clock.now()  # time spent paused is not lost progress
                    continue
                if self.clock.now() - last_progress[0] >= deadline:
                    self._fail_once(
                        "ProgressDeadlineExceeded",
                        f"{service.name}: no target became healthy for {deadline:g}s (progress_deadline)",
                    )
                    stop.set()
                    return

        workers = [asyncio.create_task(worker()) for _ in range(max(1, wave.max_unavailable))]
        guard = asyncio.create_task(watchdog())
        stopper = asyncio.create_task(self._watch_stop(stop))
        try:
            crew: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*workers))
            done, _ = await asyncio.wait(
                [crew, guard],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if guard in done:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            guard.cancel()
            stopper.cancel()
            await asyncio.gather(guard, stopper, return_exceptions=True)
        for task in workers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                assert exc is not None
                raise exc
        if self.controls.aborted or self.controls.rollback or self._lease_lost:
            raise _Stop
        if budget.exceeded:
            self._fail_once(
                "BudgetExceeded",
                f"{service.name}: {budget.failed} target(s) failed, tolerate is {budget.tolerate}"
                + (f" — last: {budget.last}" if budget.last else ""),
            )
            return False
        return not stop.is_set()

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.controls.aborted or self.controls.rollback or self._lease_lost:
                stop.set()
                return
            await self._wait_controls()

    async def _gate(self, stop: asyncio.Event) -> None:
        """Block while an operator has paused the deployment; return at once when stopping."""
        while self.controls.paused and not stop.is_set():
            await self._wait_controls()

    # -------------------------------------------------------------- targets

    def _context(
        self, service: str, target: Target, version: str, previous: str | None
    ) -> dict[str, Any]:
        return target_context(
            self.config,
            service,
            target,
            version=version,
            previous_version=previous,
            release="",
        )

    async def _step(
        self,
        step: str,
        service: str,
        target: Target,
        action: Callable[[], Any],
        **data: Any,
    ) -> Any:
        self.record(step, "begin", service=service, target=target.name, **data)
        try:
            result = await action()
        except RollwaveError as exc:
            self.record(
                step, "fail", service=service, target=target.name, error=exc.message, **data
            )
            raise
        self.record(step, "end", service=service, target=target.name, **data)
        return result

    async def _replace(
        self, service: ServicePlan, target: Target, *, rollback: bool = False
    ) -> bool:
        """Drain, replace, prove healthy and enable one target. False when it failed."""
        name = service.name
        previous = service.previous.get(target.name)
        version = (previous or "") if rollback else service.version
        driver = self.adapters.drivers[name]
        traffic = self.adapters.traffic[name]
        spec = self.config.spec.services[name]
        drain_timeout = spec.traffic.drain if spec.traffic else 0.0
        tag: dict[str, Any] = {"version": version}
        if rollback:
            tag["rollback"] = True
        context = self._context(name, target, service.version, previous)
        try:
            if not rollback:
                await self._hook("before_target", service, target=target, context=context)
            await self._step("drain", name, target, lambda: traffic.drain(target), **tag)
            await self._step(
                "wait_drained",
                name,
                target,
                lambda: traffic.wait_drained(target, drain_timeout),
                **tag,
            )
            if rollback and not previous:
                await self._step("stop", name, target, lambda: driver.stop(target), **tag)
                self.record("target", "end", service=name, target=target.name, **tag, stopped=True)
                return True
            if not rollback and (name, target.name) not in self.progress.touched:
                self.progress.touched.append((name, target.name))
            await self._step("deploy", name, target, lambda: driver.deploy(target, version), **tag)
            await self._step("restart", name, target, lambda: driver.restart(target), **tag)
            await self._health(service, target, context, tag)
            if not rollback:
                await self._hook("verify", service, target=target, context=context)
            await self._step("enable", name, target, lambda: traffic.enable(target), **tag)
            if not rollback:
                await self._hook("after_target", service, target=target, context=context)
        except RollwaveError as exc:
            self.record(
                "target", "fail", service=name, target=target.name, reason=exc.message, **tag
            )
            if not rollback:
                self.progress.targets_failed[(name, target.name)] = exc.message
            return False
        self.record("target", "end", service=name, target=target.name, **tag)
        if rollback:
            self.progress.rolled_back.add((name, target.name))
        else:
            self.progress.targets_done[(name, target.name)] = version
        return True

    async def _health(
        self,
        service: ServicePlan,
        target: Target,
        context: Mapping[str, Any],
        tag: Mapping[str, Any],
    ) -> None:
        from rollwave.errors import HealthError

        prober = self.adapters.probers[service.name]
        health = self.config.spec.services[service.name].health
        self.record("health", "begin", service=service.name, target=target.name, **tag)
        if prober is None or health is None:
            self.record(
                "health",
                "end",
                service=service.name,
                target=target.name,
                note="no health check configured",
                **tag,
            )
            return
        verdict = await wait_healthy(
            prober,
            target,
            context,
            successes=health.successes,
            min_healthy=health.min_healthy,
            deadline=health.deadline,
            interval=health.interval,
            clock=self.clock,
        )
        if verdict.status.value != "healthy":
            self.record(
                "health",
                "fail",
                service=service.name,
                target=target.name,
                reason=verdict.reason,
                error=verdict.message,
                **tag,
            )
            raise HealthError(target.name, verdict.message)
        self.record(
            "health",
            "end",
            service=service.name,
            target=target.name,
            message=verdict.message,
            **tag,
        )

    # ---------------------------------------------------------------- hooks

    async def _hook(
        self,
        name: str,
        service: ServicePlan | None,
        *,
        target: Target | None = None,
        wave: Wave | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Run one lifecycle hook, if configured; a failing hook raises TargetError."""
        hooks = self.config.spec.hooks
        hook: HookSpec | None = getattr(hooks, name) if hooks is not None else None
        if hook is None:
            return
        values: dict[str, Any] = dict(context or {})
        values.setdefault("environment", self.plan.environment)
        values.setdefault("deployment_id", self.deployment.id)
        if service is not None:
            values.setdefault("service", service.name)
            values.setdefault("version", service.version)
            values.setdefault("previous_version", "")
        if wave is not None:
            values["wave"] = wave.number
            values["targets"] = ",".join(wave.targets)
        argv = render_argv(hook.run, values)
        on = target if hook.on == "target" else None
        result = await self._command(
            f"hook:{name}",
            argv,
            timeout=hook.timeout,
            service=service.name if service else "",
            target=on,
            where_target=target.name if target else "",
        )
        if not result.ok:
            from rollwave.errors import TargetError

            said = (result.stderr or result.stdout).strip()[-200:]
            raise TargetError(
                target.name if target else (service.name if service else self.plan.environment),
                f"{name} hook failed with exit {result.exit_code}" + (f": {said}" if said else ""),
            )

    async def _command(
        self,
        kind: str,
        argv: Sequence[str],
        *,
        timeout: float,
        service: str = "",
        target: Target | None = None,
        where_target: str = "",
    ) -> CommandResult:
        """Run argv here, or on ``target`` through ``service``'s driver; journal it with its output."""
        from rollwave.engine.local_run import run_argv

        where = {"service": service, "target": where_target or (target.name if target else "")}
        self.record(kind, "begin", argv=list(argv), **where)
        try:
            if target is not None:
                driver = self.adapters.drivers[service or self._driver_for(target)]
                result = await driver.run(target, argv, timeout=timeout)
            else:
                result = await run_argv(
                    argv, timeout=timeout, clock=self.clock, cwd=self.config.base_dir
                )
        except RollwaveError as exc:
            self.record(kind, "fail", error=exc.message, **where)
            raise
        output: dict[str, Any] = {
            "exit_code": result.exit_code,
            "stdout": result.stdout[-OUTPUT_LIMIT:],
            "stderr": result.stderr[-OUTPUT_LIMIT:],
            "duration_s": round(result.duration, 3),
        }
        self.record(kind, "end" if result.ok else "fail", **where, **output)
        return result

    def _driver_for(self, target: Target) -> str:
        """The service whose driver reaches ``target``: one it belongs to, else the first."""
        for name, targets in self.config.targets.items():
            if any(t.name == target.name for t in targets):
                return name
        return next(iter(self.config.spec.services))

    # ----------------------------------------------------------- migrations

    async def _migration(self, name: str) -> Outcome | None:
        """Run expand or contract once; an Outcome when it failed (or was interrupted before)."""
        migrations = self.config.spec.migrations
        step = getattr(migrations, name) if migrations is not None else None
        done = self.progress.expand_done if name == "expand" else self.progress.contract_done
        if step is None or done:
            return None
        reason = f"{name.capitalize()}Failed"
        started = (
            self.progress.expand_started if name == "expand" else self.progress.contract_started
        )
        if started:
            return Outcome(
                DeploymentState.FAILED,
                f"{name.capitalize()}Interrupted",
                f"the {name} migration was interrupted by a crash and is never run twice: check its "
                f"effect by hand (`rollwave show {self.deployment.id}`), then start a new deployment",
            )
        if name == "contract" and step.after:
            self.record("bake", "begin", wave=0, seconds=step.after, before="contract")
            await self.clock.sleep(step.after)
            self.record("bake", "end", wave=0, before="contract")
        argv = render_argv(
            step.run, {"environment": self.plan.environment, "deployment_id": self.deployment.id}
        )
        target = None
        if step.on is not None:
            from rollwave.inventory import select

            target = select(self.config.inventory, step.on)[0]
        try:
            result = await self._command(name, argv, timeout=step.timeout, target=target)
        except RollwaveError as exc:
            return Outcome(
                DeploymentState.FAILED, reason, f"the {name} migration failed: {exc.message}"
            )
        if not result.ok:
            said = (result.stderr or result.stdout).strip()[-200:]
            return Outcome(
                DeploymentState.FAILED,
                reason,
                f"the {name} migration failed with exit {result.exit_code}"
                + (f": {said}" if said else ""),
            )
        return None

    # ------------------------------------------------------- bake, approval

    async def _bake(self, service: ServicePlan, wave: Wave) -> bool:
        """Observe for ``wave.bake`` seconds, judging metrics each interval; False when analysis failed."""
        # Set up first (importing the judges alone takes a second): the bake and its
        # intervals are counted from `bake begin`, not from whenever set-up ended.
        analysis = self._analysis(service, wave)
        interval = self.config.spec.analysis.interval if self.config.spec.analysis else wave.bake
        try:
            self.record("bake", "begin", service=service.name, wave=wave.number, seconds=wave.bake)
            began = self.clock.now()
            if analysis is not None:
                self.record(
                    "analysis", "begin", service=service.name, wave=wave.number, interval=interval
                )
                self._journal_measurements(service, wave, await analysis.start())
            until = began + wave.bake
            tick = began + interval
            while self.clock.now() < until or self.controls.paused:
                if self.controls.aborted or self.controls.rollback or self._lease_lost:
                    raise _Stop
                if self.controls.paused:
                    await self._wait_controls()  # a paused bake holds the next wave back
                    continue
                if analysis is not None and self.clock.now() >= tick:
                    self._journal_measurements(service, wave, await analysis.step())
                    if not self._judge(analysis, service, wave):
                        return False
                    tick += interval
                    late = self.clock.now() - tick
                    if late >= 0 and interval > 0:
                        # The step overran the next tick (a slow source): skip the ticks it
                        # missed rather than measure near-empty windows back to back.
                        tick += (late // interval + 1) * interval
                wake = min(until, tick) if analysis is not None else until
                await self.clock.sleep(max(0.0, min(self.poll_interval, wake - self.clock.now())))
            if analysis is not None:
                self._journal_measurements(service, wave, analysis.finish())
                if not self._judge(analysis, service, wave):
                    return False
                self.record("analysis", "end", service=service.name, wave=wave.number)
        finally:
            if analysis is not None:
                await analysis.close()
        self.record("bake", "end", service=service.name, wave=wave.number)
        self.progress.bakes_done.add((service.name, wave.number))
        return True

    def _analysis(self, service: ServicePlan, wave: Wave) -> Any:
        spec = self.config.spec.analysis
        if spec is None or (not spec.checks and spec.canary is None):
            return None
        from rollwave.analysis.run import BakeAnalysis
        from rollwave.spec.templates import render

        previous = [v for v in service.previous.values() if v]
        context = {
            "environment": self.plan.environment,
            "service": service.name,
            "version": service.version,
            "previous_version": max(set(previous), key=previous.count) if previous else "",
            "targets": list(wave.targets),
        }
        targets = self.config.targets[service.name]

        def urls_for(template: str) -> dict[str, str]:
            return {
                t.name: render(template, target_context(self.config, service.name, t))
                for t in targets
            }

        return BakeAnalysis(spec, context=context, urls_for=urls_for, clock=self.clock)

    def _journal_measurements(self, service: ServicePlan, wave: Wave, measurements: Any) -> None:
        for measurement in measurements:
            self.record(
                "measurement",
                "info",
                service=service.name,
                wave=wave.number,
                **measurement.to_data(),
            )

    def _judge(self, analysis: Any, service: ServicePlan, wave: Wave) -> bool:
        """False (and the failure recorded) when the analysis failed; a pause request pauses."""
        if analysis.failed is not None:
            message = f"{service.name} wave {wave.number}: {analysis.failed.message}"
            self.record(
                "analysis",
                "fail",
                service=service.name,
                wave=wave.number,
                reason="AnalysisFailed",
                message=message,
            )
            self._fail_once("AnalysisFailed", message)
            return False
        if analysis.paused is not None and not self.controls.paused:
            self.controls.paused = True
            self.set_state(
                DeploymentState.PAUSED,
                "AnalysisInconclusive",
                f"{service.name} wave {wave.number}: {analysis.paused.message} — `rollwave resume` to go on",
            )
            analysis.paused = None
        return True

    def _approved(self, service: str, wave: int) -> bool:
        return (service, wave) in self.progress.approvals or (
            (service, wave) in self.controls.approvals or wave in self.controls.any_approvals
        )

    async def _await_approval(self, service: ServicePlan, wave: Wave) -> None:
        strategy = self.config.spec.strategy
        self.record("approval", "begin", service=service.name, wave=wave.number)
        self.set_state(
            DeploymentState.PAUSED,
            "AwaitingApproval",
            f"{service.name} wave {wave.number} waits for `rollwave approve {self.deployment.id} --wave {wave.number}`",
        )
        started = self.clock.now()
        while not self._approved(service.name, wave.number):
            if self.controls.aborted or self.controls.rollback or self._lease_lost:
                raise _Stop
            timeout = strategy.approval_timeout
            if timeout is not None and self.clock.now() - started >= timeout:
                self.record(
                    "approval",
                    "fail",
                    service=service.name,
                    wave=wave.number,
                    reason="ApprovalTimeout",
                )
                if strategy.approval_timeout_action == "pause":
                    self.controls.paused = True
                    started = self.clock.now() + 10**9  # wait for an operator from now on
                    continue
                self._fail_once(
                    "ApprovalTimeout",
                    f"{service.name} wave {wave.number} was not approved within {timeout:g}s",
                )
                raise _Stop
            await self._wait_controls()
        who = self._approver.get((service.name, wave.number), "")
        self.record("approval", "end", service=service.name, wave=wave.number, who=who)
        self.progress.approvals.add((service.name, wave.number))
        self.set_state(DeploymentState.RUNNING, "Approved", f"wave {wave.number} approved by {who}")

    # ------------------------------------------------------------- rollback

    async def _rollback(
        self,
        scope: list[str] | None,
        *,
        reason: str = "RollbackRequested",
        message: str = "rollback requested by an operator",
        resumed: bool = False,
    ) -> Outcome:
        """Replace every touched target (of ``scope``), newest first, by its previous release."""
        if not resumed:
            self.set_state(DeploymentState.ROLLING_BACK, reason, message)
            self.record("rollback", "begin", services=scope or [], reason=reason, message=message)
        touched = [
            key
            for key in self.progress.touched
            if (scope is None or key[0] in scope) and key not in self.progress.rolled_back
        ]
        failures = []
        # Newest first; the same capacity bound as the forward run.
        for service_name in _unique(reversed([s for s, _ in touched])):
            service = self.plan.service(service_name)
            names = [t for s, t in reversed(touched) if s == service_name]
            bound = max(1, service.bound)
            gate = asyncio.Semaphore(bound)

            async def one(
                name: str, service: ServicePlan = service, gate: asyncio.Semaphore = gate
            ) -> None:
                async with gate:
                    ok = await self._replace(
                        service, self.config.inventory.target(name), rollback=True
                    )
                    if not ok:
                        failures.append(f"{service.name}/{name}")

            await asyncio.gather(*(one(n) for n in names))
        if failures:
            self.record("rollback", "fail", failed=failures)
            return Outcome(
                DeploymentState.FAILED,
                "RollbackFailed",
                f"{message}; rollback failed on {', '.join(failures)}",
            )
        self.record("rollback", "end")
        return Outcome(DeploymentState.ROLLED_BACK, reason, f"{message}; rolled back")

    # ------------------------------------------------------------- controls

    def _fail_once(self, reason: str, message: str) -> None:
        if self._failure is None:
            self._failure = (reason, message)

    def _apply_command(
        self, kind: str, args: dict[str, Any], who: str, *, quiet: bool = False
    ) -> None:
        if not quiet:
            self.record("command", "info", command=kind, who=who, **args)
        if kind == "pause":
            self.controls.paused = True
            if not quiet and self._state is DeploymentState.RUNNING:
                self.set_state(DeploymentState.PAUSED, "Paused", f"paused by {who}")
        elif kind == "resume":
            self.controls.paused = False
            if not quiet and self._state is DeploymentState.PAUSED and self._reason == "Paused":
                self.set_state(DeploymentState.RUNNING, "Resumed", f"resumed by {who}")
        elif kind == "abort":
            self.controls.aborted = True
        elif kind == "rollback":
            self.controls.rollback = True
        elif kind == "approve":
            wave = int(args.get("wave", 0))
            service = args.get("service")
            if service:
                self.controls.approvals.add((str(service), wave))
                self._approver[(str(service), wave)] = who
            else:
                self.controls.any_approvals.add(wave)
                for s in self.plan.services:
                    self._approver.setdefault((s.name, wave), who)
        self.controls.changed.set()

    async def _poll_commands(self) -> None:
        while True:
            await self.clock.sleep(self.poll_interval)
            try:
                commands = self.store.commands(self.deployment.id, self.controls.last_id)
            except RollwaveError:
                continue
            for command in commands:
                self.controls.last_id = command.id
                self._apply_command(command.kind, dict(command.args), command.who)

    async def _wait_controls(self) -> None:
        self.controls.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.controls.changed.wait(), timeout=self.poll_interval * 2)

    async def _heartbeat(self) -> None:
        while True:
            await self.clock.sleep(self.lock_ttl / 3)
            try:
                self.lease = self.store.renew_lock(self.lease, self.lock_ttl, self.clock.now())
            except FencedError as exc:
                self._lease_lost = exc.message
                self.controls.changed.set()
                return
            except RollwaveError:
                continue


@dataclass
class _Budget:
    tolerate: int
    failed: int = 0
    last: str = ""

    @property
    def exceeded(self) -> bool:
        return self.failed > self.tolerate


def _unique(items: Any) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
