"""rollwave.plan.planner: service order, waves, gates, capacity proof and the plan's JSON form."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rollwave.inventory.model import Target
from rollwave.plan.planner import Plan, ServicePlan, plan, stages
from rollwave.plan.waves import cumulative_counts, kept_waves
from rollwave.spec.model import Spec
from rollwave.spec.units import Count, Percent

LOCAL = {"kind": "local", "artifact": "a", "root": "r/{name}", "start": ["x"]}

Observed = dict[str, dict[str, str | None]]


def make_spec(
    services: Mapping[str, Sequence[str]],
    version: str = "2.0",
    environment: str = "prod",
    **strategy: Any,
) -> Spec:
    """A spec whose services (name -> depends_on) all use the local driver."""
    return Spec.model_validate(
        {
            "environment": environment,
            "inventory": "inventory.yaml",
            "services": {
                name: {
                    "hosts": name,
                    "version": version,
                    "driver": LOCAL,
                    "depends_on": list(deps),
                }
                for name, deps in services.items()
            },
            "strategy": strategy,
        }
    )


def fleet(service: str, count: int, zones: Sequence[str] = ()) -> list[Target]:
    """``count`` targets named ``service-1`` ..., with zones assigned round-robin when given."""
    return [
        Target(
            name=f"{service}-{i}",
            address=f"10.0.0.{i}",
            groups=(service,),
            vars={"zone": zones[(i - 1) % len(zones)]} if zones else {},
        )
        for i in range(1, count + 1)
    ]


def names(service: ServicePlan) -> list[list[str]]:
    return [list(wave.targets) for wave in service.waves]


# --------------------------------------------------------------------------- stages and order


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        pytest.param({"api": []}, {"api": 0}, id="single"),
        pytest.param({"api": [], "web": []}, {"api": 0, "web": 0}, id="independent"),
        pytest.param({"web": ["api"], "api": []}, {"api": 0, "web": 1}, id="chain"),
        pytest.param(
            {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"], "e": []},
            {"a": 0, "b": 1, "c": 2, "d": 3, "e": 0},
            id="highest-dependency-wins",
        ),
        pytest.param(
            {"db": [], "cache": [], "api": ["db", "cache"], "web": ["api"], "admin": ["db"]},
            {"db": 0, "cache": 0, "api": 1, "web": 2, "admin": 1},
            id="diamond",
        ),
    ],
)
def test_stages(services: dict[str, list[str]], expected: dict[str, int]) -> None:
    """A service's stage is 0 without dependencies, else 1 + the highest stage among them."""
    assert stages(make_spec(services)) == expected


def test_stages_reject_a_cycle() -> None:
    """A dependency cycle (which the loader rejects first) raises rather than recursing forever."""
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        stages(make_spec({"a": ["b"], "b": ["a"]}))


@pytest.mark.parametrize("order", ["staged", "parallel"])
def test_services_run_by_stage_then_name(order: str) -> None:
    """Both orders list services by (stage, name), and the plan records which order runs them."""
    services = {"zeta": [], "alpha": ["zeta"], "beta": [], "omega": ["alpha", "beta"]}
    spec = make_spec(services, order=order)
    result = plan(spec, {n: fleet(n, 2) for n in services}, {})
    assert [(s.name, s.stage) for s in result.services] == [
        ("beta", 0),
        ("zeta", 0),
        ("alpha", 1),
        ("omega", 2),
    ]
    assert result.order == order
    assert result.service("omega").depends_on == ("alpha", "beta")


# --------------------------------------------------------------------------- skipped targets


def test_targets_at_the_version_are_skipped() -> None:
    """Targets already at the version are listed in ``skipped`` and appear in no wave."""
    spec = make_spec({"api": []}, waves=[1, "50%", "100%"])
    observed: Observed = {"api": {"api-1": "2.0", "api-2": "1.0", "api-4": "2.0", "api-5": None}}
    service = plan(spec, {"api": fleet("api", 6)}, observed).service("api")
    assert service.skipped == ("api-1", "api-4")
    # Waves are checkpoints over all 6 (1, 3, 6); the 2 skipped targets already cover the first.
    assert names(service) == [["api-2"], ["api-3", "api-5", "api-6"]]
    assert [w.done_after for w in service.waves] == [3, 6]
    assert service.total == 6
    assert dict(service.previous) == {"api-2": "1.0", "api-3": None, "api-5": None, "api-6": None}


def test_a_reapply_plans_no_waves() -> None:
    """When every target already runs the version, everything is skipped and no wave remains."""
    spec = make_spec({"api": []}, waves=[1, "100%"])
    observed: Observed = {"api": {t.name: "2.0" for t in fleet("api", 3)}}
    service = plan(spec, {"api": fleet("api", 3)}, observed).service("api")
    assert service.skipped == ("api-1", "api-2", "api-3")
    assert service.waves == ()


# --------------------------------------------------------------------------- waves, gates, bake


def test_design_example_twenty_targets() -> None:
    """N = 20 with [1, 10%, 50%, 100%] gives waves of 1, 1, 8 and 10, in inventory order."""
    spec = make_spec({"api": []}, waves=[1, "10%", "50%", "100%"], max_unavailable="10%")
    service = plan(spec, {"api": fleet("api", 20)}, {}).service("api")
    assert [len(w.targets) for w in service.waves] == [1, 1, 8, 10]
    assert [w.done_after for w in service.waves] == [1, 2, 10, 20]
    assert [w.max_unavailable for w in service.waves] == [1, 1, 2, 2]
    assert [w.number for w in service.waves] == [1, 2, 3, 4]
    assert service.bound == 2
    assert [t for w in service.waves for t in w.targets] == [f"api-{i}" for i in range(1, 21)]


@pytest.mark.parametrize(
    ("count", "approve_before", "approved"),
    [
        pytest.param(20, [2], [False, True, False, False], id="N20-gate-on-wave-2"),
        pytest.param(20, [1, 4], [True, False, False, True], id="N20-first-and-last"),
        pytest.param(5, [2], [False, True, False], id="N5-dropped-wave-2-gates-next-kept"),
        pytest.param(5, [3], [False, True, False], id="N5-spec-wave-3-is-kept-wave-2"),
        pytest.param(5, [4], [False, False, True], id="N5-spec-wave-4-is-kept-wave-3"),
        pytest.param(2, [2], [False, True], id="N2-gates-2-and-3-dropped-move-to-4"),
        pytest.param(2, [3], [False, True], id="N2-gate-3-dropped-moves-to-4"),
        pytest.param(1, [1], [True], id="N1-single-wave-gated"),
        pytest.param(20, [], [False, False, False, False], id="no-gates"),
    ],
)
def test_approval_gates(count: int, approve_before: list[int], approved: list[bool]) -> None:
    """An approval gate sits on its wave, or on the next kept wave when its wave adds nothing."""
    spec = make_spec({"api": []}, waves=[1, "10%", "50%", "100%"], approve_before=approve_before)
    service = plan(spec, {"api": fleet("api", count)}, {}).service("api")
    assert [w.approve for w in service.waves] == approved


def test_bake_only_between_waves() -> None:
    """Every wave but the last bakes for ``strategy.bake`` seconds; the last bakes for none."""
    spec = make_spec({"api": []}, waves=[1, "50%", "100%"], bake="2m")
    service = plan(spec, {"api": fleet("api", 10)}, {}).service("api")
    assert [w.bake for w in service.waves] == [120.0, 120.0, 0.0]


def test_single_wave_does_not_bake() -> None:
    """A service rolled in one wave has nothing to bake before."""
    spec = make_spec({"api": []}, waves=["100%"], bake="2m")
    service = plan(spec, {"api": fleet("api", 4)}, {}).service("api")
    assert [w.bake for w in service.waves] == [0.0]


# --------------------------------------------------------------------------- spread_by


def test_spread_by_groups_domains() -> None:
    """With spread_by, targets run domain by domain (domains by name), inventory order inside."""
    spec = make_spec({"api": []}, waves=[1, "50%", "100%"], spread_by="zone")
    targets = fleet("api", 7, zones=["b", "a", "c"])  # b a c b a c b
    service = plan(spec, {"api": targets}, {}).service("api")
    assert names(service) == [["api-2"], ["api-5", "api-1", "api-4"], ["api-7", "api-3", "api-6"]]
    assert [w.domains for w in service.waves] == [
        (("a", ("api-2",)),),
        (("a", ("api-5",)), ("b", ("api-1", "api-4"))),
        (("b", ("api-7",)), ("c", ("api-3", "api-6"))),
    ]
    assert service.waves[1].segments() == (("api-5",), ("api-1", "api-4"))


def test_without_spread_by_a_wave_is_one_segment() -> None:
    """Without spread_by a wave has no domains and the executor runs it as one segment."""
    spec = make_spec({"api": []}, waves=["100%"])
    wave = plan(spec, {"api": fleet("api", 3, zones=["a", "b"])}, {}).service("api").waves[0]
    assert wave.domains == ()
    assert wave.segments() == (("api-1", "api-2", "api-3"),)


# --------------------------------------------------------------------------- JSON


def test_json_round_trip() -> None:
    """``Plan.from_dict(json.loads(p.to_json()))`` rebuilds an equal plan, domains and all."""
    spec = make_spec(
        {"api": [], "web": ["api"]},
        waves=[1, "10%", "50%", "100%"],
        max_unavailable="25%",
        bake="30s",
        approve_before=[2],
        spread_by="zone",
    )
    targets = {"api": fleet("api", 9, zones=["a", "b"]), "web": fleet("web", 4, zones=["c"])}
    observed: Observed = {"api": {"api-3": "2.0", "api-4": "1.0"}}
    original = plan(spec, targets, observed)
    rebuilt = Plan.from_dict(json.loads(original.to_json()))
    assert rebuilt == original
    assert rebuilt.to_json() == original.to_json()
    assert dict(rebuilt.service("api").previous) == dict(original.service("api").previous)


def test_plan_json_shape() -> None:
    """``plan --json`` is one object with environment and services in run order, as DESIGN.md lists."""
    spec = make_spec(
        {"web": ["api"], "api": []},
        environment="staging",
        waves=[2, "100%"],
        max_unavailable=2,
        bake="1m",
        approve_before=[2],
    )
    targets = {"api": fleet("api", 4), "web": fleet("web", 1)}
    observed: Observed = {"api": {"api-2": "2.0", "api-3": "1.9"}}
    data = json.loads(plan(spec, targets, observed).to_json())
    assert data == {
        "environment": "staging",
        "order": "staged",
        "services": [
            {
                "name": "api",
                "version": "2.0",
                "stage": 0,
                "depends_on": [],
                "total": 4,
                "max_unavailable": 2,
                "skipped": ["api-2"],
                "previous": {"api-1": None, "api-3": "1.9", "api-4": None},
                "waves": [
                    {
                        "number": 1,
                        "targets": ["api-1"],
                        "max_unavailable": 1,
                        "min_available": 3,
                        "done_after": 2,
                        "approve": False,
                        "bake_s": 60.0,
                    },
                    {
                        "number": 2,
                        "targets": ["api-3", "api-4"],
                        "max_unavailable": 2,
                        "min_available": 2,
                        "done_after": 4,
                        "approve": True,
                        "bake_s": 0.0,
                    },
                ],
            },
            {
                "name": "web",
                "version": "2.0",
                "stage": 1,
                "depends_on": ["api"],
                "total": 1,
                "max_unavailable": 1,
                "skipped": [],
                "previous": {"web-1": None},
                "waves": [
                    {
                        "number": 1,
                        "targets": ["web-1"],
                        "max_unavailable": 1,
                        "min_available": 0,
                        "done_after": 1,
                        "approve": False,
                        "bake_s": 0.0,
                    },
                ],
            },
        ],
    }


# --------------------------------------------------------------------------- regression


def test_skipped_targets_never_make_valid_waves_decrease() -> None:
    """Waves valid for the whole fleet still plan when some targets already run the version."""
    spec = make_spec({"api": []}, waves=[5, "10%", "100%"])
    targets = fleet("api", 100)
    assert kept_waves(spec.strategy.waves, len(targets)) == [(0, 5), (1, 10), (2, 100)]
    observed: Observed = {"api": {t.name: "2.0" for t in targets[:60]}}
    service = plan(spec, {"api": targets}, observed).service("api")
    assert sum(len(w.targets) for w in service.waves) == 40


# --------------------------------------------------------------------------- properties


SERVICE_NAMES = ["api", "auth", "cache", "db", "queue", "web"]
VERSION = "2.0"


@dataclass(frozen=True)
class Case:
    """One random planner input, with what the properties need to check it."""

    spec: Spec
    targets: dict[str, list[Target]]
    observed: Observed
    pending: dict[str, list[str]]  # inventory order


def _quantity(value: Count | Percent) -> int | str:
    return value.value if isinstance(value, Count) else str(value)


@st.composite
def wave_lists(draw: st.DrawFn) -> list[Count | Percent]:
    """Waves the spec loader accepts: counts and percentages, each kind increasing, ending at 100%."""
    counts = sorted(draw(st.sets(st.integers(1, 600), max_size=3)))
    tenths = sorted(draw(st.sets(st.integers(1, 999), max_size=4)))  # 0.1% .. 99.9%
    percents = [Percent(t / 10) for t in tenths]
    kinds = draw(st.permutations([0] * len(counts) + [1] * len(percents)))
    count_iter, percent_iter = iter(counts), iter(percents)
    waves: list[Count | Percent] = [
        Count(next(count_iter)) if kind == 0 else next(percent_iter) for kind in kinds
    ]
    return [*waves, Percent(100.0)]


def _valid_for(waves: Sequence[Count | Percent], total: int) -> bool:
    try:
        kept_waves(waves, total)
    except ValueError:
        return False
    return True


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Random fleets: 1-4 services with acyclic dependencies, 1-500 targets each, random zones."""
    chosen = draw(
        st.lists(st.sampled_from(SERVICE_NAMES), min_size=1, max_size=4, unique=True)
    )  # the list order is a topological order; names keep sorting independent of it
    depends: dict[str, list[str]] = {}
    for index, name in enumerate(chosen):
        depends[name] = sorted(draw(st.sets(st.sampled_from(chosen[:index]))) if index else [])
    waves = draw(wave_lists())
    bound = draw(
        st.one_of(
            st.builds(Count, st.integers(1, 600)),
            st.builds(Percent, st.integers(1, 1000).map(lambda t: t / 10)),
        )
    )
    approve_before = sorted(draw(st.sets(st.integers(1, len(waves)))))
    spread_by = draw(st.sampled_from([None, "zone"]))
    order = draw(st.sampled_from(["staged", "parallel"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # bulk per-target choices

    targets: dict[str, list[Target]] = {}
    observed: Observed = {}
    pending: dict[str, list[str]] = {}
    for name in chosen:
        size = draw(st.integers(1, 500))
        zones = [f"z{z}" for z in range(draw(st.integers(1, 6)))]
        at_version = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
        numbers = list(range(size))
        rng.shuffle(numbers)  # inventory order is not name order
        service_targets = [
            Target(
                name=f"{name}-{n}",
                address=f"10.{n // 250}.{n % 250}.1",
                vars={"zone": rng.choice(zones), "http_port": 8000 + n},
            )
            for n in numbers
        ]
        seen: dict[str, str | None] = {}
        for target in service_targets:
            roll = rng.random()
            if roll < at_version:
                seen[target.name] = VERSION
            elif roll < (at_version + 1) / 2:
                seen[target.name] = rng.choice(["1.0", "1.9", None])
            # else: not observed at all
        targets[name] = service_targets
        observed[name] = seen
        pending[name] = [t.name for t in service_targets if seen.get(t.name) != VERSION]

    # The loader accepts waves that increase for all N targets.
    assume(all(_valid_for(waves, len(targets[n])) for n in chosen))

    spec = make_spec(
        depends,
        version=VERSION,
        order=order,
        waves=[_quantity(w) for w in waves],
        max_unavailable=_quantity(bound),
        bake="10s",
        approve_before=approve_before,
        spread_by=spread_by,
    )
    return Case(spec=spec, targets=targets, observed=observed, pending=pending)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bound_rule(bound: Count | Percent, total: int) -> int:
    """DESIGN.md's rule, restated with exact fractions: percent rounds down, at least 1; count capped."""
    if isinstance(bound, Count):
        return max(1, min(bound.value, total))
    return max(1, math.floor(Fraction(str(bound.value)) * total / 100))


@PROPERTY
@given(case=cases())
def test_every_target_appears_exactly_once(case: Case) -> None:
    """Each target of a service is either skipped or in exactly one wave, never both or neither."""
    result = plan(case.spec, case.targets, case.observed)
    assert sorted(s.name for s in result.services) == sorted(case.targets)
    for service in result.services:
        everyone = [t.name for t in case.targets[service.name]]
        placed = list(service.targets)
        assert len(placed) == len(set(placed))
        assert sorted([*placed, *service.skipped]) == sorted(everyone)
        seen = case.observed[service.name]
        assert list(service.skipped) == [t for t in everyone if seen.get(t) == VERSION]
        assert sorted(placed) == sorted(case.pending[service.name])
        assert service.total == len(everyone)
        assert dict(service.previous) == {t: seen.get(t) for t in case.pending[service.name]}


@PROPERTY
@given(case=cases())
def test_waves_reach_the_cumulative_counts(case: Case) -> None:
    """After wave k, cumulative_counts(waves, N)[k] targets run the version, skipped ones counted first."""
    result = plan(case.spec, case.targets, case.observed)
    for service in result.services:
        total = len(case.targets[service.name])
        expected = [
            c
            for c in cumulative_counts(case.spec.strategy.waves, total)
            if c > len(service.skipped)
        ]
        done = len(service.skipped)
        reached = []
        for wave in service.waves:
            assert wave.targets, "a kept wave adds at least one target"
            done += len(wave.targets)
            reached.append(done)
        assert reached == expected
        assert [w.done_after for w in service.waves] == expected
        assert [w.number for w in service.waves] == list(range(1, len(service.waves) + 1))


@PROPERTY
@given(case=cases())
def test_capacity_bound_is_proved_per_wave(case: Case) -> None:
    """The service bound follows DESIGN.md, and every wave allows 1 to min(bound, size) down at once."""
    result = plan(case.spec, case.targets, case.observed)
    for service in result.services:
        bound = _bound_rule(case.spec.strategy.max_unavailable, len(case.targets[service.name]))
        assert service.bound == bound
        for wave in service.waves:
            assert 1 <= wave.max_unavailable <= bound
            assert wave.max_unavailable <= len(wave.targets)
            assert wave.max_unavailable == min(bound, len(wave.targets))


@PROPERTY
@given(case=cases())
def test_services_follow_their_dependencies(case: Case) -> None:
    """No service is listed before a dependency; services run by (stage, name) with stages per DESIGN.md."""
    result = plan(case.spec, case.targets, case.observed)
    position = {s.name: i for i, s in enumerate(result.services)}
    stage = {s.name: s.stage for s in result.services}
    for service in result.services:
        deps = case.spec.services[service.name].depends_on
        assert service.depends_on == tuple(sorted(deps))
        assert all(position[d] < position[service.name] for d in deps)
        assert stage[service.name] == 1 + max((stage[d] for d in deps), default=-1)
    assert [s.name for s in result.services] == sorted(stage, key=lambda n: (stage[n], n))


@PROPERTY
@given(case=cases())
def test_failure_domains_never_interleave(case: Case) -> None:
    """With spread_by, each domain is one contiguous block of a service's whole target order."""
    result = plan(case.spec, case.targets, case.observed)
    for service in result.services:
        zone = {t.name: t.vars["zone"] for t in case.targets[service.name]}
        for wave in service.waves:
            if case.spec.strategy.spread_by is None:
                assert wave.domains == ()
                continue
            assert tuple(t for _, group in wave.domains for t in group) == wave.targets
            assert all(zone[t] == d for d, group in wave.domains for t in group)
            assert len({d for d, _ in wave.domains}) == len(wave.domains)
        if case.spec.strategy.spread_by is None:
            assert list(service.targets) == case.pending[service.name]  # inventory order
            continue
        blocks = [
            zone[t]
            for i, t in enumerate(service.targets)
            if i == 0 or zone[t] != zone[service.targets[i - 1]]
        ]
        assert len(blocks) == len(set(blocks)), f"a domain restarts: {blocks}"
        assert blocks == sorted(blocks)
        for domain in blocks:  # inventory order within a domain
            inside = [t for t in service.targets if zone[t] == domain]
            assert inside == [t for t in case.pending[service.name] if zone[t] == domain]


@PROPERTY
@given(case=cases())
def test_approval_and_bake_follow_the_spec_waves(case: Case) -> None:
    """A gate lands on the first kept wave at or after its spec wave; bake sits between waves only."""
    strategy = case.spec.strategy
    result = plan(case.spec, case.targets, case.observed)
    for service in result.services:
        skipped = len(service.skipped)
        kept = [
            i
            for i, count in kept_waves(strategy.waves, len(case.targets[service.name]))
            if count > skipped
        ]
        gated = {
            next(k for k, index in enumerate(kept) if index >= gate - 1)
            for gate in strategy.approve_before
            if kept and gate - 1 <= kept[-1]
        }
        assert [w.approve for w in service.waves] == [k in gated for k in range(len(kept))]
        assert [w.bake for w in service.waves] == [10.0] * (len(kept) - 1) + [0.0] * bool(kept)


def _rebuilt(case: Case) -> Case:
    """The same input built afresh: new dicts in reverse key order, new Target objects."""
    spec = Spec.model_validate(
        {
            **case.spec.model_dump(by_alias=True, exclude_none=True),
            "services": {
                name: case.spec.services[name].model_dump(by_alias=True, exclude_none=True)
                for name in reversed(case.spec.services)
            },
        }
    )
    targets = {
        name: [
            Target(
                name=t.name,
                address=t.address,
                groups=tuple(t.groups),
                vars=dict(reversed(list(t.vars.items()))),
            )
            for t in case.targets[name]
        ]
        for name in reversed(case.targets)
    }
    observed = {
        name: dict(reversed(list(case.observed[name].items()))) for name in reversed(case.observed)
    }
    return Case(spec=spec, targets=targets, observed=observed, pending=case.pending)


@PROPERTY
@given(case=cases())
def test_plans_are_deterministic(case: Case) -> None:
    """The same input gives byte-identical JSON twice, also from rebuilt dicts, and round-trips."""
    first = plan(case.spec, case.targets, case.observed).to_json()
    assert plan(case.spec, case.targets, case.observed).to_json() == first
    again = _rebuilt(case)
    assert again.spec == case.spec
    assert plan(again.spec, again.targets, again.observed).to_json() == first
    assert Plan.from_dict(json.loads(first)).to_json() == first
