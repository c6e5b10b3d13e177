"""The container-mode view of the one config, for the compose renderer and the init job.

Compose files are built by calling the same functions native mode uses (`server_env`,
`client_env`, `seaweedfs.command`, ...) with a `Context` whose hosts are container names,
whose paths are inside the images, and whose secrets are `${VAR:?}` references to the env
file. So a setting added natively appears in compose without anyone copying it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from flowyard.config.context import Context, Hosts
from flowyard.config.model import FlowyardConfig
from flowyard.config.secrets import Secrets, compose_fields
from flowyard.services import (
    caddy,
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

# Compose service names, which are also the containers' host names on their networks: the
# native services' own names, plus the two one-shot jobs that do natively what `up` does.
POSTGRES = postgres.NAME
REDIS = redis.NAME
SEAWEEDFS = seaweedfs.NAME
PREFECT_API = prefect_api.NAME
PREFECT_SERVICES = prefect_services.NAME
MLFLOW = mlflow.NAME
GATE = gate.NAME
CADDY = caddy.NAME
METRICS = metrics.NAME
WORKER = local_worker.NAME
INIT = "init"
APPLY = "apply"

SERVER_NETWORK = "prefect-server-network"
AGENT_NETWORK = "prefect-agent-network"

# FLOWYARD_HOME inside the Flowyard images (prefect_server.Dockerfile, worker/flows images).
HOME = Path("/var/lib/flowyard")
# The standard ports of the postgres and redis images; the config's ports are host-side.
POSTGRES_PORT = 5432
REDIS_PORT = 6379
HOSTS = Hosts(
    bind="0.0.0.0",
    postgres=POSTGRES,
    redis=REDIS,
    object_store=SEAWEEDFS,
    prefect_api=PREFECT_API,
    mlflow=MLFLOW,
    metrics=METRICS,
    gate=GATE,
    # Inside its own network namespace; the published ports decide what is exposed.
    proxy_bind="0.0.0.0",
    # Sockets do not cross containers; each network is private to the stack.
    use_sockets=False,
)

# Production (the VM override): standard ports, public certificates, a domain from the env.
DOMAIN_VAR = "FLOWYARD_DOMAIN"
ACME_EMAIL_VAR = "FLOWYARD_ACME_EMAIL"
PRODUCTION_PORTS = {"https_port": 443, "http_port": 80, "s3_https_port": 444}

# Derived from a secret by the same function native mode uses (see `mlflow.flask_secret_key`);
# compose cannot compute it, so the env file carries it too.
MLFLOW_FLASK_KEY_VAR = "FLOWYARD_MLFLOW_FLASK_SECRET_KEY"


# The home's users.toml (logins and roles, argon2 hashes), base64url-encoded into one line of
# the env file; the images' entrypoint writes it back, owner-only, where the gate and the API
# read it (`FLOWYARD_USERS_FILE`). Not a bind mount: the containers run as another uid than
# the home's owner, and `flowyard user add` replaces the file (a new inode) on every change.
USERS_VAR = "FLOWYARD_USERS_B64"


def secret_var(field: str) -> str:
    """The env-file variable holding one `Secrets` field (FLOWYARD_ avoids clashes with a
    user's own REDIS_PASSWORD or S3_* variables, which compose would otherwise prefer)."""
    return f"FLOWYARD_{field.upper()}"


def ref(var: str) -> str:
    """A compose reference that refuses to start while the variable is unset or empty."""
    return f"${{{var}:?}}"


def placeholder_secrets() -> Secrets:
    return Secrets(**{f: SecretStr(ref(secret_var(f))) for f in compose_fields()})


def secrets_from_env(environ: Mapping[str, str] | None = None) -> Secrets:
    """The inverse, inside a container: the values compose put in the environment."""
    env = os.environ if environ is None else environ
    missing = [secret_var(f) for f in compose_fields() if not env.get(secret_var(f))]
    if missing:
        raise SystemExit(f"Missing from the container environment: {', '.join(missing)}")
    return Secrets(**{f: SecretStr(env[secret_var(f)]) for f in compose_fields()})


def container_config(config: FlowyardConfig) -> FlowyardConfig:
    """`config` as seen inside the containers: image paths and the images' own ports.

    `model_copy` skips validation on purpose: the result is only ever rendered, and in
    production the proxy host is a compose variable, which is not a valid host name.
    """
    return config.model_copy(
        update={
            "home": HOME,
            "postgres": config.postgres.model_copy(update={"port": POSTGRES_PORT}),
            "redis": config.redis.model_copy(update={"port": REDIS_PORT}),
        }
    )


def production_config(config: FlowyardConfig, domain: str, email: str) -> FlowyardConfig:
    """The VM variant: a public domain with ACME certificates on the standard ports."""
    proxy = config.proxy.model_copy(
        update={"host": domain, "tls": "acme", "acme_email": email, **PRODUCTION_PORTS}
    )
    return config.model_copy(update={"proxy": proxy})


def server_context(config: FlowyardConfig, secrets: Secrets | None = None) -> Context:
    """For processes on the server network, which reach each other by container name.

    `secrets` defaults to the env-file references; tests pass real values to prove that no
    value derived from a secret is rendered.
    """
    return Context(
        config=container_config(config), secrets=secrets or placeholder_secrets(), hosts=HOSTS
    )


def client_context(config: FlowyardConfig, secrets: Secrets | None = None) -> Context:
    """For workers on the agent network, which reach the platform only through Caddy.

    They cannot use the public name `localhost` (inside a container that is the container),
    so with the internal CA they use Caddy's container name, which the container Caddyfile
    also serves; with ACME the public domain is aliased to Caddy on that network.
    """
    ctx = server_context(config, secrets)
    if config.proxy.tls != "internal":
        return ctx
    proxy = ctx.config.proxy.model_copy(update={"host": CADDY})
    return Context(
        config=ctx.config.model_copy(update={"proxy": proxy}),
        secrets=ctx.secrets,
        hosts=ctx.hosts,
    )
