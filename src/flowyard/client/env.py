"""The environment a client needs to use the platform through the proxy, TLS verified.

`client_env(profile)` is the one builder: `flowyard env`, the local worker, remote workers,
Kubernetes and compose workers all call it, so a setting added here reaches every one of
them. Paths (PREFECT_HOME, profiles) are added by whoever knows where the client lives.
"""

from __future__ import annotations

import os

from flowyard.client.profile import RESULTS_BLOCK_SLUG, ClientProfile, DaskLogin
from flowyard.config.context import Context

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
# Variables that hold where a client keeps its own state; they differ per machine, so the
# parity between a local and a joined worker is checked on every key but these.
# Dask's TLS files are also the machine's own copies (same certificate, local path).
DASK_TLS_KEYS = {
    "ca_file": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "client_cert": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "client_key": "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
    "worker_cert": "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT",
    "worker_key": "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY",
}
# A Dask worker's own settings, local or joined: its tasks' INFO logs (two lines a task,
# printed by rich to a log file nobody reads task by task: ~10 % of a tiny task's time on the
# worker, py-spy) go to the API only, where the UI shows them; warnings still print.
DASK_WORKER_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
# Every Dask worker's --preload, local and joined: flowyard.dask_cluster's `dask_setup`
# closes the worker's plain-HTTP diagnostics server.
DASK_WORKER_PRELOAD = "flowyard.dask_cluster"
PATH_KEYS = frozenset({"PREFECT_HOME", "PREFECT_PROFILES_PATH", *DASK_TLS_KEYS.values()})


def client_env(profile: ClientProfile) -> dict[str, str]:
    ca = str(profile.ca_file) if profile.ca_file else None
    env = {
        "PREFECT_API_URL": f"{profile.url}/api",
        "PREFECT_API_AUTH_STRING": profile.auth_string,
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"s3-bucket/{RESULTS_BLOCK_SLUG}",
        # Flow runs prove they are alive; the zombie automation crashes those that stop.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        **CLIENT_SETTINGS,
        "AWS_ENDPOINT_URL_S3": profile.s3_url,
        "AWS_ACCESS_KEY_ID": profile.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": profile.s3_secret_key,
        "AWS_DEFAULT_REGION": profile.region,
        "FLOWYARD_CODE_BUCKET": profile.code_bucket,
        "FLOWYARD_RESULTS_BUCKET": profile.results_bucket,
    }
    if ca:
        env["PREFECT_API_SSL_CERT_FILE"] = ca
        if profile.ca_signs_s3:
            # Only for the platform's own store: a CA bundle replaces the public roots.
            env["AWS_CA_BUNDLE"] = ca
    if profile.mlflow:
        # MLflow clients go through the proxy like everything else; artifacts too (the
        # server proxies them), so MLflow itself needs no S3 keys.
        env.update(
            {
                "MLFLOW_TRACKING_URI": profile.mlflow.uri,
                "MLFLOW_TRACKING_USERNAME": profile.mlflow.user,
                "MLFLOW_TRACKING_PASSWORD": profile.mlflow.password,
                # On-premises: the client's usage telemetry stays off like the server's.
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        if ca:
            env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = ca
    if profile.dask:
        env.update(dask_env(profile.dask))
    return env


def dask_env(login: DaskLogin) -> dict[str, str]:
    """Dask's own settings, so a plain `distributed.Client()` (and prefect-dask's
    DaskTaskRunner) reaches the platform's scheduler through the proxy, TLS verified, with
    the client certificate. The worker role gets the same certificate: a joined Dask worker
    presents it to the scheduler and serves its peers with it."""
    cert, key = str(login.cert_file), str(login.key_file)
    return {
        "DASK_SCHEDULER_ADDRESS": login.address,
        # No plain tcp:// anywhere: Dask refuses to connect or listen without TLS.
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        DASK_TLS_KEYS["ca_file"]: str(login.ca_file),
        DASK_TLS_KEYS["client_cert"]: cert,
        DASK_TLS_KEYS["client_key"]: key,
        DASK_TLS_KEYS["worker_cert"]: cert,
        DASK_TLS_KEYS["worker_key"]: key,
    }


def platform_client_env(ctx: Context) -> dict[str, str]:
    """`client_env` for the operator's clients (`flowyard env`, deploys, apply): admin."""
    return client_env(ClientProfile.from_context(ctx))


def worker_client_env(ctx: Context) -> dict[str, str]:
    """`client_env` for this platform's local worker and the flow runs it starts: the
    flows' scoped credentials (`ClientProfile.for_workers`)."""
    return client_env(ClientProfile.for_workers(ctx))


def child_env(ctx: Context, **overrides: str) -> dict[str, str]:
    """Environment for a child process acting as a platform client: the caller's own
    Prefect/AWS/MLflow settings are dropped so they cannot point it elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "AWS_", "MLFLOW_", "DASK_"))
    }
    env.update(platform_client_env(ctx))
    env["PREFECT_HOME"] = str(ctx.paths.service_data("cli"))
    env["PREFECT_PROFILES_PATH"] = str(ctx.paths.prefect_profiles)
    env.update(overrides)
    return env
