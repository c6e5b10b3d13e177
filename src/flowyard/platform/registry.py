"""The platform's services, in the order they start (each depends only on earlier ones)."""

from __future__ import annotations

from flowyard.services import (
    caddy,
    postgres,
    prefect_api,
    prefect_services,
    redis,
    seaweedfs,
    worker,
)
from flowyard.services.base import Context, Service


def build_services(ctx: Context) -> list[Service]:
    cfg = ctx.config
    services = [postgres.service(ctx), redis.service(ctx)]
    if cfg.object_store.kind == "seaweedfs":
        services.append(seaweedfs.service(ctx))
    services += [prefect_api.service(ctx), prefect_services.service(ctx)]
    if cfg.mlflow.enabled:
        from flowyard.services import mlflow

        services.append(mlflow.service(ctx))
    services.append(caddy.service(ctx))
    if cfg.worker.enabled:
        services.append(worker.service(ctx))
    return services


def service_names(ctx: Context) -> list[str]:
    return [s.name for s in build_services(ctx)]
