"""What `make up` runs after `flowyard up`: deploy the business-logic flows and run the
design's greeting flow through the platform's worker, end to end."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from flowyard.config.context import load_context
from flowyard.errors import FlowyardError
from flowyard.projects.api import deploy_project, trigger

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def main() -> int:
    console = Console()
    try:
        ctx = load_context()
        with console.status("Deploying flows/ (code to S3, deployments to Prefect)…"):
            for d in deploy_project(ctx, FLOWS):
                console.print(f"  deployed {d['name']}  {', '.join(d['schedules'])}")
        with console.status("Running greeting-flow/scheduled-greeting on the worker…"):
            outcome = trigger(ctx, "greeting-flow/scheduled-greeting", {"name": "Bob"}, 300)
    except FlowyardError as exc:
        console.print(f"[bold red]Error:[/] {exc}")
        return 1
    colour = "green" if outcome.get("ok") else "red"
    console.print(
        f"[{colour}]{outcome.get('state')}[/] greeting flow run {outcome.get('flow_run_name')}: "
        f"{outcome.get('result')!r}"
    )
    console.print(f"  Flow run: {outcome.get('url')}")
    console.print(f"  UI:       [bold]{ctx.config.proxy.url}[/]")
    return 0 if outcome.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
