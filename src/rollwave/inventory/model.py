"""Targets and inventories: plain frozen values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Inventory", "Target"]


@dataclass(frozen=True)
class Target:
    """One machine or process slot a service runs on.

    ``vars`` holds every inventory variable of the target (group vars merged
    under host vars, Ansible's precedence); ``address``, ``port`` and
    ``user`` are lifted from ``ansible_host`` / ``ansible_port`` /
    ``ansible_user`` or rollwave's own ``address`` / ``port`` / ``user``.
    """

    name: str
    address: str
    port: int | None = None
    user: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Inventory:
    """All targets of an inventory file, in file order, and its groups.

    ``groups`` maps each group name to the names of every host in it,
    children groups included, in inventory order. ``all`` is always present.
    ``lines`` maps host and group names to the line that defines them, for
    error messages.
    """

    source: str
    targets: Mapping[str, Target]
    groups: Mapping[str, tuple[str, ...]]
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def target(self, name: str) -> Target:
        return self.targets[name]
