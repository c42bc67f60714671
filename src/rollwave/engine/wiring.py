"""Build the adapters (drivers, traffic managers, probers) a spec asks for.

The only place that knows which class serves which ``kind``; the executor
sees Protocols only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from rollwave.engine.ports import Clock, CommandResult, Driver, Prober, TrafficManager
from rollwave.errors import InputError
from rollwave.inventory.model import Target
from rollwave.spec.load import Config
from rollwave.spec.model import LocalDriverSpec, SSHDriverSpec

__all__ = ["build_driver", "build_prober", "build_traffic", "target_context"]


def target_context(
    config: Config,
    service: str,
    target: Target,
    *,
    version: str | None = None,
    previous_version: str | None = None,
    release: str = "",
) -> dict[str, Any]:
    """The ``{placeholder}`` values for one target (DESIGN.md lists them)."""
    spec = config.spec.services[service]
    context: dict[str, Any] = dict(target.vars)
    context.update(
        name=target.name,
        address=target.address,
        service=service,
        version=version if version is not None else spec.version,
        previous_version=previous_version or "",
        release=release,
        environment=config.spec.environment,
    )
    return context


def build_driver(config: Config, service: str, clock: Clock) -> Driver:
    spec = config.spec.services[service].driver
    if isinstance(spec, LocalDriverSpec):
        from rollwave.drivers.local import LocalDriver

        return LocalDriver(
            service=service,
            artifact=spec.artifact,
            root=spec.root,
            start=list(spec.start),
            keep=spec.keep,
            base_dir=config.base_dir,
            env=dict(spec.env),
            stop_grace=spec.stop_grace,
            clock=clock,
        )
    if isinstance(spec, SSHDriverSpec):
        from rollwave.drivers.ssh import SSHDriver

        return SSHDriver(service=service, spec=spec, base_dir=config.base_dir, clock=clock)
    raise InputError(f"services.{service}.driver.kind: unknown driver")  # pragma: no cover


def build_traffic(config: Config, service: str, clock: Clock) -> TrafficManager:
    traffic = config.spec.services[service].traffic

    def context_for(target: Target) -> Mapping[str, Any]:
        return target_context(config, service, target)

    if traffic is None or (traffic.haproxy is None and traffic.command is None):
        from rollwave.traffic.none import NoTraffic

        return NoTraffic()
    if traffic.haproxy is not None:
        from rollwave.traffic.haproxy import HAProxyTraffic

        socket = traffic.haproxy.socket
        if socket is not None:
            socket = str(config.resolve(socket))
        return HAProxyTraffic(
            socket=socket,
            address=traffic.haproxy.address,
            backend=traffic.haproxy.backend,
            server=traffic.haproxy.server,
            drain_timeout=traffic.drain,
            clock=clock,
            context_for=context_for,
            wait_up=traffic.haproxy.wait_up,
        )
    from rollwave.traffic.command import CommandTraffic

    assert traffic.command is not None
    return CommandTraffic(
        drain=traffic.command.drain,
        enable=traffic.command.enable,
        state=traffic.command.state,
        context_for=context_for,
        timeout=traffic.command.timeout,
        clock=clock,
    )


def build_prober(config: Config, service: str, driver: Driver) -> Prober | None:
    health = config.spec.services[service].health
    if health is None:
        return None
    from rollwave.health.probes import CommandProber, HttpProber, TcpProber

    if health.http is not None:
        return HttpProber(
            health.http,
            expect_status=health.expect_status,
            body_contains=health.body_contains,
            timeout=health.timeout,
        )
    if health.tcp is not None:
        host, _, port = health.tcp.rpartition(":")
        return TcpProber(host, port, timeout=health.timeout)
    assert health.command is not None
    runner: Any = driver if health.on == "target" else LocalRunner(config)
    return CommandProber(list(health.command), runner, timeout=health.timeout)


class LocalRunner:
    """Runs an argv on the controller for a target (a health command with ``on: controller``)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def run(
        self,
        target: Target,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        from rollwave.engine.clock import SystemClock
        from rollwave.engine.local_run import run_argv

        merged = {**os.environ, **(env or {})}
        return await run_argv(
            argv, timeout=timeout, clock=SystemClock(), env=merged, cwd=self.config.base_dir
        )
