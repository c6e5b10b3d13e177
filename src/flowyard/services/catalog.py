"""The platform's services, in the order they start (each depends only on earlier ones).

The one list: native mode (`flowyard.platform.registry`) walks it, and the compose renderer
takes its service order from it, so the two cannot list different services.
"""

from __future__ import annotations

from flowyard.config.context import Context
from flowyard.services import (
    caddy,
    dask,
    gate,
    local_worker,
    metrics,
    postgres,
    prefect_api,
    prefect_services,
    redis,
    seaweedfs,
)
from flowyard.services.base import Service


def services(ctx: Context) -> list[Service]:
    cfg = ctx.config
    # The Dask cluster runs natively only: its certificates are made by `flowyard up`
    # (docs/scaling.md says what containers would need).
    dask_on = cfg.dask.enabled and ctx.hosts.use_sockets
    found = [postgres.service(ctx), redis.service(ctx)]
    if cfg.object_store.kind == "seaweedfs":
        found.append(seaweedfs.service(ctx))
    found += [prefect_api.service(ctx), prefect_services.service(ctx)]
    if cfg.mlflow.enabled:
        # Imported only when enabled: MLflow is an optional extra.
        from flowyard.services import mlflow

        found.append(mlflow.service(ctx))
    proxy = caddy.service(ctx)
    # Before Caddy, which asks it about every API request (docs/access.md).
    found.append(gate.service(ctx))
    proxy.after += (gate.NAME,)
    if dask_on:
        # Before Caddy, which forwards to it; its prepare makes the certificates Caddy reads.
        found.append(dask.scheduler_service(ctx))
        proxy.after += (dask.SCHEDULER,)
    found.append(proxy)
    # After Caddy: it reads every service above, and is reached only through the proxy.
    found.append(metrics.service(ctx))
    if dask_on:
        # Their tasks call the API and S3 through the proxy, like flow runs.
        found += dask.worker_services(ctx)
    if cfg.worker.enabled:
        found.append(local_worker.service(ctx))
    return found
