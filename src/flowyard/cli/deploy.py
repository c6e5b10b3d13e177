"""`flowyard deploy` and `flowyard run`: users' flow projects on the platform."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from flowyard.cli._common import HomeOption, console, handle_errors, print_json, resolve_home
from flowyard.config.context import load_context
from flowyard.errors import FlowyardError
from flowyard.platform.lock import home_lock
from flowyard.projects.api import deploy_project, trigger
from flowyard.projects.project import load_project


@handle_errors
def deploy(
    path: Path = typer.Argument(Path("flows"), help="Flow project folder (with prefect.yaml)."),
    pool: str | None = typer.Option(None, "--pool", help="Override every deployment's work pool."),
    queue: str | None = typer.Option(None, "--queue", help="Override every deployment's queue."),
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validate, push code to the platform's S3 bucket, and register the deployments."""
    ctx = load_context(resolve_home(home))
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FlowyardError(
            f"Flow project folder {path} {what}.",
            fix="Give `flowyard deploy` the folder holding your prefect.yaml (e.g. flows/).",
        )
    # Read here too, so a missing or broken prefect.yaml is one line, not a child's traceback.
    load_project(path.absolute())
    with home_lock(ctx.paths.home, "deploy"), console.status(f"Deploying {path}…"):
        deployments = deploy_project(ctx, path.absolute(), pool, queue)
    if as_json:
        print_json(deployments)
        return
    table = Table(title=f"Deployed from {path}")
    for col in ("deployment", "pool", "queue", "schedules"):
        table.add_column(col)
    for d in deployments:
        table.add_row(d["name"], d["pool"] or "", d["queue"] or "", ", ".join(d["schedules"]))
    console.print(table)


def _parse_params(values: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FlowyardError(f"Parameter {item!r} is not key=value.", fix="e.g. -p name=Bob")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@handle_errors
def run(
    name: str = typer.Argument(..., help="flow-name/deployment-name"),
    param: list[str] = typer.Option([], "-p", "--param", help="key=value (JSON values allowed)."),
    queue: str | None = typer.Option(None, "--queue"),
    timeout: float = typer.Option(600, help="Seconds to wait for a final state."),
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a deployment on the platform's workers and wait for its final state."""
    ctx = load_context(resolve_home(home))
    with console.status(f"Running {name}…"):
        outcome = trigger(ctx, name, _parse_params(param), timeout, queue)
    if as_json:
        print_json(outcome)
    elif "error" in outcome:
        raise FlowyardError(outcome["error"], fix="`prefect deployment ls` lists deployments.")
    else:
        colour = "green" if outcome["ok"] else "red"
        console.print(
            f"[{colour}]{outcome['state']}[/] {outcome['flow_run_name']}  {outcome['url']}"
        )
        if outcome.get("result") is not None:
            console.print(f"Result: {outcome['result']}")
    if not outcome["ok"]:
        raise typer.Exit(1)
