"""The environment a client needs to use the platform through the proxy, TLS verified.

Used by `flowyard env`, by the local worker (which goes through Caddy exactly as a remote
worker does) and by the tests; one function so they cannot disagree.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowyard.services.base import Context

RESULTS_BLOCK_SLUG = "flowyard-results"
# Prefect's minimum; hygiene.zombie_heartbeat_seconds must leave room for a missed beat or two.
HEARTBEAT_SECONDS = 30
# How every Prefect client of the platform talks to it, remote workers included.
CLIENT_SETTINGS = {
    # While PostgreSQL restarts, Prefect's API answers 500 (asyncpg's ConnectionRefused is not
    # among the errors it maps to a retryable 503). Unretried, a flow run's Pending -> Running
    # fails, the worker's Crashed report fails too, and the run stays Pending forever; retried
    # (5 times, about a minute of backoff), it just runs.
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
    # The server's CSRF protection is off (prefect_api.server_env says why), so a client's
    # token request only earns a 422: one wasted round trip per client, three per flow run.
    "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
}


def client_env(ctx: Context, ca_cert: Path | None = None) -> dict[str, str]:
    cfg = ctx.config
    ca = str(ca_cert or ctx.paths.ca_cert)
    internal_ca = cfg.proxy.tls == "internal"
    env = {
        "PREFECT_API_URL": f"{cfg.proxy.url}/api",
        "PREFECT_API_AUTH_STRING": ctx.secrets.prefect_auth_string.get_secret_value(),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"s3-bucket/{RESULTS_BLOCK_SLUG}",
        # Flow runs prove they are alive; the zombie automation crashes those that stop.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        **CLIENT_SETTINGS,
        "AWS_ACCESS_KEY_ID": ctx.secrets.s3_access_key.get_secret_value(),
        "AWS_SECRET_ACCESS_KEY": ctx.secrets.s3_secret_key.get_secret_value(),
        "AWS_DEFAULT_REGION": cfg.object_store.region,
        "FLOWYARD_CODE_BUCKET": cfg.object_store.code_bucket,
        "FLOWYARD_RESULTS_BUCKET": cfg.object_store.results_bucket,
    }
    if internal_ca:
        env["PREFECT_API_SSL_CERT_FILE"] = ca
    if cfg.object_store.kind == "seaweedfs":
        env["AWS_ENDPOINT_URL_S3"] = cfg.proxy.s3_url
        if internal_ca:
            # Only for the platform's own store: a CA bundle replaces the public roots.
            env["AWS_CA_BUNDLE"] = ca
    else:
        assert cfg.object_store.endpoint_url is not None
        env["AWS_ENDPOINT_URL_S3"] = cfg.object_store.endpoint_url
    if cfg.mlflow.enabled:
        env.update(mlflow_env(ctx, ca if internal_ca else None))
    return env


def mlflow_env(ctx: Context, ca: str | None) -> dict[str, str]:
    """MLflow clients go through the proxy like everything else; artifacts too, so no S3 keys."""
    from flowyard.services import mlflow

    user, password = mlflow.admin_auth(ctx)
    env = {
        "MLFLOW_TRACKING_URI": f"{ctx.config.proxy.url}{mlflow.PREFIX}",
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
        # On-premises: the client's usage telemetry stays off like the server's.
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if ca:
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = ca
    return env


def child_env(ctx: Context, **overrides: str) -> dict[str, str]:
    """Environment for a child process acting as a platform client: the caller's own
    Prefect/AWS/MLflow settings are dropped so they cannot point it elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "MLFLOW_"))}
    env.update(client_env(ctx))
    env["PREFECT_HOME"] = str(ctx.paths.service_data("cli"))
    env["PREFECT_PROFILES_PATH"] = str(ctx.paths.prefect_profiles)
    env.update(overrides)
    return env
