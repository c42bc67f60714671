"""The spec loader: every class of bad input gets one exact line with file, line, column and path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollwave.errors import SpecError
from rollwave.spec.load import load_config, load_spec_text
from rollwave.spec.units import Count, Percent, parse_duration, parse_quantity

BASE = """\
environment: prod
inventory: inventory.yaml
services:
  api:
    hosts: api
    version: "1.0"
    driver:
      kind: local
      artifact: dist/api-{version}.tar.gz
      root: fleet/{name}
      start: [python3, "{release}/app.py", --port, "{http_port}"]
    health:
      http: "http://127.0.0.1:{http_port}/healthz"
      interval: 1s
"""

INVENTORY = """\
targets:
  - {name: api-1, groups: [api], vars: {http_port: 8001, zone: a}}
  - {name: api-2, groups: [api], vars: {http_port: 8002, zone: b}}
  - {name: web-1, groups: [web], vars: {http_port: 9001, zone: a}}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec_text(textwrap.dedent(text))
    return [str(p) for p in caught.value.problems]


def config_problems(tmp_path: Path, text: str, inventory: str = INVENTORY) -> list[str]:
    (tmp_path / "rollwave.yaml").write_text(textwrap.dedent(text))
    (tmp_path / "inventory.yaml").write_text(inventory)
    with pytest.raises(SpecError) as caught:
        load_config(tmp_path / "rollwave.yaml", display_name="rollwave.yaml")
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            BASE.replace("interval: 1s", "intervl: 1s"),
            "rollwave.yaml:14:7: services.api.health.intervl: unknown key (did you mean 'interval'?)",
            id="unknown-key-suggests",
        ),
        pytest.param(
            BASE.replace("interval: 1s", "interval: 5x"),
            "rollwave.yaml:14:17: services.api.health.interval: bad duration '5x': use a number and a unit (ms, s, m, h), such as 500ms, 90s, 1h30m",
            id="bad-duration",
        ),
        pytest.param(
            BASE.replace("hosts: api", "hosts: [api]"),
            "rollwave.yaml:5:12: services.api.hosts: expected text, got a list",
            id="wrong-type",
        ),
        pytest.param(
            BASE.replace("      kind: local\n", "      kind: docker\n"),
            "rollwave.yaml:8:7: services.api.driver: unknown kind; expected one of 'local', 'ssh'",
            id="unknown-driver-kind",
        ),
        pytest.param(
            BASE.replace("      root: fleet/{name}\n", ""),
            "rollwave.yaml:8:7: services.api.driver.root: required field is missing",
            id="missing-field",
        ),
        pytest.param(
            BASE + "strategy:\n  waves: [1, 50%, 40%, 100%]\n",
            "rollwave.yaml:16:19: strategy.waves.2: waves must increase: wave 3 (40%) is not larger than the percentage before it",
            id="waves-decrease",
        ),
        pytest.param(
            BASE + "strategy:\n  waves: [1, 50%]\n",
            "rollwave.yaml:16:14: strategy.waves.1: the last wave must reach the whole fleet (100%), not 50%",
            id="waves-do-not-end-at-fleet",
        ),
        pytest.param(
            BASE + "strategy:\n  waves: [1, 100%]\n  approve_before: [3]\n",
            "rollwave.yaml:17:20: strategy.approve_before.0: wave 3 does not exist: there are 2 waves",
            id="approval-of-missing-wave",
        ),
        pytest.param(
            BASE + "strategy:\n  max_unavailable: 10 percent\n",
            "rollwave.yaml:16:20: strategy.max_unavailable: expected a count such as 2 or a percentage such as 25%, got '10 percent'",
            id="bad-quantity",
        ),
        pytest.param(
            BASE.replace('version: "1.0"', 'version: "1.0; rm -rf /"'),
            "rollwave.yaml:6:14: services.api.version: version '1.0; rm -rf /' may hold only letters, digits and . _ + - (and must start with a letter or digit)",
            id="unsafe-version",
        ),
        pytest.param(
            BASE.replace("    hosts: api\n", "    hosts: api\n    depends_on: [wbe]\n"),
            "rollwave.yaml:6:18: services.api.depends_on.0: unknown service 'wbe'",
            id="unknown-dependency",
        ),
        pytest.param(
            "environment: prod\ninventory: x\nservices:\n  api: {\n",
            "rollwave.yaml:5:1: invalid YAML: expected the node content, but found '<stream end>'",
            id="yaml-syntax",
        ),
        pytest.param(
            "- just\n- a list\n",
            "rollwave.yaml:1:1: expected a mapping at the top, got a list",
            id="not-a-mapping",
        ),
        pytest.param(
            BASE.replace("  api:\n", "  api:\n    hosts: web\n", 1),
            "rollwave.yaml:6:5: services.api.hosts: duplicate key",
            id="duplicate-key",
        ),
    ],
)
def test_bad_spec_text_gives_exact_line(text: str, expected: str) -> None:
    """Each class of bad input names file, line, column and key path, exactly."""
    assert expected in problems_of(text)


def test_dependency_cycle_is_named() -> None:
    """A dependency cycle is reported with the services that form it."""
    web = (
        "  web:\n"
        "    hosts: web\n"
        '    version: "1.0"\n'
        "    depends_on: [api]\n"
        "    driver: {kind: local, artifact: a, root: r, start: [x]}\n"
    )
    text = BASE.replace("    hosts: api\n", "    hosts: api\n    depends_on: [web]\n") + web
    assert problems_of(text) == [
        "rollwave.yaml:6:17: services.api.depends_on: dependency cycle: api -> web -> api"
    ]


def test_every_problem_is_reported_at_once() -> None:
    """Two independent problems give two lines, sorted by position."""
    text = BASE.replace("interval: 1s", "interval: 5x").replace(
        "kind: local", "kind: local\n      keep: zero"
    )
    problems = problems_of(text)
    assert len(problems) == 2
    assert problems[0].startswith("rollwave.yaml:9:13: services.api.driver.keep:")
    assert problems[1].startswith("rollwave.yaml:15:17: services.api.health.interval:")


def test_host_pattern_selecting_nothing(tmp_path: Path) -> None:
    """A host pattern that selects no target is invalid input naming the pattern and inventory."""
    problems = config_problems(tmp_path, BASE.replace("hosts: api", "hosts: nosuchgroup"))
    assert problems == [
        "rollwave.yaml:5:12: services.api.hosts: host pattern 'nosuchgroup' selects no target in inventory.yaml"
    ]


def test_unknown_placeholder(tmp_path: Path) -> None:
    """A {placeholder} that neither rollwave nor the inventory provides is invalid, with a suggestion."""
    problems = config_problems(tmp_path, BASE.replace('"{http_port}"]', '"{http_prot}"]'))
    assert problems == [
        "rollwave.yaml:11:52: services.api.driver.start.3: unknown placeholder {http_prot} (did you mean '{http_port}'?)"
    ]


def test_placeholder_missing_on_one_target(tmp_path: Path) -> None:
    """A variable that only some targets define cannot be used in a template."""
    inventory = INVENTORY.replace("{http_port: 8002, zone: b}", "{zone: b}")
    problems = config_problems(tmp_path, BASE, inventory)
    assert (
        "rollwave.yaml:11:52: services.api.driver.start.3: unknown placeholder {http_port}"
        in problems
    )


def test_waves_checked_per_service_size(tmp_path: Path) -> None:
    """Counts that end before the whole fleet of a service are invalid for that service."""
    problems = config_problems(tmp_path, BASE + "strategy:\n  waves: [1]\n")
    assert problems == [
        "rollwave.yaml:16:11: strategy.waves.0: the last wave must reach the whole fleet: service api has 2 targets, the waves end at 1"
    ]


def test_missing_spec_file(tmp_path: Path) -> None:
    """A spec that does not exist is one line naming it."""
    with pytest.raises(SpecError) as caught:
        load_config(tmp_path / "nope.yaml", display_name="nope.yaml")
    assert str(caught.value) == "nope.yaml: cannot read spec: no such file or directory"


def test_valid_spec_loads(tmp_path: Path) -> None:
    """A valid spec loads with its targets selected from the inventory."""
    (tmp_path / "rollwave.yaml").write_text(BASE)
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    config = load_config(tmp_path / "rollwave.yaml")
    assert [t.name for t in config.targets["api"]] == ["api-1", "api-2"]
    assert config.spec.services["api"].health is not None
    assert config.spec.services["api"].health.interval == 1.0
    assert config.base_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("90s", 90.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (3, 3.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations accept ms, s, m, h and combinations."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "m5", "1h 30m", "-1s", "1s2", True, None])
def test_bad_durations(text: object) -> None:
    """Anything but number+unit pairs is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_counts_and_percentages_are_distinct() -> None:
    """A count and a percentage of the same number are different values."""
    assert parse_quantity(10) == Count(10)
    assert parse_quantity("10%") == Percent(10.0)
    assert parse_quantity(10) != parse_quantity("10%")
    with pytest.raises(ValueError, match="percentage"):
        parse_quantity("150%")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """Any bytes at all give a SpecError, never another exception."""
    path = tmp_path_factory.mktemp("bytes") / "rollwave.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except SpecError as exc:
        assert exc.exit_code == 2
        assert all(p.message for p in exc.problems)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["environment", "inventory", "services", "strategy", "hooks", "freeze", "x"]
        ),
        yaml_values,
        max_size=6,
    )
)
def test_arbitrary_yaml_never_crashes(document: dict[str, object]) -> None:
    """Any YAML document gives a Spec or a SpecError, never another exception."""
    import yaml

    text = yaml.safe_dump(document)
    try:
        load_spec_text(text)
    except SpecError as exc:
        assert exc.exit_code == 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    """Any text gives a Spec or a SpecError, never another exception."""
    try:
        load_spec_text(text)
    except SpecError as exc:
        assert exc.exit_code == 2


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00garbage",
        b"services: [",
        b"- 1\n- 2\n",
        b"environment: [prod\n",
        b"a: *unknown_anchor\n",
        b"",
    ],
    ids=["binary", "unclosed", "list", "bad-flow", "anchor", "empty"],
)
def test_cli_exits_2_without_traceback(tmp_path: Path, content: bytes) -> None:
    """`rollwave validate` on broken input prints problem lines and exits 2, never a traceback."""
    import subprocess
    import sys

    spec = tmp_path / "rollwave.yaml"
    spec.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "rollwave.cli", "validate", "-f", str(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(str(spec))
