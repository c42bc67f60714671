"""Every configuration shipped in examples/ loads and plans, so the docs cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollwave.plan.planner import plan
from rollwave.spec.load import load_config

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples").glob("*/rollwave.yaml"))


def test_there_are_examples() -> None:
    """The three documented examples exist."""
    assert {p.parent.name for p in EXAMPLES} >= {"single-machine", "ssh-fleet", "multi-service"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_validates_and_plans(path: Path) -> None:
    """The example is valid and the planner gives every selected target a wave."""
    config = load_config(path)
    result = plan(config.spec, {s: list(t) for s, t in config.targets.items()}, {})
    for service in result.services:
        assert sorted(service.targets) == sorted(t.name for t in config.targets[service.name])


def test_ssh_fleet_example_selects_with_ansible_patterns() -> None:
    """api:&prod:!canary_excluded selects 19 of the 20 INI hosts from a range."""
    config = load_config(Path(__file__).parents[2] / "examples/ssh-fleet/rollwave.yaml")
    names = [t.name for t in config.targets["api"]]
    assert len(names) == 19
    assert "api20.example.com" not in names
    assert config.targets["api"][0].user == "deploy"


def test_multi_service_example_orders_and_spreads() -> None:
    """web comes after api, and waves follow zones one at a time."""
    config = load_config(Path(__file__).parents[2] / "examples/multi-service/rollwave.yaml")
    result = plan(config.spec, {s: list(t) for s, t in config.targets.items()}, {})
    assert [(s.name, s.stage) for s in result.services] == [("api", 0), ("web", 1)]
    api = result.service("api")
    zones = [d for w in api.waves for d, _ in w.domains]
    assert zones == sorted(zones)
    assert config.spec.migrations is not None
    assert config.spec.migrations.expand is not None
