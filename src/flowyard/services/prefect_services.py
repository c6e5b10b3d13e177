"""Prefect's background services (scheduler, late runs, zombie detection, event persister,
task-run recorder, vacuum...) in their own process, fed by Redis."""

from __future__ import annotations

from flowyard.config.context import Context
from flowyard.services import prefect_api
from flowyard.services.base import Service, binary

NAME = "prefect-services"


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="Prefect background services",
        # Migrated schema (the API's prepare step), and nothing waits for it.
        after=(prefect_api.NAME,),
        command=[binary("prefect"), "server", "services", "start"],
        env=prefect_api.server_env(ctx),
        cwd=ctx.paths.prefect_home,
        # No port to probe: staying up for a few seconds is its readiness.
        start_secs=5,
        ready_timeout=30,
        stop_signal="INT",
    )
