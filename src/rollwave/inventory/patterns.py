"""Ansible host patterns over an inventory: which targets a service runs on. Pure.

The common part of Ansible's syntax, with its semantics:

===================  =====================================================
``web``              the hosts of group ``web``, else the host named ``web``
``all`` / ``*``      every target
``web*``, ``db-?``   globs (``fnmatch``, case-sensitive) over group and host
                     names: the hosts of every matching group, and every
                     matching host
``web:db``           union (``web,db`` too; use commas when a host name
                     holds a colon, as IPv6 addresses do)
``web:&eu``          intersection
``web:!web-3``       exclusion
===================  =====================================================

As in Ansible, unions are applied first, then intersections, then
exclusions, whatever their order in the pattern; a pattern made only of
intersections and exclusions starts from ``all``. Unlike Ansible, an empty
pattern selects nothing (not ``all``), a name is a group before it is a
host, and the result is always in inventory order. Regular expressions
(``~...``) and subscripts (``web[0]``) are not supported.
"""

from __future__ import annotations

import difflib
import re
from fnmatch import fnmatchcase

from rollwave.inventory.model import Inventory, Target

__all__ = ["pattern_problems", "select"]

# A ':'-separated term: anything but whitespace, ':' and brackets, or a whole
# bracketed glob class such as [0-9].
_COLON_TERM = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_GLOB = re.compile(r"[*?\[]")


def select(inventory: Inventory, pattern: str) -> list[Target]:
    """The targets ``pattern`` selects, in inventory order."""
    chosen = _evaluate(inventory, _terms(pattern))
    return [target for name, target in inventory.targets.items() if name in chosen]


def pattern_problems(inventory: Inventory, pattern: str) -> str | None:
    """Why ``pattern`` selects no target, or None when it selects at least one.

    For example ``host pattern 'api' selects no target: no group or host
    'api' (did you mean 'apis'?)``.
    """
    terms = _terms(pattern)
    if _evaluate(inventory, terms):
        return None
    message = f"host pattern '{pattern}' selects no target"
    if not terms:
        return f"{message}: the pattern is empty"
    names = [*inventory.groups, *inventory.targets]
    details: list[str] = []
    for term in terms:
        name = term[1:] if term[0] in "!&" else term
        if not name or name in ("all", "*"):
            continue
        if name.startswith("~"):
            details.append(f"regular expressions ('{name}') are not supported")
        elif _GLOB.search(name):
            if not _match(inventory, name):
                details.append(f"no group or host matches '{name}'")
        elif name not in inventory.groups and name not in inventory.targets:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            details.append(f"no group or host '{name}'{hint}")
    return f"{message}: {'; '.join(details)}" if details else message


def _terms(pattern: str) -> list[str]:
    """The terms of a pattern, each still carrying its ``&`` or ``!``."""
    pattern = pattern.strip()
    parts = pattern.split(",") if "," in pattern else _COLON_TERM.findall(pattern)
    return [part.strip() for part in parts if part.strip()]


def _evaluate(inventory: Inventory, terms: list[str]) -> set[str]:
    """The names the terms select: unions, then intersections, then exclusions."""
    if not terms:
        return set()
    unions = [term for term in terms if term[0] not in "&!"]
    intersections = [term[1:] for term in terms if term[0] == "&"]
    exclusions = [term[1:] for term in terms if term[0] == "!"]
    chosen: set[str] = set()
    for term in unions or ["all"]:
        chosen |= _match(inventory, term)
    for term in intersections:
        chosen &= _match(inventory, term)
    for term in exclusions:
        chosen -= _match(inventory, term)
    return chosen


def _match(inventory: Inventory, term: str) -> set[str]:
    """The host names one term (without its ``&`` / ``!``) stands for."""
    if term in ("all", "*"):
        return set(inventory.targets)
    if _GLOB.search(term):
        matched = {name for name in inventory.targets if fnmatchcase(name, term)}
        for group, hosts in inventory.groups.items():
            if fnmatchcase(group, term):
                matched.update(hosts)
        return matched
    if term in inventory.groups:
        return set(inventory.groups[term])
    if term in inventory.targets:
        return {term}
    return set()
