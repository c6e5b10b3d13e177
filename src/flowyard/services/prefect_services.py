"""Prefect's background services (scheduler, late runs, zombie detection, event persister,
task-run recorder, vacuum...) in their own process, fed by Redis.

Differs from stock Prefect: run through `outage_guard`, which holds proactive automations
(the zombie-run automation) while the API webserver, the only way in for runs' heartbeats,
is unreachable, so an API outage does not mark healthy runs Crashed."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from flowyard.client.api import prefect_api_socket
from flowyard.config.context import Context
from flowyard.services import prefect_api
from flowyard.services.base import Service, no_probe

NAME = "prefect-services"


def command(ctx: Context) -> list[str]:
    """`prefect server services start`, with the API probed where this process reaches it:
    its Unix socket natively, its container's address under compose; natively it also
    writes the mark of its readiness."""
    socket = prefect_api_socket(ctx)
    native = ["--uds", str(socket), "--ready-file", str(ready_file(ctx))] if socket else []
    return [
        sys.executable,
        "-m",
        "flowyard.services.outage_guard",
        "--api-health",
        prefect_api.health_url(ctx),
        *native,
    ]


def ready_file(ctx: Context) -> Path:
    return ctx.paths.run / "prefect-services.ready"


def started(ctx: Context) -> bool:
    """Prefect has started its services in the process that wrote the ready file (one that
    supervisord restarted has not, until it writes its own)."""
    try:
        return psutil.pid_exists(int(ready_file(ctx).read_text()))
    except (OSError, ValueError):
        return False


def service(ctx: Context) -> Service:
    native = prefect_api_socket(ctx) is not None
    return Service(
        name=NAME,
        description="Prefect background services",
        # Migrated schema (the API's prepare step), and nothing waits for it.
        after=(prefect_api.NAME,),
        command=command(ctx),
        env=prefect_api.server_env(ctx),
        cwd=ctx.paths.prefect_home,
        # Ready once Prefect starts its services (imports done, Redis reached): a mark it
        # writes, since it serves no port to probe. Supervisord still calls it started only
        # after 5 s up, which is also the readiness of one without the mark (compose).
        ready=(lambda: started(ctx)) if native else no_probe,
        prepare=(lambda: ready_file(ctx).unlink(missing_ok=True)) if native else None,
        start_secs=5,
        ready_timeout=30,
        stop_signal="INT",
    )
