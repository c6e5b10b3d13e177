"""Prefect's background services (scheduler, late runs, zombie detection, event persister,
task-run recorder, vacuum...) in their own process, fed by Redis.

Differs from stock Prefect: run through `outage_guard`, which holds proactive automations
(the zombie-run automation) while the API webserver, the only way in for runs' heartbeats,
is unreachable, so an API outage does not mark healthy runs Crashed."""

from __future__ import annotations

import sys

from flowyard.client.api import prefect_api_socket
from flowyard.config.context import Context
from flowyard.services import prefect_api
from flowyard.services.base import Service

NAME = "prefect-services"


def command(ctx: Context) -> list[str]:
    """`prefect server services start`, with the API probed where this process reaches it:
    its Unix socket natively, its container's address under compose."""
    socket = prefect_api_socket(ctx)
    uds = ["--uds", str(socket)] if socket else []
    return [
        sys.executable,
        "-m",
        "flowyard.services.outage_guard",
        "--api-health",
        prefect_api.health_url(ctx),
        *uds,
    ]


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="Prefect background services",
        # Migrated schema (the API's prepare step), and nothing waits for it.
        after=(prefect_api.NAME,),
        command=command(ctx),
        env=prefect_api.server_env(ctx),
        cwd=ctx.paths.prefect_home,
        # No port to probe: staying up for a few seconds is its readiness.
        start_secs=5,
        ready_timeout=30,
        stop_signal="INT",
    )
