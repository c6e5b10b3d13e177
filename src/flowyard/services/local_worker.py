"""The local worker: serves the default work pool through the proxy, like any remote worker.

Its environment is the platform's client profile (`flowyard.client.env`), the same builder a
joined worker's comes from, plus where this machine keeps the worker's state.
"""

from __future__ import annotations

import socket

import httpx

from flowyard.client.api import api_client
from flowyard.client.env import platform_client_env
from flowyard.config.context import Context
from flowyard.services.base import Service, binary

NAME = "worker"


def worker_name(ctx: Context) -> str:
    return f"flowyard-{socket.gethostname()}"


def env(ctx: Context) -> dict[str, str]:
    home = ctx.paths.service_data("worker")
    return {
        **platform_client_env(ctx),
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(ctx.paths.prefect_profiles),
    }


def is_registered(ctx: Context) -> bool:
    """Ready once the worker has announced itself to the API for its pool."""
    try:
        with api_client(ctx) as client:
            r = client.post(f"/work_pools/{ctx.config.worker.pool}/workers/filter", json={})
            return r.status_code == 200 and any(w["name"] == worker_name(ctx) for w in r.json())
    except httpx.HTTPError:
        return False


def command(ctx: Context, name: str, limit: str) -> list[str]:
    """`prefect worker start` for the configured pool. Without --type Prefect starts the
    pool's own type (for Flowyard's pools, the fast `flowyard` worker). Name and limit are
    parameters: compose names a worker after its container and sizes it to its CPUs."""
    return [
        binary("prefect"),
        "worker",
        "start",
        "--pool",
        ctx.config.worker.pool,
        "--name",
        name,
        "--limit",
        limit,
    ]


def service(ctx: Context) -> Service:
    cfg = ctx.config.worker
    home = ctx.paths.service_data("worker")
    return Service(
        name=NAME,
        description=f"Prefect worker for pool '{cfg.pool}'",
        command=command(ctx, worker_name(ctx), str(cfg.effective_concurrency)),
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
