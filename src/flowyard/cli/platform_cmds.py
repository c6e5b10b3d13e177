"""`flowyard up | down | status | logs`: the platform's lifecycle."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from flowyard.cli._common import (
    HomeOption,
    console,
    err_console,
    handle_errors,
    print_json,
    resolve_home,
)
from flowyard.config.context import Context, load_context
from flowyard.errors import FlowyardError
from flowyard.platform import lifecycle
from flowyard.platform.lock import home_lock
from flowyard.platform.registry import build_services, service_names
from flowyard.platform.supervisor import Supervisor
from flowyard.services.metrics import PrefectFigures


def _note_stale_pidfile(ctx: Context) -> Supervisor:
    """Check the pidfile before anything acts on it, and say when it was stale."""
    sup = Supervisor(ctx.paths)
    sup.pid()
    if sup.stale:
        # On stderr: `status --json` keeps a clean stdout.
        err_console.print(f"[yellow]Note:[/] {escape(sup.stale)}")
    return sup


@handle_errors
def up(home: Path | None = HomeOption) -> None:
    """Start every service in dependency order and wait until each is ready."""
    ctx = load_context(resolve_home(home))
    started = time.monotonic()

    with home_lock(ctx.paths.home, "up"), console.status("Starting Flowyard…") as status:
        _note_stale_pidfile(ctx)

        def progress(name: str, phase: str) -> None:
            if phase.startswith(lifecycle.NOTE):
                console.print(f"      {phase}", style="dim")
            elif phase in ("ready", "already running"):
                console.print(f"  [green]✓[/] {name:<17} {phase}")
            else:
                status.update(f"{name}: {phase}…")

        lifecycle.up(ctx, progress)
    secrets_file = ctx.paths.secrets_file
    console.print(f"\n[bold green]Flowyard is up[/] in {time.monotonic() - started:.1f} s")
    console.print(f"  UI and API:  [bold]{ctx.config.proxy.url}[/]")
    if ctx.config.mlflow.enabled:
        console.print(f"  MLflow:      [bold]{ctx.config.proxy.url}/mlflow/[/]")
    console.print(
        f"  Login:       user [bold]{ctx.secrets.prefect_user}[/], password in {secrets_file}"
    )
    if ctx.config.proxy.tls == "internal":
        console.print(f"  CA cert:     {ctx.paths.ca_cert} (trust it in browsers and clients)")
    console.print('  Client env:  eval "$(flowyard env)"')


@handle_errors
def down(home: Path | None = HomeOption) -> None:
    """Stop every service gracefully; data is kept."""
    ctx = load_context(resolve_home(home))
    with home_lock(ctx.paths.home, "down"):
        _note_stale_pidfile(ctx)
        stopped = lifecycle.down(
            ctx,
            lambda name, phase: (
                console.print(f"  {name:<17} {phase}")
                if phase in ("stopped", "stopping (orphaned)")
                else None
            ),
        )
    if not stopped:
        console.print("Flowyard is not running; nothing to stop.")
        return
    console.print("[green]Flowyard is down.[/] Data is kept in " + str(ctx.paths.data))


@handle_errors
def status(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show each service's state and readiness."""
    ctx = load_context(resolve_home(home))
    sup = _note_stale_pidfile(ctx)
    rows = lifecycle.status(ctx)
    orphans = sup.orphans(build_services(ctx))
    for row in rows:
        procs = orphans.get(row.name)
        if procs:
            # Running, but nothing supervises it: no restart on failure, and `down` must find it.
            row.state, row.pid, row.ready = "ORPHANED", procs[0].pid, False
            row.problem = (
                f"running (pid {procs[0].pid}) without its supervisord; "
                "`flowyard down` stops it, then `flowyard up`"
            )
    figures = lifecycle.run_figures(ctx, rows)
    last_start = lifecycle.last_start(ctx)
    pss = [r.pss_mib for r in rows if r.pss_mib is not None]
    total_pss = round(sum(pss), 1) if pss else None
    if as_json:
        print_json(
            {
                "url": ctx.config.proxy.url,
                "services": [r.as_dict() for r in rows],
                "runs": figures.as_dict() if figures else None,
                "last_start": last_start,
                "pss_mib": total_pss,
            }
        )
        return
    table = Table(title=f"Flowyard at {ctx.config.proxy.url}")
    for col in ("service", "state", "ready", "pid", "uptime", "memory", "what"):
        table.add_column(col)
    for r in rows:
        colour = "green" if r.ready else ("yellow" if r.state == "RUNNING" else "red")
        table.add_row(
            r.name,
            f"[{colour}]{r.state}[/]",
            "yes" if r.ready else "no",
            str(r.pid or ""),
            f"{r.uptime_seconds}s" if r.uptime_seconds is not None else "",
            f"{r.pss_mib:.0f} MiB" if r.pss_mib is not None else "",
            r.description,
        )
    console.print(table)
    if total_pss is not None:
        console.print(f"Memory:      {total_pss:.0f} MiB (PSS, every service)")
    if last_start:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(str(last_start["at"]))))
        console.print(f"Last start:  {when}, {last_start['seconds']} s")
    if figures:
        _print_figures(figures)
    for r in rows:
        if r.problem:
            console.print(f"[bold red]{r.name}:[/] {r.problem}")
    if not all(r.ready and not r.problem for r in rows):
        raise typer.Exit(3)


def _print_figures(figures: PrefectFigures) -> None:
    late = f"{figures.late_runs}"
    if figures.late_runs:
        late += f" (oldest {figures.oldest_late_seconds:.0f} s late)"
    console.print(f"Late runs:   {late}")
    depth = ", ".join(f"{q.pool}/{q.queue} {q.depth}" for q in figures.queues) or "no queues"
    console.print(f"Queue depth: {depth}")
    workers = (
        ", ".join(
            f"{w.worker} ({w.pool}) seen {w.last_seen_seconds:.0f} s ago" for w in figures.workers
        )
        or "none"
    )
    console.print(f"Workers:     {workers}")


@handle_errors
def logs(
    service: str = typer.Argument(..., help="Service name, or caddy-access / supervisord."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    lines: int = typer.Option(50, "-n", "--lines"),
    home: Path | None = HomeOption,
) -> None:
    """Print a service's log."""
    ctx = load_context(resolve_home(home))
    known = [*service_names(ctx), "caddy-access", "supervisord"]
    if service not in known:
        raise FlowyardError(
            f"No service named {service!r}.", fix=f"Use one of: {', '.join(known)}."
        )
    path = ctx.paths.log_file(service)
    if not path.exists():
        raise FlowyardError(
            f"{service} has not written a log yet ({path}).", fix="Run `flowyard up`."
        )
    cmd = ["tail", "-n", str(lines), *(["-F"] if follow else []), str(path)]
    # Ctrl-C is how `logs -f` ends.
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, check=False)
