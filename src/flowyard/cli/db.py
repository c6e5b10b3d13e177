"""`flowyard db report`: the platform's storage, and what retention will free."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flowyard.cli._common import HomeOption, console, handle_errors, print_json, resolve_home
from flowyard.config.context import load_context
from flowyard.ops import db_report

app = typer.Typer(help="The platform's databases.", no_args_is_help=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@app.command()
@handle_errors
def report(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Database and bucket sizes, largest tables, rows waiting for retention, bloat."""
    ctx = load_context(resolve_home(home))
    found = db_report.report(ctx)
    if as_json:
        print_json(found.as_dict())
        return
    r = found.retention
    console.print(
        f"[bold]Retention[/]: events {r['events_days']} days, finished flow runs "
        f"{r['flow_runs_days']} days ({r['settings']}; applied by {r['applied_by']})"
    )
    console.print(
        "Databases:   " + ", ".join(f"{n} {_size(s)}" for n, s in found.databases.items())
    )
    console.print(
        "Buckets:     "
        + ", ".join(f"{b.name} {_size(b.size_bytes)} ({b.objects} objects)" for b in found.buckets)
    )
    waiting = found.waiting_for_retention
    console.print(
        f"Waiting for retention: {waiting['events']} events, {waiting['flow_runs']} flow runs"
    )
    tables = Table(title="Largest tables")
    for col in ("database", "table", "size", "rows (est.)"):
        tables.add_column(col)
    for t in found.largest_tables:
        tables.add_row(t.database, t.table, _size(t.total_bytes), str(t.rows_estimate))
    console.print(tables)
    bloat = Table(title="Dead rows (bloat)")
    for col in ("database", "table", "live", "dead", "dead ratio", "last autovacuum"):
        bloat.add_column(col)
    for b in found.bloat:
        bloat.add_row(
            b.database,
            b.table,
            str(b.live_rows),
            str(b.dead_rows),
            f"{b.dead_ratio:.1%}",
            b.last_autovacuum or "never",
        )
    console.print(bloat)
