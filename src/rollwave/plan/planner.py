"""The planner: ``plan(spec, targets, observed) -> Plan``. Pure and deterministic.

Given the validated spec, the targets of each service (from the inventory)
and the version each target runs now, it decides the order of services, the
waves of each and the targets of every wave, and proves the capacity bound.
The same input always gives byte-identical JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rollwave.inventory.model import Target
from rollwave.plan.waves import kept_waves, max_unavailable
from rollwave.spec.model import Spec

__all__ = ["Plan", "ServicePlan", "Wave", "plan", "stages"]


@dataclass(frozen=True)
class Wave:
    """One wave: its targets in replacement order, grouped by failure domain."""

    number: int  # 1-based, in the order the waves run
    targets: tuple[str, ...]
    max_unavailable: int
    done_after: int  # cumulative targets of the service on the new version after this wave
    approve: bool  # an operator must approve before this wave starts
    bake: float  # seconds observed after this wave
    domains: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (domain, targets), in order

    def segments(self) -> tuple[tuple[str, ...], ...]:
        """The groups of targets the executor runs one after another (one per failure domain)."""
        return tuple(t for _, t in self.domains) if self.domains else (self.targets,)


@dataclass(frozen=True)
class ServicePlan:
    name: str
    version: str
    stage: int
    depends_on: tuple[str, ...]
    total: int  # all targets of the service, skipped ones included
    bound: int  # the service's max_unavailable
    skipped: tuple[str, ...]
    previous: Mapping[str, str | None] = field(
        compare=False, hash=False
    )  # target -> version before
    waves: tuple[Wave, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for wave in self.waves for t in wave.targets)


@dataclass(frozen=True)
class Plan:
    environment: str
    order: str
    services: tuple[ServicePlan, ...]

    def service(self, name: str) -> ServicePlan:
        return next(s for s in self.services if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "order": self.order,
            "services": [
                {
                    "name": s.name,
                    "version": s.version,
                    "stage": s.stage,
                    "depends_on": list(s.depends_on),
                    "total": s.total,
                    "max_unavailable": s.bound,
                    "skipped": list(s.skipped),
                    "previous": {t: s.previous[t] for t in s.targets},
                    "waves": [
                        {
                            "number": w.number,
                            "targets": list(w.targets),
                            "max_unavailable": w.max_unavailable,
                            "min_available": s.total - w.max_unavailable,
                            "done_after": w.done_after,
                            "approve": w.approve,
                            "bake_s": w.bake,
                            **(
                                {"domains": [{"name": d, "targets": list(t)} for d, t in w.domains]}
                                if w.domains
                                else {}
                            ),
                        }
                        for w in s.waves
                    ],
                }
                for s in self.services
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Rebuild a plan from its JSON form (the store keeps plans as JSON)."""
        services = []
        for s in data["services"]:
            waves = tuple(
                Wave(
                    number=w["number"],
                    targets=tuple(w["targets"]),
                    max_unavailable=w["max_unavailable"],
                    done_after=w["done_after"],
                    approve=w["approve"],
                    bake=w["bake_s"],
                    domains=tuple((d["name"], tuple(d["targets"])) for d in w.get("domains", [])),
                )
                for w in s["waves"]
            )
            services.append(
                ServicePlan(
                    name=s["name"],
                    version=s["version"],
                    stage=s["stage"],
                    depends_on=tuple(s["depends_on"]),
                    total=s["total"],
                    bound=s["max_unavailable"],
                    skipped=tuple(s["skipped"]),
                    previous=dict(s["previous"]),
                    waves=waves,
                )
            )
        return cls(environment=data["environment"], order=data["order"], services=tuple(services))


def stages(spec: Spec) -> dict[str, int]:
    """0 for a service with no dependencies, else 1 + the highest stage of its dependencies."""
    result: dict[str, int] = {}

    def stage_of(name: str, trail: tuple[str, ...]) -> int:
        if name in result:
            return result[name]
        if name in trail:  # the loader rejects cycles; guard anyway
            raise ValueError("dependency cycle: " + " -> ".join((*trail, name)))
        deps = spec.services[name].depends_on
        value = 1 + max((stage_of(d, (*trail, name)) for d in deps), default=-1)
        result[name] = value
        return value

    for name in spec.services:
        stage_of(name, ())
    return result


def plan(
    spec: Spec,
    targets: Mapping[str, Sequence[Target]],
    observed: Mapping[str, Mapping[str, str | None]],
) -> Plan:
    """Plan a deployment of ``spec``.

    ``targets`` maps each service to its targets in inventory order;
    ``observed`` maps each service to ``{target name: version running now}``
    (a missing target counts as empty). Targets already at the wanted
    version are skipped; waves are cut from the others.
    """
    stage_by_name = stages(spec)
    ordered = sorted(spec.services, key=lambda n: (stage_by_name[n], n))
    strategy = spec.strategy
    services = []
    for name in ordered:
        service = spec.services[name]
        service_targets = list(targets[name])
        seen = observed.get(name, {})
        total = len(service_targets)
        skipped = tuple(t.name for t in service_targets if seen.get(t.name) == service.version)
        pending = [t for t in service_targets if seen.get(t.name) != service.version]
        pending = _spread(pending, strategy.spread_by)
        bound = max_unavailable(strategy.max_unavailable, total)
        waves = []
        start = 0
        previous_index = -1
        # Waves are checkpoints over all N targets (DESIGN.md): targets already at the
        # version count as done first, so a re-apply keeps the spec's arithmetic.
        number = 0
        for spec_index, done in kept_waves(strategy.waves, total):
            end = done - len(skipped)
            if end <= start:
                continue  # already reached by skipped targets; its gate moves to the next wave
            chunk = pending[start:end]
            number += 1
            gates = range(previous_index + 2, spec_index + 2)  # 1-based spec wave numbers covered
            waves.append(
                Wave(
                    number=number,
                    targets=tuple(t.name for t in chunk),
                    max_unavailable=min(bound, len(chunk)),
                    done_after=done,
                    approve=any(g in strategy.approve_before for g in gates),
                    bake=strategy.bake if end < len(pending) else 0.0,
                    domains=_domains(chunk, strategy.spread_by),
                )
            )
            start = end
            previous_index = spec_index
        services.append(
            ServicePlan(
                name=name,
                version=service.version,
                stage=stage_by_name[name],
                depends_on=tuple(sorted(service.depends_on)),
                total=total,
                bound=bound,
                skipped=skipped,
                previous={t.name: seen.get(t.name) for t in pending},
                waves=tuple(waves),
            )
        )
    return Plan(environment=spec.environment, order=strategy.order, services=tuple(services))


def _domain(target: Target, spread_by: str | None) -> str:
    return "" if spread_by is None else str(target.vars.get(spread_by, ""))


def _spread(targets: list[Target], spread_by: str | None) -> list[Target]:
    """Targets grouped failure domain by failure domain (domains by name), inventory order inside."""
    if spread_by is None:
        return targets
    return sorted(targets, key=lambda t: _domain(t, spread_by))  # sorted() is stable


def _domains(
    chunk: Sequence[Target], spread_by: str | None
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if spread_by is None:
        return ()
    groups: list[tuple[str, list[str]]] = []
    for target in chunk:
        domain = _domain(target, spread_by)
        if not groups or groups[-1][0] != domain:
            groups.append((domain, []))
        groups[-1][1].append(target.name)
    return tuple((d, tuple(names)) for d, names in groups)
