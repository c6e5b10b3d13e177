"""`flowyard env`: shell exports so `prefect`, the Prefect client and boto3 work through
the proxy with TLS verification on."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from flowyard.cli._common import HomeOption, handle_errors, print_json, resolve_home
from flowyard.client.env import platform_client_env
from flowyard.config.context import load_context


@handle_errors
def env(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="A JSON object instead of exports."),
) -> None:
    """Print client environment variables (use: eval "$(flowyard env)")."""
    ctx = load_context(resolve_home(home))
    values = platform_client_env(ctx)
    if as_json:
        print_json(values)
        return
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")
