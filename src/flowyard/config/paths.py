"""Where everything lives under FLOWYARD_HOME; one place so no module invents a path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """`$FLOWYARD_HOME`, else `~/.flowyard`; as root, `/var/lib/flowyard`.

    Root's home is 0700, and PostgreSQL must run as an unprivileged user that needs to reach
    its data directory, so a root install lives where system services keep their state.
    """
    env = os.environ.get("FLOWYARD_HOME")
    if env:
        return Path(env).expanduser().absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/flowyard")
    return Path.home() / ".flowyard"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def config_file(self) -> Path:
        return self.home / "flowyard.toml"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.toml"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        """Rendered configs, sockets and pid files: derived state, safe to delete when down."""
        return self.home / "run"

    @property
    def files(self) -> Path:
        """Served under /files/ by the proxy (the design's static flow files)."""
        return self.home / "files"

    @property
    def users_file(self) -> Path:
        """People's and workers' logins (name, role, argon2 hash of the key), owner-only;
        read by the access gate and the API's websocket check (`flowyard.access`)."""
        return self.home / "users.toml"

    @property
    def mlflow_revoked(self) -> Path:
        """Names whose MLflow login outlived their removal (removed while MLflow was off):
        deleted from MLflow's store at its next start (`services.mlflow.bootstrap`)."""
        return self.home / "mlflow-revoked.txt"

    @property
    def sso_client_secret(self) -> Path:
        """The OpenID Connect client secret (`flowyard user sso-secret`), owner-only; read by
        the access gate when `[access.sso]` is enabled (none: a public client, PKCE only)."""
        return self.home / "sso-client-secret"

    @property
    def sso_settings(self) -> Path:
        """`[access.sso]` as the access gate reads it (rendered at its start), owner-only."""
        return self.run / "sso.json"

    @property
    def ca_cert(self) -> Path:
        """Caddy's root CA, copied where clients can read it."""
        return self.home / "ca" / "root.crt"

    @property
    def dask_pki(self) -> Path:
        """The Dask cluster's CA and certificates (owner-only): the CA's key signs the
        certificates of the scheduler, local workers, the proxy's hop and clients."""
        return self.home / "dask"

    @property
    def caddy_data(self) -> Path:
        return self.data / "caddy"

    @property
    def caddy_root_cert(self) -> Path:
        return self.caddy_data / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def caddyfile(self) -> Path:
        return self.run / "Caddyfile"

    @property
    def supervisor_conf(self) -> Path:
        return self.run / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def supervisor_pid(self) -> Path:
        return self.run / "supervisord.pid"

    @property
    def sockets(self) -> Path:
        """Unix sockets of the internal hops (Caddy's admin API and upstreams, Redis,
        MLflow, the Prefect API, S3): owner-only, so another local user cannot connect
        where a loopback port would have let anyone in."""
        return self.run / "sockets"

    def socket(self, name: str) -> Path:
        return self.sockets / f"{name}.sock"

    @property
    def postgres_sockets(self) -> Path:
        """PostgreSQL's socket directory: owned by the user PostgreSQL runs as (a system
        user on a root install), 0700."""
        return self.run / "postgres"

    @property
    def prefect_home(self) -> Path:
        return self.data / "prefect"

    @property
    def prefect_profiles(self) -> Path:
        """The client profile (`flowyard`) used by the worker and the CLI's children."""
        return self.run / "prefect-profiles.toml"

    @property
    def prefect_server_profiles(self) -> Path:
        """An empty profile for server processes, so a user's ~/.prefect never leaks in."""
        return self.run / "prefect-server-profiles.toml"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def service_data(self, service: str) -> Path:
        return self.data / service
