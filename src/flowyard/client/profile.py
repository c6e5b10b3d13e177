"""`ClientProfile`: what a client needs to reach the platform through the proxy.

Two sources make one: the platform's own context (the server's local worker, `flowyard env`,
compose) and a join file (a worker on another host). Anything one of them knows that the
other does not is a bug: a flow must behave the same whichever worker runs it.

Two kinds of profile: the operator's (`from_context`: `flowyard env`, deploys, apply) holds
the admin credentials; a worker's (`for_workers`: the local worker, join files, compose
workers, and so every flow run) holds the flows' scoped ones: an S3 identity limited to
reading the code bucket and writing results, and MLflow's non-admin `flows` user. Behind the
access gate (docs/access.md) a worker's Prefect login is a `worker` one too: the platform
workers' own (`prefect_worker_auth_string`), or the one `worker join-file` mints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowyard.config.context import Context

# MLflow is served under this prefix of the platform's one origin.
MLFLOW_PREFIX = "/mlflow"
# MLflow's basic-auth admin: the operator's login.
MLFLOW_ADMIN_USER = "admin"
# MLflow's non-admin account for flow runs (workers): it creates experiments and logs to the
# runs it creates; other experiments it can only read (`default_permission = READ`).
MLFLOW_FLOWS_USER = "flows"
# The Prefect block every client's results go to (`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`).
RESULTS_BLOCK_SLUG = "flowyard-results"


@dataclass(frozen=True)
class MlflowLogin:
    uri: str
    user: str
    password: str


# The Dask cluster's client credential (a certificate issued by the platform's Dask CA), in
# the directory of the Dask processes and the local worker (`services.dask`).
DASK_DATA = "dask"
DASK_CLIENT_CERT = "client.crt"
DASK_CLIENT_KEY = "client.key"
DASK_CA_CERT = "ca.crt"


@dataclass(frozen=True)
class DaskLogin:
    """How a Dask client reaches the platform's scheduler: through the proxy (wss://), with
    a client certificate the proxy verifies (Dask has no passwords)."""

    address: str  # wss://host:port
    cert_file: Path
    key_file: Path
    # Verifies the proxy's certificate (the platform CA, or public roots with ACME); a joined
    # Dask worker's also holds the Dask CA, which signs the peers that connect to it.
    ca_file: Path
    # The Dask CA itself (what a join file carries for a joined worker's peers).
    cluster_ca_file: Path | None = None


def dask_address(url_host: str, port: int) -> str:
    return f"wss://{url_host}:{port}"


def _public_roots() -> Path:
    # With an ACME certificate Dask still needs a CA file (it builds no TLS context without
    # one): the public roots httpx and boto3 use.
    import certifi

    return Path(certifi.where())


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
    dask: DaskLogin | None = None

    @classmethod
    def from_context(cls, ctx: Context, ca_file: Path | None = None) -> ClientProfile:
        """The operator's profile: admin S3 keys and the MLflow admin (`flowyard env`)."""
        return cls._build(
            ctx,
            ca_file,
            auth_string=ctx.secrets.prefect_auth_string.get_secret_value(),
            s3_keys=(ctx.secrets.get("s3_access_key"), ctx.secrets.get("s3_secret_key")),
            mlflow_login=(MLFLOW_ADMIN_USER, ctx.secrets.get("mlflow_admin_password")),
            dask_dir=ctx.paths.dask_pki,
        )

    @classmethod
    def for_workers(cls, ctx: Context, ca_file: Path | None = None) -> ClientProfile:
        """A worker's profile, which every flow run it starts inherits: the scoped S3
        identity and MLflow's non-admin `flows` user. With an external store the platform
        cannot mint keys, so the secrets file's keys are used as they are (scope them at
        the store)."""
        own_store = ctx.config.object_store.kind == "seaweedfs"
        s3 = ("s3_flows_access_key", "s3_flows_secret_key") if own_store else None
        return cls._build(
            ctx,
            ca_file,
            # The platform workers' own login (role `worker`), checked by the access gate.
            auth_string=ctx.secrets.get("prefect_worker_auth_string"),
            s3_keys=(
                (ctx.secrets.get(s3[0]), ctx.secrets.get(s3[1]))
                if s3
                else (ctx.secrets.get("s3_access_key"), ctx.secrets.get("s3_secret_key"))
            ),
            mlflow_login=(MLFLOW_FLOWS_USER, ctx.secrets.get("mlflow_flows_password")),
            # The copy the Dask processes' and the worker's account can read.
            dask_dir=ctx.paths.service_data(DASK_DATA),
        )

    @classmethod
    def _build(
        cls,
        ctx: Context,
        ca_file: Path | None,
        auth_string: str,
        s3_keys: tuple[str, str],
        mlflow_login: tuple[str, str],
        dask_dir: Path,
    ) -> ClientProfile:
        cfg = ctx.config
        internal = cfg.proxy.tls == "internal"
        own_store = cfg.object_store.kind == "seaweedfs"
        s3_url = cfg.proxy.s3_url if own_store else cfg.object_store.endpoint_url
        assert s3_url is not None  # the config model requires it for external stores
        mlflow = None
        if cfg.mlflow.enabled:
            mlflow = MlflowLogin(
                uri=f"{cfg.proxy.url}{MLFLOW_PREFIX}",
                user=mlflow_login[0],
                password=mlflow_login[1],
            )
        ca = (ca_file or ctx.paths.ca_cert) if internal else None
        dask = None
        if cfg.dask.enabled:
            dask = DaskLogin(
                address=dask_address(cfg.proxy.url_host, cfg.dask.https_port),
                cert_file=dask_dir / DASK_CLIENT_CERT,
                key_file=dask_dir / DASK_CLIENT_KEY,
                ca_file=ca or _public_roots(),
                cluster_ca_file=dask_dir / DASK_CA_CERT,
            )
        return cls(
            url=cfg.proxy.url,
            s3_url=s3_url,
            auth_string=auth_string,
            s3_access_key=s3_keys[0],
            s3_secret_key=s3_keys[1],
            region=cfg.object_store.region,
            code_bucket=cfg.object_store.code_bucket,
            results_bucket=cfg.object_store.results_bucket,
            ca_file=ca,
            ca_signs_s3=internal and own_store,
            mlflow=mlflow,
            dask=dask,
        )
