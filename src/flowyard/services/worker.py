"""The local worker: serves the default work pool through the proxy, like any remote worker."""

from __future__ import annotations

import socket

import httpx

from flowyard.platform.client_env import client_env
from flowyard.services.base import Context, Service, binary


def worker_name(ctx: Context) -> str:
    return f"flowyard-{socket.gethostname()}"


def env(ctx: Context) -> dict[str, str]:
    home = ctx.paths.service_data("worker")
    return {
        **client_env(ctx),
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(ctx.paths.prefect_profiles),
    }


def is_registered(ctx: Context) -> bool:
    """Ready once the worker has announced itself to the API for its pool."""
    from flowyard.platform.api import api_client

    try:
        with api_client(ctx) as client:
            r = client.post(f"/work_pools/{ctx.config.worker.pool}/workers/filter", json={})
            return r.status_code == 200 and any(w["name"] == worker_name(ctx) for w in r.json())
    except httpx.HTTPError:
        return False


def service(ctx: Context) -> Service:
    cfg = ctx.config.worker
    home = ctx.paths.service_data("worker")
    return Service(
        name="worker",
        description=f"Prefect worker for pool '{cfg.pool}'",
        command=[
            binary("prefect"),
            "worker",
            "start",
            "--pool",
            cfg.pool,
            "--name",
            worker_name(ctx),
            "--limit",
            str(cfg.effective_concurrency),
        ],
        env=env(ctx),
        cwd=home,
        ready=lambda: is_registered(ctx),
        ready_timeout=60,
        # Prefect 3.9's worker ignores SIGTERM: INT asks it to stop; supervisor KILLs the
        # whole process group after stop_wait, so no flow-run child outlives it.
        stop_signal="INT",
        stop_wait=20,
        prepare=lambda: home.mkdir(parents=True, exist_ok=True),
    )
