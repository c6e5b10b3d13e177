"""MLflow tracking server: runs and models in PostgreSQL, artifacts in S3, behind /mlflow.

The server proxies artifacts (`--serve-artifacts`), so clients need only the HTTPS URL and
their MLflow credentials, never S3 keys. Authentication is MLflow's own basic-auth app (see
docs/tracking.md for why not the proxy). Tuned for a small machine: one uvicorn worker, no
background job runner (MLflow's defaults idle near 3 GB), and `mlflow server` run through
`mlflow_exec`, so the CLI process becomes the web server instead of idling beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from flowyard.client.api import local_http
from flowyard.client.profile import MLFLOW_ADMIN_USER, MLFLOW_FLOWS_USER, MLFLOW_PREFIX
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.services import postgres, seaweedfs
from flowyard.services.base import Service, run_migration, schema_state

NAME = "mlflow"

PREFIX = MLFLOW_PREFIX
ADMIN_USER = MLFLOW_ADMIN_USER
FLOWS_USER = MLFLOW_FLOWS_USER
# psycopg 3 (SQLAlchemy's `postgresql+psycopg`); the bare `postgresql://` means psycopg2.
DB_DRIVER = "postgresql+psycopg"


def db_url(ctx: Context) -> str:
    return postgres.database_url(ctx, "mlflow", driver=DB_DRIVER)


def auth_config_path(ctx: Context) -> Path:
    return ctx.paths.run / "mlflow-auth.ini"


def socket(ctx: Context) -> Path | None:
    return ctx.paths.socket("mlflow") if ctx.hosts.use_sockets else None


def local_url(ctx: Context) -> str:
    """MLflow itself, not through the proxy (over its socket natively; the address then
    only fills the Host header, which MLflow checks against `allowed_hosts`)."""
    return f"http://{LOOPBACK}:{ctx.config.mlflow.port}{PREFIX}"


def admin_auth(ctx: Context) -> tuple[str, str]:
    return ADMIN_USER, ctx.secrets.mlflow_admin_password.get_secret_value()


def flows_auth(ctx: Context) -> tuple[str, str]:
    return FLOWS_USER, ctx.secrets.get("mlflow_flows_password")


def flask_secret_key(ctx: Context) -> str:
    # The auth app signs CSRF tokens with a static key. Derived from the admin password so it
    # is stable across restarts and needs no extra secret; it reveals nothing about it.
    key = ctx.secrets.mlflow_admin_password.get_secret_value().encode()
    return hmac.new(key, b"flowyard mlflow flask secret key", hashlib.sha256).hexdigest()


def render_auth_config(ctx: Context) -> str:
    # configparser interpolates `%`; the generated passwords have none, but a hand-set one may.
    database_uri = db_url(ctx).replace("%", "%%")
    return "\n".join(
        [
            "[mlflow]",
            # Users created later (one per team or SaaS component) see every experiment and
            # edit their own; the admin grants more.
            "default_permission = READ",
            # Same database as the tracking store: the auth tables and their migration table
            # (alembic_version_auth) have their own names, and one database is one backup.
            f"database_uri = {database_uri}",
            f"admin_username = {ADMIN_USER}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            # One worker holds the cache, and password changes through the API invalidate it
            # there at once, so caching a checked password for a minute is not stale; it
            # spares a PBKDF2 hash on every request (metric batches, artifact chunks).
            "auth_cache_max_size = 1000",
            "auth_cache_ttl_seconds = 60",
            "",
        ]
    )


def public_netloc(ctx: Context) -> str:
    """`host:port` as browsers send it in the Host header (no port for 443)."""
    return urlsplit(ctx.config.proxy.url).netloc


def allowed_hosts(ctx: Context, extra: Sequence[str] = ()) -> list[str]:
    port = ctx.config.mlflow.port
    # The public name through Caddy (which forwards Host unchanged), and loopback for the
    # readiness check; any other Host is refused (DNS rebinding protection). `extra`: other
    # names clients reach Caddy by (compose's workers use Caddy's container name).
    hosts = [public_netloc(ctx), f"{LOOPBACK}:{port}", f"localhost:{port}"]
    return hosts + [h for h in extra if h not in hosts]


def artifacts_destination(ctx: Context) -> str:
    return f"s3://{ctx.config.object_store.artifacts_bucket}/"


def s3_env(ctx: Context) -> dict[str, str]:
    """Server-side S3 access: the server is the only MLflow component that holds S3 keys."""
    store = ctx.config.object_store
    endpoint = (
        f"http://{ctx.hosts.object_store}:{store.s3_port}"
        if store.kind == "seaweedfs"
        else store.endpoint_url
    )
    assert endpoint is not None  # the config model requires it for external stores
    return {
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": ctx.secrets.s3_access_key.get_secret_value(),
        "AWS_SECRET_ACCESS_KEY": ctx.secrets.s3_secret_key.get_secret_value(),
        "AWS_DEFAULT_REGION": store.region,
    }


def server_env(ctx: Context) -> dict[str, str]:
    data = ctx.paths.service_data("mlflow")
    return {
        # Passed by environment, not argv: argv is world-readable in /proc.
        "MLFLOW_BACKEND_STORE_URI": db_url(ctx),
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config_path(ctx)),
        # Creates the admin on an empty user store; `bootstrap` re-syncs it afterwards.
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": ctx.secrets.mlflow_admin_password.get_secret_value(),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key(ctx),
        # The job runner (huey consumers for GenAI evaluation) costs more than the server.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # On-premises: nothing phones home.
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # Artifact uploads are spooled to temp files before they go to S3.
        "TMPDIR": str(data / "tmp"),
        "HOME": str(data),
        **s3_env(ctx),
    }


def command(ctx: Context, extra_hosts: Sequence[str] = ()) -> list[str]:
    cfg = ctx.config
    return [
        sys.executable,
        "-m",
        "flowyard.services.mlflow_exec",
        "server",
        "--host",
        ctx.hosts.bind,
        "--port",
        str(cfg.mlflow.port),
        "--workers",
        "1",
        "--static-prefix",
        PREFIX,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination(ctx),
        "--allowed-hosts",
        ",".join(allowed_hosts(ctx, extra_hosts)),
        # Browsers send Origin on same-origin POSTs too; MLflow blocks unknown origins.
        "--cors-allowed-origins",
        cfg.proxy.url,
        "--app-name",
        "basic-auth",
        # Caddy already writes an access log for every request. Natively uvicorn listens
        # on a Unix socket instead of --host/--port (it prefers --uds when given both).
        "--uvicorn-opts",
        " ".join(["--no-access-log", *(["--uds", str(sock)] if (sock := socket(ctx)) else [])]),
    ]


# `mlflow db upgrade` takes the URL as an argument; this keeps it out of argv.
_MIGRATE = (
    "import os, sys; from mlflow.db import upgrade; "
    "upgrade.main([os.environ['MLFLOW_BACKEND_STORE_URI']], standalone_mode=False)"
)


def migrate(ctx: Context) -> None:
    """Create or upgrade the tracking schema before the server starts (it refuses an old one)."""
    tail = run_migration(
        "MLflow's database migration",
        [sys.executable, "-c", _MIGRATE],
        server_env(ctx),
        ctx.config.prefect.migration_timeout,
        lambda: schema_state("mlflow", postgres.alembic_revision(ctx, "mlflow")),
        ctx.paths.service_data(NAME) / "schema",
    )
    if tail is not None:
        raise FlowyardError(
            f"MLflow's database migration failed:\n{tail}",
            fix="Read the output above; restore a backup if the schema was left half-migrated.",
        )


def prepare(ctx: Context) -> None:
    data = ctx.paths.service_data("mlflow")
    (data / "tmp").mkdir(parents=True, exist_ok=True)
    write_private(auth_config_path(ctx), render_auth_config(ctx))
    migrate(ctx)


def is_ready(ctx: Context) -> bool:
    try:
        with local_http(socket(ctx), timeout=10) as client:
            # /health needs no credentials; the second call proves store, auth and Host checks.
            if client.get(f"{local_url(ctx)}/health", timeout=2).status_code != 200:
                return False
            response = client.get(
                f"{local_url(ctx)}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                auth=admin_auth(ctx),
            )
        # 401: up, but the admin's password differs from secrets.toml; `bootstrap` fixes it.
        return response.status_code in (200, 401)
    except httpx.HTTPError:
        return False


# The admin's password is only used when the user store is empty; afterwards secrets.toml
# (e.g. restored from a backup) wins, like the PostgreSQL roles' passwords do.
_SYNC_ADMIN = (
    "import os; from mlflow.server.auth.config import read_auth_config; "
    "from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore; "
    "s = SqlAlchemyStore(); s.init_db(read_auth_config().database_uri); "
    "s.update_user(os.environ['MLFLOW_AUTH_ADMIN_USERNAME'], "
    "password=os.environ['MLFLOW_AUTH_ADMIN_PASSWORD'], is_admin=True)"
)


# The flow runs' account, straight in the auth store (the tables live in the tracking
# database): for the compose init job, which runs before the server's first start. The
# password travels in the environment, never argv.
_SYNC_FLOWS = (
    "import os; from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore; "
    "s = SqlAlchemyStore(); s.init_db(os.environ['MLFLOW_BACKEND_STORE_URI']); "
    "u, p = os.environ['FLOWYARD_MLFLOW_USER'], os.environ['FLOWYARD_MLFLOW_PASSWORD']; "
    "s.update_user(u, password=p, is_admin=False) if s.has_user(u) "
    "else s.create_user(u, p, is_admin=False)"
)


def _run_store_script(ctx: Context, script: str, what: str, **extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **server_env(ctx), **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise FlowyardError(
            f"Could not {what}: {result.stderr.strip()[-2000:]}",
            fix="Check `flowyard logs mlflow`; the mlflow database may be damaged.",
        )


def sync_flows_user(ctx: Context) -> None:
    """Create MLflow's non-admin `flows` user, or reset its password to secrets.toml's,
    in the auth store (the server need not run: the compose init job)."""
    user, password = flows_auth(ctx)
    # Importing MLflow's auth store reads its auth config; where the server's copy is not
    # there (the init job's container), a private one for this call (it holds the
    # database password: owner-only, removed afterwards).
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "mlflow-auth.ini"
        write_private(config, render_auth_config(ctx))
        _run_store_script(
            ctx,
            _SYNC_FLOWS,
            f"create MLflow's {user!r} user",
            FLOWYARD_MLFLOW_USER=user,
            FLOWYARD_MLFLOW_PASSWORD=password,
            MLFLOW_AUTH_CONFIG_PATH=str(config),
        )


def _sync_flows_user_through_server(ctx: Context) -> None:
    """The same through the running server's API, as its admin: the server then drops its
    cached logins for the user at once (a direct store change would leave the old password
    valid for up to auth_cache_ttl_seconds)."""
    user, password = flows_auth(ctx)
    base = f"{local_url(ctx)}/api/2.0/mlflow/users"
    body = {"username": user, "password": password}
    with local_http(socket(ctx), timeout=30) as client:
        found = client.get(f"{base}/get", params={"username": user}, auth=admin_auth(ctx))
        if found.status_code == 404:
            r = client.post(f"{base}/create", json=body, auth=admin_auth(ctx))
        else:
            found.raise_for_status()
            r = client.patch(f"{base}/update-password", json=body, auth=admin_auth(ctx))
            if r.is_success and found.json()["user"].get("is_admin"):
                r = client.patch(
                    f"{base}/update-admin",
                    json={"username": user, "is_admin": False},
                    auth=admin_auth(ctx),
                )
    if not r.is_success:
        raise FlowyardError(
            f"MLflow refused to set up its {user!r} user: {r.status_code} {r.text[:500]}",
            fix="Check `flowyard logs mlflow`.",
        )


def bootstrap(ctx: Context) -> list[str]:
    probe = f"{local_url(ctx)}/api/2.0/mlflow/experiments/search"
    done = []
    with local_http(socket(ctx), timeout=10) as client:
        admin_ok = client.get(probe, params={"max_results": 1}, auth=admin_auth(ctx)).is_success
        flows_ok = client.get(probe, params={"max_results": 1}, auth=flows_auth(ctx)).is_success
    if not admin_ok:
        _run_store_script(ctx, _SYNC_ADMIN, "reset MLflow's admin password")
        done.append(f"admin password re-synced from {ctx.paths.secrets_file}")
    if not flows_ok:
        # Missing (a home from before flows had their own login) or a changed password.
        _sync_flows_user_through_server(ctx)
        done.append(f"user {FLOWS_USER!r} (flow runs, not an admin) synced from secrets.toml")
    revoked = _revoked(ctx)
    for name in revoked:
        delete_user(ctx, name, missing_ok=True)
    if revoked:
        ctx.paths.mlflow_revoked.unlink()
        done.append(f"deleted the MLflow logins of removed users: {', '.join(revoked)}")
    return done


def revoke_later(ctx: Context, name: str) -> None:
    """Remember that `name`'s MLflow login must go (the user was removed while MLflow was
    off): `bootstrap` deletes it when MLflow next starts (`flowyard up`)."""
    names = _revoked(ctx)
    if name not in names:
        write_private(ctx.paths.mlflow_revoked, "".join(f"{n}\n" for n in [*names, name]))


def _revoked(ctx: Context) -> list[str]:
    try:
        return ctx.paths.mlflow_revoked.read_text().split()
    except FileNotFoundError:
        return []


def service(ctx: Context) -> Service:
    port = ctx.config.mlflow.port
    return Service(
        name=NAME,
        description=f"MLflow tracking server ({ctx.config.proxy.url}{PREFIX})",
        # Its own database and the artifacts bucket; it starts while Prefect's API does.
        after=(postgres.NAME, seaweedfs.NAME),
        command=command(ctx),
        env=server_env(ctx),
        cwd=ctx.paths.service_data("mlflow"),
        ports={} if ctx.hosts.use_sockets else {"mlflow.port": port},
        ready=lambda: is_ready(ctx),
        ready_timeout=120,
        start_secs=3,
        prepare=lambda: prepare(ctx),
        bootstrap=lambda: bootstrap(ctx),
    )


# A Flowyard user's MLflow login (`platform.identities`), by role. MLflow's permissions are
# per experiment, over `default_permission = READ`: a viewer needs no grant; an operator and a
# worker are granted EDIT on the wildcard experiment pattern "*" (MLflow 3's role grants), so
# on every experiment, those made later included: an experiment one worker's run creates
# stays writable by runs on the others. An admin is MLflow's admin. Any MLflow user may also
# create an experiment and then MANAGEs it (MLflow has no permission that forbids it).
ROLE_GRANT = {"viewer": None, "operator": "EDIT", "worker": "EDIT", "admin": None}


def _not_running(ctx: Context, what: str, exc: Exception | None = None) -> FlowyardError:
    return FlowyardError(
        f"MLflow does not answer at {local_url(ctx)} ({exc or 'not running'}): {what} "
        "needs the running server (MLflow keeps its logins in its own store).",
        fix="Start the platform (`flowyard up`), then run the command again; nothing was changed.",
    )


def _api(
    ctx: Context, method: str, path: str, what: str, version: str = "2.0", **kwargs: object
) -> httpx.Response:
    try:
        with local_http(socket(ctx), timeout=30) as client:
            return client.request(
                method,
                f"{local_url(ctx)}/api/{version}/mlflow/{path}",
                auth=admin_auth(ctx),
                **kwargs,  # type: ignore[arg-type]
            )
    except (httpx.HTTPError, OSError) as exc:
        raise _not_running(ctx, what, exc) from exc


def _refused(what: str, r: httpx.Response) -> FlowyardError:
    return FlowyardError(
        f"MLflow refused to {what}: {r.status_code} {r.text[:500]}",
        fix="Check `flowyard logs mlflow`.",
    )


def check_running(ctx: Context, what: str, fix: str | None = None) -> None:
    """Raise the clear error (with `fix`, if given) before anything is changed when the
    server is down."""
    try:
        r = _api(ctx, "GET", "experiments/search", what, params={"max_results": 1})
    except FlowyardError as exc:
        raise FlowyardError(exc.message, fix=fix or exc.fix) from exc
    if not r.is_success:
        raise _refused(what, r)


def create_user(ctx: Context, name: str, password: str, role: str) -> None:
    """An MLflow login `name` with `role`'s permissions (`ROLE_GRANT`); deleted again when a
    step fails, so nothing is left half-made."""
    what = f"create the MLflow login {name!r}"
    r = _api(ctx, "POST", "users/create", what, json={"username": name, "password": password})
    if not r.is_success:
        raise _refused(what, r)
    try:
        if role == "admin":
            body = {"username": name, "is_admin": True}
            r = _api(ctx, "PATCH", "users/update-admin", what, json=body)
            if not r.is_success:
                raise _refused(what, r)
        grant = ROLE_GRANT.get(role)
        if grant:
            body = {
                "username": name,
                "resource_type": "experiment",
                "resource_id": "*",
                "permission": grant,
            }
            r = _api(ctx, "POST", "users/permissions/grant", what, version="3.0", json=body)
            if not r.is_success:
                raise _refused(what, r)
    except BaseException:
        # Its own failure must not hide the error that made the rollback.
        with contextlib.suppress(Exception):
            delete_user(ctx, name, missing_ok=True)
        raise


def delete_user(ctx: Context, name: str, missing_ok: bool = False) -> None:
    """Delete the login and its grants; the server drops its cached logins for it at once."""
    what = f"delete the MLflow login {name!r}"
    r = _api(ctx, "DELETE", "users/delete", what, json={"username": name})
    if r.is_success or (missing_ok and r.status_code == 404):
        return
    raise _refused(what, r)
