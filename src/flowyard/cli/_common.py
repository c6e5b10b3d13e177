"""What every command shares: the console, the one error helper, loading the context."""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from flowyard.errors import FlowyardError

console = Console(highlight=False)
# Never wrapped: an error is one line (plus its fix), whatever the terminal's width.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")

HomeOption = typer.Option(
    None, "--home", envvar="FLOWYARD_HOME", help="Platform directory (default ~/.flowyard)."
)


# Set to 1 to see an error's details (e.g. a failed child process's whole output).
DEBUG_VARIABLE = "FLOWYARD_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def exit_with_error(
    message: str, fix: str | None = None, code: int = 1, details: str | None = None
) -> NoReturn:
    # Escaped: values such as `[::1]` or `[proxy]` are text, not console markup.
    err_console.print(f"[bold red]Error:[/] {escape(message)}")
    # Details (a traceback, a child's stderr) would bury the one line that matters, so they
    # are shown on request; a hint says how, unless they only repeat the message.
    if details and details.strip() and details.strip() not in message:
        if debug_enabled():
            body = textwrap.indent(details.rstrip(), "  ")
            err_console.print(body, markup=False, emoji=False, soft_wrap=True)
        else:
            err_console.print(f"[dim](details: run again with {DEBUG_VARIABLE}=1)[/]")
    if fix:
        err_console.print(f"[bold]Fix:[/] {escape(fix)}")
    raise typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn FlowyardError into a two-line message and exit code 1, never a traceback
    (its details, indented, with FLOWYARD_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FlowyardError as exc:
            exit_with_error(exc.message, exc.fix, details=exc.details)
        except KeyboardInterrupt:
            exit_with_error("Interrupted.", code=130)

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def resolve_home(home: Path | None) -> Path | None:
    return home.expanduser().absolute() if home else None
