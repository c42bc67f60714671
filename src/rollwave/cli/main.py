"""The ``rollwave`` command: the only place that prints, prompts or exits.

Exit codes (also in README.md):

    0  success
    1  the deployment failed (rolled back, or left paused), or an internal error
    2  invalid input (spec, inventory, arguments, unknown deployment)
    3  the environment is locked by another run, or frozen
    4  aborted by an operator
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from rollwave.errors import RollwaveError, SpecError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def spec_option(function: F) -> F:
    return click.option(
        "-f",
        "--file",
        "spec_file",
        default="rollwave.yaml",
        show_default=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The rollwave.yaml of the environment.",
    )(function)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(
        function
    )


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def load(spec_file: Path) -> Any:
    from rollwave.spec.load import load_config

    display = str(spec_file)
    return load_config(spec_file, display_name=display)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rollwave")
def cli() -> None:
    """Roll a new version across a fleet in waves, with health gates and automatic rollback."""


@cli.command()
@spec_option
@json_option
def validate(spec_file: Path, as_json: bool) -> None:
    """Check the spec and its inventory; change nothing."""
    config = load(spec_file)
    counts = {name: len(targets) for name, targets in config.targets.items()}
    if as_json:
        emit_json({"valid": True, "environment": config.spec.environment, "services": counts})
        return
    services = ", ".join(f"{name} ({n} targets)" for name, n in counts.items())
    out.print(f"{spec_file}: valid — environment {config.spec.environment}: {services}")


@cli.command()
@spec_option
@json_option
@click.option("--markdown", is_flag=True, help="The plan as Markdown, for a change request.")
@click.option("--check", is_flag=True, help="Also run the preflight checks on every target.")
def plan(spec_file: Path, as_json: bool, markdown: bool, check: bool) -> None:
    """Show what apply would do: services in order, waves, targets, gates, skips."""
    import time

    from rollwave.cli.render import plan_markdown, plan_rows
    from rollwave.engine.runner import make_plan, preflight_only
    from rollwave.plan.freeze import estimate_duration, next_freeze
    from rollwave.spec.units import format_duration

    config = load(spec_file)
    the_plan = asyncio.run(make_plan(config))
    if check:
        asyncio.run(preflight_only(config, the_plan))
    expected = estimate_duration(the_plan, config.spec)
    window = next_freeze(config.spec.freeze, time.time(), expected)
    if as_json:
        data = the_plan.to_dict()
        data["expected_duration_s"] = round(expected, 1)
        data["next_freeze"] = window.to_dict() if window else None
        emit_json(data)
        return
    if markdown:
        text = plan_markdown(the_plan)
        text += f"\nExpected duration: about {format_duration(expected)}.\n"
        if window:
            text += f"\n**Freeze:** {window.reason}, {window.to_dict()['start']} to {window.to_dict()['end']} overlaps this plan.\n"
        click.echo(text, nl=False)
        return
    table = Table(title=f"plan for {the_plan.environment} ({the_plan.order})")
    for column in ("service", "wave", "targets", "capacity", "gate", "after"):
        table.add_column(column)
    for row in plan_rows(the_plan):
        table.add_row(*row)
    out.print(table)
    out.print(f"expected duration: about {format_duration(expected)}", markup=False)
    if window:
        times = window.to_dict()
        out.print(
            f"warning: freeze '{window.reason}' from {times['start']} to {times['end']} overlaps this plan",
            markup=False,
        )
    if check:
        out.print("preflight: every target reachable, versions known, traffic manager ready")


def _debug_log(exc: BaseException) -> Path:
    directory = Path(os.environ.get("ROLLWAVE_DEBUG_DIR", tempfile.gettempdir()))
    path = directory / f"rollwave-debug-{os.getpid()}.log"
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)))
    return path


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and map every outcome to a documented exit code."""
    import warnings

    from rollwave.cli import commands  # noqa: F401 - registers the engine commands

    def show_warning(message: Warning | str, *_: object, **__: object) -> None:
        err.print(f"warning: {message}", markup=False, style="bold yellow")

    warnings.showwarning = show_warning
    try:
        cli.main(args=argv, prog_name="rollwave", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print(
            "interrupted: an unfinished deployment stays in the journal; `rollwave apply` resumes it",
            markup=False,
        )
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SpecError as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except RollwaveError as exc:
        err.print(f"error: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"hint: {exc.hint}", markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:  # the boundary: nothing unexpected reaches the user as a traceback
        path = _debug_log(exc)
        err.print(f"internal error: {type(exc).__name__}: {exc}", markup=False)
        err.print(f"the details are in {path}; please report them", markup=False)
        sys.exit(1)
    sys.exit(0)
