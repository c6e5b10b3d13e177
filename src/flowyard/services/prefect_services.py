"""Prefect's background services (scheduler, late runs, zombie detection, event persister,
task-run recorder, vacuum...) in their own process, fed by Redis."""

from __future__ import annotations

from flowyard.services.base import Context, Service, binary
from flowyard.services.prefect_api import server_env


def service(ctx: Context) -> Service:
    return Service(
        name="prefect-services",
        description="Prefect background services",
        command=[binary("prefect"), "server", "services", "start"],
        env=server_env(ctx),
        cwd=ctx.paths.prefect_home,
        # No port to probe: staying up for a few seconds is its readiness.
        start_secs=5,
        ready_timeout=30,
        stop_signal="INT",
    )
