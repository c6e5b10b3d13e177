"""The services `flowyard up` runs: the service catalog, with the platform's own policy
attached where a service alone cannot know it."""

from __future__ import annotations

from flowyard.config.context import Context
from flowyard.platform import apply
from flowyard.services import caddy, catalog
from flowyard.services.base import Service


def build_services(ctx: Context) -> list[Service]:
    services = catalog.services(ctx)
    for service in services:
        if service.name == caddy.NAME:
            # Pools, queues, limits, automations and the results block exist before any
            # worker starts (a worker would otherwise create its pool with defaults). Applied
            # once the proxy is up: it is the API's one door, for the platform's own client too.
            service.bootstrap = lambda: apply.apply(ctx)
    return services


def service_names(ctx: Context) -> list[str]:
    return [s.name for s in build_services(ctx)]
