"""``{placeholder}`` templates: pure, tiny, shared by every component.

Only ``{identifier}`` is a placeholder; any other brace passes through
untouched, so PromQL (``rate(x{code="500"}[1m])``) and shell-like text keep
their own braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["PLACEHOLDER", "placeholders", "render", "render_argv"]

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(template: str) -> list[str]:
    """The placeholder names of ``template``, in order of appearance."""
    return PLACEHOLDER.findall(template)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Fill every ``{name}`` of ``template`` from ``context``.

    A name missing from ``context`` raises ``KeyError`` naming it; the spec
    validator rejects such templates before anything runs.
    """

    def sub(match: re.Match[str]) -> str:
        value = context[match.group(1)]
        return "" if value is None else str(value)

    return PLACEHOLDER.sub(sub, template)


def render_argv(argv: list[str] | tuple[str, ...], context: Mapping[str, Any]) -> list[str]:
    """Render each argument of an argv template on its own: no shell, no splitting."""
    return [render(arg, context) for arg in argv]
