"""Read ``rollwave.yaml`` and its inventory into a validated :class:`Config`.

Every problem becomes one :class:`~rollwave.errors.Problem` with the file,
line, column and key path of the offending value, for instance::

    rollwave.yaml:12:17: services.api.health.interval: bad duration '5x': ...

No input, however broken, escapes as anything but :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import hashlib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rollwave.errors import InventoryError, Problem, SpecError
from rollwave.inventory.model import Inventory, Target
from rollwave.plan.waves import wave_count
from rollwave.spec.model import HookSpec, HooksSpec, ServiceSpec, Spec
from rollwave.spec.templates import placeholders
from rollwave.spec.units import Count, Percent

__all__ = ["Config", "load_config", "load_spec_text", "with_versions"]

Path_ = tuple[str, ...]

TARGET_FIELDS = ("name", "address", "service", "version", "previous_version", "release")
WAVE_FIELDS = ("environment", "service", "version", "previous_version", "wave", "targets")
DEPLOYMENT_FIELDS = ("environment", "deployment_id")
QUERY_FIELDS = ("environment", "service", "version", "previous_version", "targets")
TARGET_HOOKS = ("before_target", "after_target", "verify")
WAVE_HOOKS = ("before_wave", "after_wave")
DEPLOYMENT_HOOKS = ("before_deployment", "after_deployment")


@dataclass(frozen=True)
class Config:
    """A validated spec, its inventory and the targets of each service."""

    spec: Spec
    path: Path
    base_dir: Path
    inventory: Inventory
    targets: Mapping[str, tuple[Target, ...]]
    digest: str
    positions: Mapping[Path_, tuple[int, int]] = field(compare=False, hash=False)

    def resolve(self, relative: str) -> Path:
        """A path from the spec, relative to the spec file's directory."""
        return (
            (self.base_dir / relative).resolve()
            if not Path(relative).is_absolute()
            else Path(relative)
        )


# ------------------------------------------------------------------- YAML


class _Located:
    """YAML data with the (line, column) of every value and key path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.problems: list[Problem] = []

    def problem(self, path: Path_, message: str, where: tuple[int, int] | None = None) -> None:
        line, column = where if where is not None else self.position(path)
        self.problems.append(Problem(self.name, line, column, ".".join(path), message))

    def position(self, path: Path_) -> tuple[int, int]:
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return (1, 1)


def _walk(node: yaml.Node, path: Path_, out: _Located) -> Any:
    out.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out.problem(path, "a key must be a plain name, not a list or mapping", where)
                continue
            key = str(key_node.value)
            if key in result:
                where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out.problem((*path, key), "duplicate key", where)
                continue
            out.positions[(*path, key)] = (
                value_node.start_mark.line + 1,
                value_node.start_mark.column + 1,
            )
            out.positions[(*path, key, "<key>")] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            result[key] = _walk(value_node, (*path, key), out)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, str(i)), out) for i, item in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _parse_yaml(text: str, out: _Located) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # Resolve merge keys (<<) and anchors in place before walking.
        loader.flatten_mapping(node) if isinstance(node, yaml.MappingNode) else None
        _flatten_all(loader, node, set())
        return _walk(node, (), out)
    finally:
        loader.dispose()


def _flatten_all(loader: yaml.SafeLoader, node: yaml.Node, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        for key, value in node.value:
            _flatten_all(loader, key, seen)
            _flatten_all(loader, value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _flatten_all(loader, item, seen)


# ------------------------------------------------------ pydantic -> problem


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
            else:
                return annotation
        else:
            return annotation


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    """The field names allowed at ``loc`` (a pydantic error location) of a Spec."""
    current: Any = Spec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            name = next(
                (n for n, f in fields.items() if part in (n, f.alias)),
                None,
            )
            if name is None:
                return []
            current = fields[name].annotation
            continue
        origin = typing.get_origin(current)
        if origin is list:
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif origin in (typing.Union, types.UnionType):
            chosen = None
            for member in typing.get_args(current):
                member = _unwrap(member)
                if isinstance(member, type) and issubclass(member, BaseModel):
                    kind = member.model_fields.get("kind")
                    if kind is not None and part in typing.get_args(kind.annotation):
                        chosen = member
            if chosen is None:
                return []
            current = chosen
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _data_path(loc: Sequence[Any], data: Any) -> Path_:
    """Keep only the parts of a pydantic location that exist in the data (drops union tags)."""
    path: list[str] = []
    current = data
    for index, part in enumerate(loc):
        key = str(part)
        if isinstance(current, Mapping) and key in current:
            current = current[key]
            path.append(key)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(key)
        elif index == len(loc) - 1 and isinstance(current, Mapping):
            path.append(key)  # a missing field: point at its parent, name the field
        # else: a union tag or a wrapper name, not part of the user's document
    return tuple(path)


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"unknown kind; expected one of {expected}"
    if kind == "union_tag_not_found":
        return "required field 'kind' is missing"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_type_name(error.get('input'))}"
    if kind == "list_type":
        return f"expected a list, got {_type_name(error.get('input'))}"
    if kind == "string_type":
        return f"expected text, got {_type_name(error.get('input'))}"
    return message[0].lower() + message[1:] if message else kind


def _type_name(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "text",
        int: "a number",
        float: "a number",
        bool: "true/false",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)


def _problems_from(exc: ValidationError, data: Any, out: _Located) -> None:
    for error in exc.errors():
        loc = error["loc"]
        if error["type"] == "extra_forbidden":
            path = _data_path(loc, data)
            key = path[-1] if path else str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = out.positions.get((*path, "<key>"))
            out.problem(path, f"unknown key{hint}", where)
            continue
        path = _data_path(loc, data)
        if error["type"] == "missing" and path and path not in out.positions:
            parent = path[:-1]
            out.problem(path, _message(error), out.position(parent))
            continue
        out.problem(path, _message(error))


# ----------------------------------------------------------- whole config


def load_spec_text(text: str, name: str = "rollwave.yaml") -> tuple[Spec, _Located]:
    """Parse and validate the spec text alone (no inventory): SpecError on any problem."""
    out = _Located(name)
    try:
        data = _parse_yaml(text, out)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError([Problem(name, *where, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(name, 1, 1, "", f"invalid YAML: {exc}")]) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise SpecError([Problem(name, 1, 1, "", f"unreadable YAML: {exc}")]) from None
    if out.problems:
        raise SpecError(out.problems)
    if not isinstance(data, dict):
        raise SpecError(
            [Problem(name, 1, 1, "", f"expected a mapping at the top, got {_type_name(data)}")]
        )
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        _problems_from(exc, data, out)
        raise SpecError(out.problems) from None
    _check_dependencies(spec, out)
    _check_strategy(spec, out)
    if out.problems:
        raise SpecError(out.problems)
    return spec, out


def load_config(path: Path | str, display_name: str | None = None) -> Config:
    """Load ``rollwave.yaml`` and its inventory, and check them against each other."""
    from rollwave.inventory import load_inventory, select

    path = Path(path)
    name = display_name or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SpecError(
            [Problem(name, 0, 0, "", f"cannot read spec: {reason.lower()}")],
            hint="pass the spec with -f FILE",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(name, 1, 1, "", f"not UTF-8 text (byte {exc.start})")]) from None
    spec, out = load_spec_text(text, name)
    base_dir = path.resolve().parent

    inventory_path = Path(spec.inventory)
    if not inventory_path.is_absolute():
        inventory_path = base_dir / inventory_path
    try:
        inventory = load_inventory(inventory_path, display_name=spec.inventory)
    except InventoryError as exc:
        # The inventory's own problems name the inventory file; also say where it came from.
        if any("cannot read" in p.message for p in exc.problems):
            out.problem(("inventory",), exc.problems[0].message)
            raise SpecError(out.problems) from None
        raise
    targets: dict[str, tuple[Target, ...]] = {}
    for service_name, service in spec.services.items():
        selected = tuple(select(inventory, service.hosts))
        if not selected:
            out.problem(
                ("services", service_name, "hosts"),
                f"host pattern {service.hosts!r} selects no target in {spec.inventory}",
            )
        targets[service_name] = selected
        _check_service(spec, service_name, service, selected, out)
    _check_placeholders(spec, targets, out)
    if spec.migrations is not None:
        for step_name in ("expand", "contract"):
            step = getattr(spec.migrations, step_name)
            if step is not None and step.on is not None and not select(inventory, step.on):
                out.problem(
                    ("migrations", step_name, "on"),
                    f"{step.on!r} selects no target in {spec.inventory}",
                )
    if out.problems:
        raise SpecError(out.problems)
    digest = hashlib.sha256(raw).hexdigest()
    return Config(
        spec=spec,
        path=path.resolve(),
        base_dir=base_dir,
        inventory=inventory,
        targets=targets,
        digest=digest,
        positions=out.positions,
    )


# ------------------------------------------------------------ cross checks


def _check_dependencies(spec: Spec, out: _Located) -> None:
    for name, service in spec.services.items():
        for index, dependency in enumerate(service.depends_on):
            if dependency not in spec.services:
                close = difflib.get_close_matches(dependency, list(spec.services), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                out.problem(
                    ("services", name, "depends_on", str(index)),
                    f"unknown service {dependency!r}{hint}",
                )
            elif dependency == name:
                out.problem(
                    ("services", name, "depends_on", str(index)),
                    f"dependency cycle: {name} -> {name}",
                )
    cycle = _find_cycle(
        {n: [d for d in s.depends_on if d in spec.services] for n, s in spec.services.items()}
    )
    if cycle and len(cycle) > 2:
        out.problem(("services", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(cycle))


def _check_strategy(spec: Spec, out: _Located) -> None:
    """Waves increase and end at the whole fleet; approval gates name existing waves."""
    waves = spec.strategy.waves
    last: dict[type, float] = {}
    for index, wave in enumerate(waves):
        path = ("strategy", "waves", str(index))
        if wave.value == 0:
            out.problem(path, f"wave {index + 1} is {wave}: a wave must add at least one target")
        previous = last.get(type(wave))
        if previous is not None and wave.value <= previous:
            kind = "count" if isinstance(wave, Count) else "percentage"
            out.problem(
                path,
                f"waves must increase: wave {index + 1} ({wave}) is not larger than the {kind} before it",
            )
        last[type(wave)] = wave.value
    final = waves[-1]
    if isinstance(final, Percent) and final.value != 100:
        out.problem(
            ("strategy", "waves", str(len(waves) - 1)),
            f"the last wave must reach the whole fleet (100%), not {final}",
        )
    for index, number in enumerate(spec.strategy.approve_before):
        if number > len(waves):
            out.problem(
                ("strategy", "approve_before", str(index)),
                f"wave {number} does not exist: there are {len(waves)} waves",
            )


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """The first dependency cycle found, as ``[a, b, ..., a]``; None when acyclic."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def _check_service(
    spec: Spec, name: str, service: ServiceSpec, targets: Sequence[Target], out: _Located
) -> None:
    total = len(targets)
    if not total:
        return
    waves = spec.strategy.waves
    done = 0
    for index, wave in enumerate(waves):
        count = wave_count(wave, total)
        if count < done:
            out.problem(
                ("strategy", "waves", str(index)),
                f"waves must increase: for service {name} ({total} targets) wave {index + 1} "
                f"({wave}) gives {count} targets, fewer than the {done} before it",
            )
            return
        done = count
    if done < total:
        out.problem(
            ("strategy", "waves", str(len(waves) - 1)),
            f"the last wave must reach the whole fleet: service {name} has {total} targets, "
            f"the waves end at {done}",
        )
    spread = spec.strategy.spread_by
    if spread:
        missing = [t.name for t in targets if spread not in t.vars]
        if missing:
            out.problem(
                ("strategy", "spread_by"),
                f"inventory variable {spread!r} is not set on target {missing[0]} of service {name}",
            )


def _template_fields(value: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _template_fields(item, (*path, str(index)))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _template_fields(item, (*path, str(key)))


def _check_fields(
    fields: Iterator[tuple[Path_, str]], allowed: set[str], who: str, out: _Located
) -> None:
    for path, template in fields:
        for placeholder in placeholders(template):
            if placeholder not in allowed:
                close = difflib.get_close_matches(placeholder, sorted(allowed), n=1)
                hint = f" (did you mean '{{{close[0]}}}'?)" if close else ""
                out.problem(path, f"unknown placeholder {{{placeholder}}}{who}{hint}")


def _common_vars(targets: Sequence[Target]) -> set[str]:
    if not targets:
        return set()
    keys = set(targets[0].vars)
    for target in targets[1:]:
        keys &= set(target.vars)
    return keys


def _check_placeholders(spec: Spec, targets: Mapping[str, Sequence[Target]], out: _Located) -> None:
    every_service_vars: set[str] | None = None
    for name, service in spec.services.items():
        if not targets[name]:
            continue  # already reported: the host pattern selects nothing
        base = ("services", name)
        common = _common_vars(targets[name])
        every_service_vars = common if every_service_vars is None else every_service_vars & common
        target_scope = set(TARGET_FIELDS) | common
        driver = service.driver.model_dump(mode="python")
        for key in ("artifact", "root", "start", "restart", "stop"):
            if driver.get(key) is not None:
                scope = target_scope - {"release"} if key in ("artifact", "root") else target_scope
                if key == "root":
                    scope = scope - {"version", "previous_version"}
                _check_fields(_template_fields(driver[key], (*base, "driver", key)), scope, "", out)
        if service.health is not None:
            _check_fields(
                _template_fields(
                    service.health.model_dump(include={"http", "tcp", "command", "body_contains"}),
                    (*base, "health"),
                ),
                target_scope,
                "",
                out,
            )
        if service.traffic is not None:
            _check_fields(
                _template_fields(
                    service.traffic.model_dump(include={"haproxy", "command"}, exclude_none=True),
                    (*base, "traffic"),
                ),
                target_scope,
                "",
                out,
            )
    all_vars = every_service_vars or set()
    if spec.hooks is not None:
        for hook_name in HooksSpec.model_fields:
            hook: HookSpec | None = getattr(spec.hooks, hook_name)
            if hook is None:
                continue
            if hook_name in TARGET_HOOKS:
                scope = set(TARGET_FIELDS) | all_vars
            elif hook_name in WAVE_HOOKS:
                scope = set(WAVE_FIELDS)
            else:
                scope = set(DEPLOYMENT_FIELDS)
            _check_fields(
                _template_fields(hook.run, ("hooks", hook_name, "run")),
                scope,
                f" in {hook_name} hook",
                out,
            )
    if spec.analysis is not None:
        target_scope = set(TARGET_FIELDS) | all_vars
        for index, check in enumerate(spec.analysis.checks):
            _check_fields(
                iter([(("analysis", "checks", str(index), "query"), check.query)]),
                set(QUERY_FIELDS),
                "",
                out,
            )
            if check.scrape is not None:
                _check_fields(
                    iter([(("analysis", "checks", str(index), "scrape"), check.scrape)]),
                    target_scope,
                    "",
                    out,
                )
        canary = spec.analysis.canary
        if canary is not None:
            if canary.scrape is not None:
                _check_fields(
                    iter([(("analysis", "canary", "scrape"), canary.scrape)]), target_scope, "", out
                )
            elif not any(c.scrape for c in spec.analysis.checks):
                out.problem(
                    ("analysis", "canary"),
                    "the canary needs metrics from the targets: give scrape "
                    '(e.g. "http://{address}:{http_port}/metrics") or a scrape check',
                )
    if spec.migrations is not None:
        for step_name in ("expand", "contract"):
            step = getattr(spec.migrations, step_name)
            if step is not None:
                _check_fields(
                    _template_fields(step.run, ("migrations", step_name, "run")),
                    set(DEPLOYMENT_FIELDS),
                    "",
                    out,
                )


def with_versions(config: Config, versions: Mapping[str, str]) -> Config:
    """The same config with some services' versions replaced (a rollback to a named version)."""
    from dataclasses import replace

    from rollwave.spec.model import SAFE_NAME

    for service, version in versions.items():
        if not SAFE_NAME.match(version):
            raise SpecError(
                [
                    Problem(
                        str(config.path.name),
                        0,
                        0,
                        f"services.{service}.version",
                        f"bad version {version!r}",
                    )
                ]
            )
    services = {
        name: service.model_copy(update={"version": versions.get(name, service.version)})
        for name, service in config.spec.services.items()
    }
    return replace(config, spec=config.spec.model_copy(update={"services": services}))
