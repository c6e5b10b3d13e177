"""`flowyard apply`: make work pools, queues, limits and automations match flowyard.toml."""

from __future__ import annotations

from pathlib import Path

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.errors import FlowyardError
from flowyard.platform import lifecycle, setup
from flowyard.platform.lock import home_lock
from flowyard.services import prefect_api


@handle_errors
def apply(home: Path | None = HomeOption) -> None:
    """Create or update pools, queues, global limits and automations (idempotent)."""
    ctx = lifecycle.load_context(resolve_home(home))
    with home_lock(ctx.paths.home, "apply"):
        if not prefect_api.is_ready(ctx):
            raise FlowyardError("The Prefect API is not running.", fix="Run `flowyard up` first.")
        for line in setup.apply(ctx):
            console.print(f"  {line}")
