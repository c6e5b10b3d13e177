"""`flowyard apply`: make work pools, queues, limits and automations match flowyard.toml."""

from __future__ import annotations

from pathlib import Path

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.config.context import load_context
from flowyard.errors import FlowyardError
from flowyard.platform.apply import apply as apply_objects
from flowyard.platform.lock import home_lock
from flowyard.services import prefect_api


@handle_errors
def apply(home: Path | None = HomeOption) -> None:
    """Create or update pools, queues, global limits and automations (idempotent)."""
    ctx = load_context(resolve_home(home))
    with home_lock(ctx.paths.home, "apply"):
        if not prefect_api.is_ready(ctx):
            raise FlowyardError("The Prefect API is not running.", fix="Run `flowyard up` first.")
        for line in apply_objects(ctx):
            console.print(f"  {line}")
