"""`ClientProfile`: what a client needs to reach the platform through the proxy.

Two sources make one: the platform's own context (the server's local worker, `flowyard env`,
compose) and a join file (a worker on another host). Anything one of them knows that the
other does not is a bug: a flow must behave the same whichever worker runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowyard.config.context import Context

# MLflow is served under this prefix of the platform's one origin.
MLFLOW_PREFIX = "/mlflow"
# MLflow's basic-auth admin (the only MLflow account until per-user accounts exist).
MLFLOW_ADMIN_USER = "admin"
# The Prefect block every client's results go to (`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`).
RESULTS_BLOCK_SLUG = "flowyard-results"


@dataclass(frozen=True)
class MlflowLogin:
    uri: str
    user: str
    password: str


@dataclass(frozen=True)
class ClientProfile:
    url: str  # the proxy's public URL, without /api
    s3_url: str  # the S3 endpoint clients use (the proxy's S3 port, or an external store)
    auth_string: str  # Prefect `user:password`
    s3_access_key: str
    s3_secret_key: str
    region: str
    code_bucket: str
    results_bucket: str
    # The platform CA (internal TLS); None when the proxy has a public certificate.
    ca_file: Path | None
    # The CA also signs the S3 endpoint (the platform's own store, not an external one).
    ca_signs_s3: bool
    mlflow: MlflowLogin | None

    @classmethod
    def from_context(cls, ctx: Context, ca_file: Path | None = None) -> ClientProfile:
        cfg = ctx.config
        internal = cfg.proxy.tls == "internal"
        own_store = cfg.object_store.kind == "seaweedfs"
        s3_url = cfg.proxy.s3_url if own_store else cfg.object_store.endpoint_url
        assert s3_url is not None  # the config model requires it for external stores
        mlflow = None
        if cfg.mlflow.enabled:
            mlflow = MlflowLogin(
                uri=f"{cfg.proxy.url}{MLFLOW_PREFIX}",
                user=MLFLOW_ADMIN_USER,
                password=ctx.secrets.mlflow_admin_password.get_secret_value(),
            )
        return cls(
            url=cfg.proxy.url,
            s3_url=s3_url,
            auth_string=ctx.secrets.prefect_auth_string.get_secret_value(),
            s3_access_key=ctx.secrets.s3_access_key.get_secret_value(),
            s3_secret_key=ctx.secrets.s3_secret_key.get_secret_value(),
            region=cfg.object_store.region,
            code_bucket=cfg.object_store.code_bucket,
            results_bucket=cfg.object_store.results_bucket,
            ca_file=(ca_file or ctx.paths.ca_cert) if internal else None,
            ca_signs_s3=internal and own_store,
            mlflow=mlflow,
        )
