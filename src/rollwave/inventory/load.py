"""Read an inventory file into an :class:`Inventory`: pure parsing, no I/O but the read.

Three formats, chosen by :func:`load_inventory` from the file name and content:

- ``.yml`` / ``.yaml`` / ``.json`` whose top-level mapping has ``targets``:
  rollwave's own format::

      vars: {zone: eu-1}              # optional, every target; target vars win
      targets:
        - name: web-1
          address: 10.0.0.11          # optional, defaults to name
          port: 22                    # optional
          user: deploy                # optional
          groups: [web, canary]       # optional
          vars: {http_port: 8001}     # optional

- any other ``.yml`` / ``.yaml`` / ``.json``: an Ansible YAML inventory
  (``all: {hosts: {...}, vars: {...}, children: {...}}``, nested freely).
- anything else (``.ini``, ``.cfg``, no extension): an Ansible INI inventory.

Ansible's rules are kept where a user migrating an inventory would notice:
host ranges (``web[01:20]``, ``db-[a:c]``, ``[1:10:2]``), ``host:port``,
INI values read as Python literals (``8001`` is an int, ``True`` a bool,
``true`` stays a string), every group's hosts including its children's, an
implicit ``ungrouped`` for hosts in no other group, and variable precedence
``all`` < parent groups < child groups (by depth, then
``ansible_group_priority``, then name) < host variables. ``ansible_host``,
``ansible_port`` and ``ansible_user`` become a target's address, port and
user.

Where Ansible warns or guesses, rollwave refuses: unknown keys, duplicate
YAML keys, undefined child groups, group cycles and a host given two
addresses are errors. Every error is an :class:`InventoryError` with one
:class:`Problem` (file, line, column) per issue; no other exception leaves
this module, whatever the input.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import re
import shlex
import string
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rollwave.errors import InventoryError, Problem
from rollwave.inventory.model import Inventory, Target

__all__ = ["load_inventory", "parse_ansible_yaml", "parse_ini", "parse_rollwave_yaml"]

YAML_SUFFIXES = frozenset({".yml", ".yaml", ".json"})
MAX_RANGE_HOSTS = 10_000
"""A host range expanding to more names than this is refused as a typo."""

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STRING_VARS = frozenset({"ansible_host", "ansible_user"})
_GROUP_KEYS = ("hosts", "vars", "children")
_ROLLWAVE_KEYS = ("targets", "vars")
_TARGET_KEYS = ("name", "address", "port", "user", "groups", "vars")


# --------------------------------------------------------------------------- entry points


def load_inventory(path: Path, display_name: str | None = None) -> Inventory:
    """Read the inventory at ``path``, whichever of the three formats it is in.

    ``display_name`` is the file name errors print (default: ``path`` as given).
    """
    source = str(path) if display_name is None else display_name
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InventoryError(
            [_problem(source, 0, 0, "", f"cannot read the inventory: {reason}")]
        ) from exc
    except Exception as exc:  # a path the OS cannot even name (NUL byte, ...)
        raise InventoryError(
            [_problem(source, 0, 0, "", f"cannot read the inventory: {exc}")]
        ) from exc
    if Path(path).suffix.lower() in YAML_SUFFIXES:
        return _guarded(source, lambda: _parse_yaml(_decode(data, source), source, "detect"))
    return parse_ini(data, source)


def parse_ini(text: str | bytes, source: str = "<inventory>") -> Inventory:
    """Parse an Ansible INI inventory; ``source`` is the file name errors print."""
    return _guarded(source, lambda: _parse_ini(_decode(text, source), source))


def parse_ansible_yaml(text: str | bytes, source: str = "<inventory>") -> Inventory:
    """Parse an Ansible YAML inventory; ``source`` is the file name errors print."""
    return _guarded(source, lambda: _parse_yaml(_decode(text, source), source, "ansible"))


def parse_rollwave_yaml(text: str | bytes, source: str = "<inventory>") -> Inventory:
    """Parse rollwave's own YAML inventory; ``source`` is the file name errors print."""
    return _guarded(source, lambda: _parse_yaml(_decode(text, source), source, "rollwave"))


def _guarded(source: str, parse: Callable[[], Inventory]) -> Inventory:
    """Run ``parse``, turning anything but an InventoryError into one."""
    try:
        return parse()
    except InventoryError:
        raise
    except RecursionError as exc:
        message = "the inventory is nested too deeply to read"
        raise InventoryError([_problem(source, 0, 0, "", message)]) from exc
    except Exception as exc:
        message = (
            f"unexpected {type(exc).__name__} while parsing the inventory: {exc} (a rollwave bug)"
        )
        raise InventoryError([_problem(source, 0, 0, "", message)]) from exc


def _problem(source: str, line: int, column: int, path: str, message: str) -> Problem:
    return Problem(file=source, line=line, column=column, path=path, message=message)


def _decode(data: str | bytes, source: str) -> str:
    """The text of ``data``: UTF-8 (a leading byte order mark is dropped)."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        message = f"the inventory is not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded"
        raise InventoryError([_problem(source, line, column, "", message)]) from None


# --------------------------------------------------------------------------- shared model


@dataclass(frozen=True)
class _At:
    """Where something was written: 1-based line and column, and a key path."""

    line: int
    column: int
    path: str = ""


@dataclass
class _Group:
    name: str
    first_at: _At | None = None
    defined_at: _At | None = None
    defined: bool = False
    hosts: dict[str, None] = field(default_factory=dict)  # an ordered set
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Host:
    name: str
    at: _At
    vars: dict[str, Any] = field(default_factory=dict)
    set_at: dict[str, tuple[_At, int]] = field(default_factory=dict)
    mentions: int = 0
    address: str | None = None
    port: int | None = None
    user: str | None = None


class _Builder:
    """Collects groups, hosts, variables and problems; :meth:`finish` resolves them.

    Resolution follows Ansible: groups without a parent are children of
    ``all``; a host in no group but ``all`` is in ``ungrouped``, and only
    there; a host's variables are its groups' variables sorted by (depth,
    ``ansible_group_priority``, name), then its own on top.
    """

    def __init__(self, source: str, *, lift_ansible: bool) -> None:
        self.source = source
        self.lift_ansible = lift_ansible
        self.problems: list[Problem] = []
        self.groups: dict[str, _Group] = {}
        self.hosts: dict[str, _Host] = {}
        self.edges: dict[tuple[str, str], _At] = {}
        self.requirements: list[tuple[str, _At, str]] = []
        for name in ("all", "ungrouped"):
            self.groups[name] = _Group(name, defined=True)

    def report(self, at: _At, message: str) -> None:
        self.problems.append(_problem(self.source, at.line, at.column, at.path, message))

    # groups ------------------------------------------------------------------

    def group(self, name: str, at: _At | None) -> _Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group(name)
        if group.first_at is None:
            group.first_at = at
        return group

    def define_group(self, name: str, at: _At) -> _Group:
        group = self.group(name, at)
        group.defined = True
        if group.defined_at is None:
            group.defined_at = at
        return group

    def require_defined(self, name: str, at: _At, message: str) -> None:
        """Report ``message`` at ``at`` unless ``name`` is defined by the end."""
        self.requirements.append((name, at, message))

    def add_child(self, parent: str, child: str, at: _At) -> None:
        if child == "all":
            self.report(at, f"group 'all' cannot be a child of group '{parent}'")
            return
        self.group(child, at)
        children = self.group(parent, at).children
        if child not in children:
            children.append(child)
            self.edges[(parent, child)] = at

    def set_group_var(self, group: str, key: str, value: Any, at: _At) -> None:
        checked = self._check_special(key, value, at)
        if checked is not _INVALID:
            self.group(group, at).vars[key] = checked

    # hosts -------------------------------------------------------------------

    def add_host(self, group: str, name: str, at: _At) -> _Host:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = _Host(name, at)
        host.mentions += 1
        self.group(group, at).hosts.setdefault(name)
        return host

    def set_host_var(self, host: _Host, key: str, value: Any, at: _At) -> None:
        checked = self._check_special(key, value, at)
        if checked is _INVALID:
            return
        if key in ("ansible_host", "ansible_port") and key in host.vars:
            before, (before_at, mention) = host.vars[key], host.set_at[key]
            if before != checked and mention != host.mentions:
                self.report(
                    at,
                    f"host '{host.name}' is defined again with {key} {_show(checked)},"
                    f" but line {before_at.line} gave {_show(before)}",
                )
                return
        host.vars[key] = checked
        host.set_at[key] = (at, host.mentions)

    def _check_special(self, key: str, value: Any, at: _At) -> Any:
        """``value`` normalised, or ``_INVALID`` after reporting why."""
        if not self.lift_ansible:
            return value
        if key == "ansible_port":
            port = _as_port(value)
            if port is None:
                self.report(at, f"ansible_port must be an integer, got {_show(value)}")
                return _INVALID
            if not 1 <= port <= 65535:
                self.report(at, f"ansible_port must be between 1 and 65535, got {port}")
                return _INVALID
            return port
        if key in _STRING_VARS and (not isinstance(value, str) or not value.strip()):
            self.report(at, f"{key} must be a non-empty string, got {_show(value)}")
            return _INVALID
        return value

    # resolution --------------------------------------------------------------

    def finish(self) -> Inventory:
        for name, at, message in self.requirements:
            if not self.groups[name].defined:
                self.report(at, message)
        if not self.problems:
            self._check_cycles()
        if self.problems:
            raise InventoryError(self.problems)

        parents: dict[str, list[str]] = {name: [] for name in self.groups}
        for parent, group in self.groups.items():
            for child in group.children:
                parents[child].append(parent)
        for name, group_parents in parents.items():
            if name != "all" and not group_parents:
                group_parents.append("all")

        order = _topological(parents)
        depth: dict[str, int] = {}
        ancestors: dict[str, frozenset[str]] = {}
        for name in order:
            above = parents[name]
            depth[name] = 1 + max((depth[p] for p in above), default=-1)
            ancestors[name] = frozenset({name}).union(*(ancestors[p] for p in above))

        direct: dict[str, set[str]] = {name: set() for name in self.hosts}
        for group in self.groups.values():
            for member in group.hosts:
                direct[member].add(group.name)

        targets: dict[str, Target] = {}
        members: dict[str, list[str]] = {name: [] for name in self.groups}
        for name, entry in self.hosts.items():
            groups = self._groups_of(direct[name], ancestors)
            for group_name in groups:
                members[group_name].append(name)
            targets[name] = self._target(entry, groups, depth)

        inventory_groups = {
            name: tuple(hosts) for name, hosts in members.items() if name != "ungrouped" or hosts
        }
        lines: dict[str, int] = {}
        for group in self.groups.values():
            where = group.defined_at or group.first_at
            if where is not None and group.name in inventory_groups:
                lines[group.name] = where.line
        lines.update((name, entry.at.line) for name, entry in self.hosts.items())
        return Inventory(source=self.source, targets=targets, groups=inventory_groups, lines=lines)

    @staticmethod
    def _groups_of(direct: set[str], ancestors: dict[str, frozenset[str]]) -> set[str]:
        """Every group of a host directly in ``direct``, with Ansible's ``ungrouped`` rule.

        A host in some group other than ``all`` and ``ungrouped`` leaves
        ``ungrouped``; a host in none of them joins it.
        """
        named = direct - {"all", "ungrouped"}
        groups: set[str] = {"all"}
        for group in named or {"ungrouped"}:
            groups |= ancestors[group]
        return groups

    def _target(self, host: _Host, groups: set[str], depth: dict[str, int]) -> Target:
        def precedence(name: str) -> tuple[int, int, str]:
            priority = self.groups[name].vars.get("ansible_group_priority", 1)
            if not isinstance(priority, int) or isinstance(priority, bool):
                priority = 1
            return (depth[name], priority, name)

        merged: dict[str, Any] = {}
        for name in sorted(groups, key=precedence):
            merged.update(self.groups[name].vars)
        merged.update(host.vars)

        address, port, user = host.address, host.port, host.user
        if self.lift_ansible:
            address = merged.get("ansible_host", address)
            port = merged.get("ansible_port", port)
            user = merged.get("ansible_user", user)
        return Target(
            name=host.name,
            address=address if address is not None else host.name,
            port=port,
            user=user,
            groups=tuple(sorted(groups)),
            vars=merged,
        )

    def _check_cycles(self) -> None:
        """Report every child edge that closes a loop of groups."""
        white, grey, black = 0, 1, 2
        colour = dict.fromkeys(self.groups, white)
        for root in self.groups:
            if colour[root] != white:
                continue
            colour[root] = grey
            path = [root]
            stack: list[Iterator[str]] = [iter(self.groups[root].children)]
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    colour[path.pop()] = black
                    stack.pop()
                elif colour[child] == grey:
                    loop = [*path[path.index(child) :], child]
                    self.report(
                        self.edges[(path[-1], child)],
                        f"group '{child}' contains itself: {' -> '.join(loop)}",
                    )
                elif colour[child] == white:
                    colour[child] = grey
                    path.append(child)
                    stack.append(iter(self.groups[child].children))


_INVALID: Any = object()


def _topological(parents: dict[str, list[str]]) -> list[str]:
    """Group names, every parent before its children (Kahn; the graph has no cycle)."""
    children: dict[str, list[str]] = {name: [] for name in parents}
    for child, above in parents.items():
        for parent in above:
            children[parent].append(child)
    waiting = {name: len(above) for name, above in parents.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return order


def _as_port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", value):
        return int(value)
    return None


def _show(value: Any) -> str:
    """A value as messages quote it: strings in single quotes, the rest as Python prints it."""
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot name a host or group (patterns could not select it), if it cannot."""
    if not name:
        return f"a {what} name cannot be empty"
    if any(ch.isspace() for ch in name):
        return f"{what} name '{name}' contains whitespace"
    if "," in name:
        return f"{what} name '{name}' contains ','"
    if what == "group":
        if any(ch in name for ch in ":[]"):
            return f"group name '{name}' contains ':', '[' or ']'"
        if name[0] in "!&~":
            return f"group name '{name}' starts with '{name[0]}'"
    return None


# --------------------------------------------------------------------------- host patterns


class _PatternError(Exception):
    """A host pattern that cannot be expanded; the message names it."""


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_DIGITS = re.compile(r"[0-9]+")


def _expand_hosts(pattern: str) -> tuple[list[str], int | None]:
    """The host names a pattern stands for, and the port it gives, if any.

    ``web[01:03]:2222`` gives ``web01 web02 web03`` and 2222; ``db-[a:c]``
    gives ``db-a db-b db-c``; ``n[1:10:4]`` gives ``n1 n5 n9``; several ranges
    multiply, the first varying slowest. Raises ``_PatternError``.
    """
    if pattern.strip() == "---":
        raise _PatternError("'---' is not a host name (is this a YAML inventory? name it .yml)")
    name, port = _split_port(pattern)
    pieces: list[list[str]] = []
    position = 0
    total = 1
    for match in _BRACKETS.finditer(name):
        pieces.append([name[position : match.start()]])
        items = _range_items(match.group(1), name)
        total *= len(items)
        if total > MAX_RANGE_HOSTS:
            raise _PatternError(f"host range '{name}' expands to more than {MAX_RANGE_HOSTS} hosts")
        pieces.append(items)
        position = match.end()
    pieces.append([name[position:]])
    if any("[" in piece[0] or "]" in piece[0] for piece in pieces[::2]):
        raise _PatternError(f"bad host range in '{name}': unbalanced '[' or ']'")
    names = ["".join(parts) for parts in itertools.product(*pieces)]
    for host in names:
        problem = _name_problem(host, "host")
        if problem:
            raise _PatternError(problem)
    return names, port


def _split_port(pattern: str) -> tuple[str, int | None]:
    """``name:port`` split at its one colon outside brackets; IPv6 names keep theirs."""
    depth = 0
    colons: list[int] = []
    for index, char in enumerate(pattern):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == ":" and depth == 0:
            colons.append(index)
    if len(colons) != 1:
        return pattern, None
    name, port = pattern[: colons[0]], pattern[colons[0] + 1 :]
    if not port:
        raise _PatternError(
            f"host pattern '{pattern}' ends with ':' but gives no port"
            " (is this a YAML inventory? name it .yml)"
        )
    if not _DIGITS.fullmatch(port) or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise _PatternError(f"port '{port}' of host pattern '{pattern}' is not between 1 and 65535")
    return name, int(port)


def _range_items(body: str, name: str) -> list[str]:
    """The names one ``[begin:end(:step)]`` stands for, zero padding kept."""

    def bad(reason: str) -> _PatternError:
        return _PatternError(f"bad host range '[{body}]' in '{name}': {reason}")

    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise bad("expected [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise bad("the range has no end")
    if not _DIGITS.fullmatch(step_text) or len(step_text) > 9 or int(step_text) == 0:
        raise bad("the step must be a positive integer")
    step = int(step_text)
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        first, last = letters.index(begin), letters.index(end)
        if first > last:
            raise bad(f"begin '{begin}' comes after end '{end}'")
        return list(letters[first : last + 1 : step])
    if not (_DIGITS.fullmatch(begin) and _DIGITS.fullmatch(end)):
        raise bad("begin and end must both be numbers or both single letters")
    if len(begin) > 18 or len(end) > 18:
        raise bad("the numbers are too long")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise bad("a zero-padded begin and its end must have the same width")
    first, last = int(begin), int(end)
    if first > last:
        raise bad(f"begin {first} comes after end {last}")
    if (last - first) // step + 1 > MAX_RANGE_HOSTS:
        raise _PatternError(f"host range '{name}' expands to more than {MAX_RANGE_HOSTS} hosts")
    return [str(number).zfill(width) for number in range(first, last + 1, step)]


# --------------------------------------------------------------------------- Ansible INI

_SECTION_LIKE = re.compile(r"^\[[^\]]*\]\s*(?:[#;].*)?$")
_SECTION = re.compile(r"^\[([^\s:\]]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_GROUP_LINE = re.compile(r"^([^\s:\]]+)\s*(?:[#;].*)?$")


def _parse_ini(text: str, source: str) -> Inventory:
    builder = _Builder(source, lift_ansible=True)
    group, state = "ungrouped", "hosts"
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        at = _At(number, len(raw) - len(raw.lstrip()) + 1)
        if _SECTION_LIKE.match(line):
            group, state = _ini_section(builder, line, at)
        elif state == "hosts":
            _ini_hosts(builder, group, raw, line, at)
        elif state == "vars":
            _ini_var(builder, group, line, at)
        elif state == "children":
            _ini_child(builder, group, line, at)
    return builder.finish()


def _ini_section(builder: _Builder, line: str, at: _At) -> tuple[str, str]:
    """The group and kind a ``[section]`` line opens; kind ``skip`` after an error."""
    match = _SECTION.match(line)
    if match is None:
        header = line[: line.index("]") + 1]
        builder.report(at, f"invalid section header '{header}'")
        return "", "skip"
    name, kind = match.group(1), match.group(2) or "hosts"
    if kind not in ("hosts", "children", "vars"):
        builder.report(
            at, f"section [{name}:{kind}] has unknown type '{kind}' (expected children or vars)"
        )
        return "", "skip"
    problem = _name_problem(name, "group")
    if problem:
        builder.report(at, problem)
        return "", "skip"
    if kind == "vars":
        builder.group(name, at)
        builder.require_defined(
            name, at, f"section [{name}:vars] is for group '{name}', which is never defined"
        )
    else:
        builder.define_group(name, at)
    return name, kind


def _ini_hosts(builder: _Builder, group: str, raw: str, line: str, at: _At) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        builder.report(at, f"cannot parse host line: {exc}")
        return
    if not tokens:
        return
    assignments: list[tuple[str, Any, _At]] = []
    for token in tokens[1:]:
        key, equals, value = token.partition("=")
        token_at = _At(at.line, _column(raw, token, at.column))
        if not equals or not key:
            builder.report(token_at, f"expected key=value host variable, got '{token}'")
            continue
        assignments.append((key, _ini_value(key, value), token_at))
    try:
        names, port = _expand_hosts(tokens[0])
    except _PatternError as exc:
        builder.report(at, str(exc))
        return
    for name in names:
        host = builder.add_host(group, name, at)
        if port is not None:
            builder.set_host_var(host, "ansible_port", port, at)
        for key, value, token_at in assignments:
            builder.set_host_var(host, key, value, token_at)


def _ini_var(builder: _Builder, group: str, line: str, at: _At) -> None:
    key, equals, value = (part.strip() for part in line.partition("="))
    if not equals or not key or any(char.isspace() for char in key):
        builder.report(at, f"expected key=value, got '{line}'")
        return
    builder.set_group_var(group, key, _ini_value(key, value), at)


def _ini_child(builder: _Builder, group: str, line: str, at: _At) -> None:
    match = _GROUP_LINE.match(line)
    if match is None:
        builder.report(at, f"expected a group name, got '{line}'")
        return
    child = match.group(1)
    problem = _name_problem(child, "group")
    if problem:
        builder.report(at, problem)
        return
    builder.add_child(group, child, at)
    builder.require_defined(child, at, f"group '{child}' in [{group}:children] is never defined")


def _column(raw: str, token: str, default: int) -> int:
    index = raw.find(token)
    return index + 1 if index >= 0 else default


def _ini_value(key: str, text: str) -> Any:
    """An INI value as Ansible reads it: a Python literal if it is one, else the text.

    ``8001`` -> 8001, ``1.5`` -> 1.5, ``True`` -> True, ``'a b'`` -> ``a b``,
    ``[1, 2]`` -> [1, 2]; ``true``, ``10.0.0.1`` and ``eu-1`` stay strings.
    ``ansible_host`` and ``ansible_user`` always stay strings.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except Exception:  # not a literal (or a pathological one): the text itself
        return text
    if isinstance(value, complex) or value is Ellipsis:
        return text
    if key in _STRING_VARS and not isinstance(value, str):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    """A literal_eval result with only YAML-like types: tuples and sets become lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(item) for item in value), key=repr)
    if isinstance(value, dict):
        return {
            key if isinstance(key, str | int | float | bool) else str(key): _plain(item)
            for key, item in value.items()
        }
    if isinstance(value, complex) or value is Ellipsis:
        return str(value)
    return value


# --------------------------------------------------------------------------- YAML


class _Yaml:
    """A composed YAML document: nodes with their marks, and values built from them."""

    def __init__(self, text: str, builder: _Builder) -> None:
        self.builder = builder
        self.loader = yaml.SafeLoader("")
        self.root: Node | None = None
        try:
            self.loader = yaml.SafeLoader(text)  # checks every character already
            self.root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            builder.report(_At(line, column), f"invalid YAML: {_yaml_reason(exc)}")
        except yaml.reader.ReaderError as exc:
            before = text[: exc.position]
            line = before.count("\n") + 1
            column = exc.position - (before.rfind("\n") + 1) + 1
            char = exc.character
            shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
            builder.report(_At(line, column), f"invalid YAML: unacceptable character {shown}")
        except yaml.YAMLError as exc:
            builder.report(_At(1, 1), f"invalid YAML: {exc}")
        except RecursionError:
            builder.report(_At(1, 1), "invalid YAML: nested too deeply")

    def at(self, node: Node, path: str) -> _At:
        return _At(node.start_mark.line + 1, node.start_mark.column + 1, path)

    def value(self, node: Node, path: str) -> Any:
        """The Python value of ``node`` (SafeLoader types), or ``_INVALID`` after a report."""
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
            self.builder.report(self.at(node, path), f"invalid value: {reason or exc}")
            self.loader = yaml.SafeLoader("")  # a failed construction leaves state behind
            return _INVALID

    def items(self, node: MappingNode, path: str) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) of a mapping, merge keys applied, duplicates reported.

        A key written twice is an error; a key from a ``<<`` merge is
        overridden by the mapping's own, as YAML says.
        """
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag not in (_NULL_TAG, _MERGE_TAG):
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in seen:
                    self.builder.report(
                        self.at(key_node, _join(path, key)),
                        f"duplicate key '{key}' (first at line {seen[key]})",
                    )
                seen.setdefault(key, line)
        try:
            self.loader.flatten_mapping(node)
        except (yaml.YAMLError, RecursionError) as exc:
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
            self.builder.report(self.at(node, path), f"invalid merge: {reason or exc}")
            return []
        items: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL_TAG:
                self.builder.report(self.at(key_node, path), "a key must be a plain name")
                continue
            items[key_node.value] = (key_node, value_node)
        return [(key, key_node, value_node) for key, (key_node, value_node) in items.items()]

    def variables(self, node: Node, path: str, what: str) -> Iterator[tuple[str, Any, _At]]:
        """The (name, value, where) of a variables mapping; null is no variables."""
        if _is_null(node):
            return
        if not isinstance(node, MappingNode):
            self.builder.report(
                self.at(node, path),
                f"{what} must be a mapping of variable names to values, got {_kind(node)}".lstrip(),
            )
            return
        for key, _, value_node in self.items(node, path):
            value = self.value(value_node, _join(path, key))
            if value is not _INVALID:
                yield key, value, self.at(value_node, _join(path, key))


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    reason = exc.problem or "syntax error"
    if exc.context:
        context = exc.context
        if exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
            context += f" at line {exc.context_mark.line + 1}"
        reason += f" ({context})"
    return reason


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _STR_TAG:
        return f"'{node.value}'"
    return str(node.value) or "null"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _parse_yaml(text: str, source: str, kind: str) -> Inventory:
    """Parse YAML as ``kind``: ``rollwave``, ``ansible``, or ``detect`` (``targets`` decides)."""
    builder = _Builder(source, lift_ansible=False)
    document = _Yaml(text, builder)
    if kind == "detect":
        root = document.root
        is_rollwave = isinstance(root, MappingNode) and any(
            isinstance(key, ScalarNode) and key.value == "targets" for key, _ in root.value
        )
        kind = "rollwave" if is_rollwave else "ansible"
    builder.lift_ansible = kind == "ansible"
    if not builder.problems:
        if kind == "rollwave":
            _RollwaveReader(document, builder).read()
        else:
            _AnsibleYamlReader(document, builder).read()
    return builder.finish()


class _AnsibleYamlReader:
    """``{group: {hosts: {name: vars}, vars: {...}, children: {group: ...}}}``, nested."""

    def __init__(self, document: _Yaml, builder: _Builder) -> None:
        self.doc = document
        self.builder = builder
        self.visited: set[tuple[str, int]] = set()

    def read(self) -> None:
        root = self.doc.root
        if root is None or _is_null(root):
            return
        if not isinstance(root, MappingNode):
            self.builder.report(
                self.doc.at(root, ""),
                f"an Ansible YAML inventory must be a mapping of group names, got {_kind(root)}",
            )
            return
        for name, key_node, node in self.doc.items(root, ""):
            if name == "plugin":
                self.builder.report(
                    self.doc.at(key_node, name),
                    "this is an inventory plugin configuration, not an inventory;"
                    " rollwave reads only static inventories",
                )
                continue
            self.group(name, key_node, node, name, parent=None)

    def group(self, name: str, key_node: Node, node: Node, path: str, parent: str | None) -> None:
        at = self.doc.at(key_node, path)
        problem = _name_problem(name, "group")
        if problem:
            self.builder.report(at, problem)
            return
        self.builder.define_group(name, at)
        if parent is not None:
            self.builder.add_child(parent, name, at)
        if (name, id(node)) in self.visited or _is_null(node):
            return
        self.visited.add((name, id(node)))
        if not isinstance(node, MappingNode):
            self.builder.report(
                self.doc.at(node, path),
                f"a group must be a mapping with hosts, vars or children, got {_kind(node)}",
            )
            return
        for key, section_key, section in self.doc.items(node, path):
            section_path = _join(path, key)
            if key == "vars":
                for var, value, var_at in self.doc.variables(section, section_path, ""):
                    self.builder.set_group_var(name, var, value, var_at)
            elif key in ("hosts", "children"):
                for entry, entry_key, entry_node in self.entries(key, section, section_path):
                    entry_path = _join(section_path, entry)
                    if key == "hosts":
                        self.host(name, entry, entry_key, entry_node, entry_path)
                    else:
                        self.group(entry, entry_key, entry_node, entry_path, parent=name)
            else:
                self.builder.report(
                    self.doc.at(section_key, section_path),
                    f"unknown key '{key}'{_did_you_mean(key, _GROUP_KEYS)};"
                    " a group has hosts, vars and children",
                )

    def entries(self, key: str, node: Node, path: str) -> list[tuple[str, Node, Node]]:
        """The names under ``hosts`` or ``children``: a mapping, or one name as a string."""
        if _is_null(node):
            return []
        if isinstance(node, ScalarNode) and node.tag == _STR_TAG:
            return [(node.value, node, ScalarNode(_NULL_TAG, "", node.start_mark, node.end_mark))]
        if not isinstance(node, MappingNode):
            what = "host names to their variables" if key == "hosts" else "group names to groups"
            self.builder.report(
                self.doc.at(node, path), f"must be a mapping of {what}, got {_kind(node)}"
            )
            return []
        return self.doc.items(node, path)

    def host(self, group: str, pattern: str, key_node: Node, node: Node, path: str) -> None:
        at = self.doc.at(key_node, path)
        try:
            names, port = _expand_hosts(pattern)
        except _PatternError as exc:
            self.builder.report(at, str(exc))
            return
        variables = list(self.doc.variables(node, path, "host variables"))
        for name in names:
            host = self.builder.add_host(group, name, at)
            if port is not None:
                self.builder.set_host_var(host, "ansible_port", port, at)
            for key, value, var_at in variables:
                self.builder.set_host_var(host, key, value, var_at)


class _RollwaveReader:
    """``targets: [{name, address?, port?, user?, groups?, vars?}]`` and optional ``vars``."""

    def __init__(self, document: _Yaml, builder: _Builder) -> None:
        self.doc = document
        self.builder = builder

    def report(self, node: Node, path: str, message: str) -> None:
        self.builder.report(self.doc.at(node, path), message)

    def read(self) -> None:
        root = self.doc.root
        if root is None or not isinstance(root, MappingNode):
            node = root if root is not None else ScalarNode(_NULL_TAG, "", _origin(), _origin())
            self.report(
                node, "", f"a rollwave inventory must be a mapping with targets, got {_kind(node)}"
            )
            return
        sections = {key: (key_node, node) for key, key_node, node in self.doc.items(root, "")}
        for key, (key_node, _) in sections.items():
            if key not in _ROLLWAVE_KEYS:
                self.report(
                    key_node, key, f"unknown key '{key}'{_did_you_mean(key, _ROLLWAVE_KEYS)}"
                )
        if "vars" in sections:
            for var, value, at in self.doc.variables(sections["vars"][1], "vars", ""):
                self.builder.set_group_var("all", var, value, at)
        if "targets" not in sections:
            self.report(root, "", "missing key 'targets'")
            return
        key_node, targets = sections["targets"]
        self.builder.define_group("all", self.doc.at(key_node, "targets"))
        if _is_null(targets):
            return
        if not isinstance(targets, SequenceNode):
            self.report(targets, "targets", f"must be a list of targets, got {_kind(targets)}")
            return
        for index, node in enumerate(targets.value):
            self.target(node, _join("targets", index))

    def target(self, node: Node, path: str) -> None:
        if not isinstance(node, MappingNode):
            self.report(node, path, f"a target must be a mapping with a name, got {_kind(node)}")
            return
        fields = {key: (key_node, value) for key, key_node, value in self.doc.items(node, path)}
        for key, (key_node, _) in fields.items():
            if key not in _TARGET_KEYS:
                self.report(
                    key_node,
                    _join(path, key),
                    f"unknown key '{key}'{_did_you_mean(key, _TARGET_KEYS)}",
                )
        if "name" not in fields:
            self.report(node, path, "missing key 'name'")
            return
        name = self.string(fields["name"][1], _join(path, "name"), "host")
        if name is None:
            return
        if name in self.builder.hosts:
            first = self.builder.hosts[name].at.line
            self.report(
                fields["name"][1],
                _join(path, "name"),
                f"target '{name}' is defined twice (first at line {first})",
            )
            return
        at = self.doc.at(node, path)
        groups = (
            self.groups(fields["groups"][1], _join(path, "groups")) if "groups" in fields else []
        )
        host: _Host | None = None
        for group in groups or ["ungrouped"]:
            host = self.builder.add_host(group, name, at)
        assert host is not None  # one group at least
        if "address" in fields:
            host.address = self.string(fields["address"][1], _join(path, "address"), "address")
        if "user" in fields:
            host.user = self.string(fields["user"][1], _join(path, "user"), "user")
        if "port" in fields:
            host.port = self.port(fields["port"][1], _join(path, "port"))
        if "vars" in fields:
            for var, value, var_at in self.doc.variables(
                fields["vars"][1], _join(path, "vars"), ""
            ):
                self.builder.set_host_var(host, var, value, var_at)

    def string(self, node: Node, path: str, what: str) -> str | None:
        if not isinstance(node, ScalarNode) or node.tag != _STR_TAG or not node.value:
            self.report(node, path, f"must be a non-empty string, got {_kind(node)}")
            return None
        if what in ("host", "group"):
            problem = _name_problem(node.value, what)
            if problem:
                self.report(node, path, problem)
                return None
        return str(node.value)

    def port(self, node: Node, path: str) -> int | None:
        value = self.doc.value(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return value
        if value is not _INVALID:
            self.report(node, path, f"must be an integer between 1 and 65535, got {_kind(node)}")
        return None

    def groups(self, node: Node, path: str) -> list[str]:
        if not isinstance(node, SequenceNode):
            self.report(node, path, f"must be a list of group names, got {_kind(node)}")
            return []
        names: list[str] = []
        for index, item in enumerate(node.value):
            name = self.string(item, _join(path, index), "group")
            if name is not None and name not in names:
                if name != "all":
                    self.builder.define_group(name, self.doc.at(item, _join(path, index)))
                names.append(name)
        return names


def _origin() -> yaml.Mark:
    return yaml.Mark("<inventory>", 0, 0, 0, "", 0)
