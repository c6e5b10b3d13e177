"""Prefect's API and UI webserver (`--no-services`), and the settings it shares with the
background-services process. Migrations run explicitly before it starts, never on start."""

from __future__ import annotations

import sys

import httpx

from flowyard.access import audit
from flowyard.access.gate import USERS_FILE_VAR
from flowyard.client.api import internal_auth_string, local_api_url, local_http, prefect_api_socket
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.services import postgres, redis
from flowyard.services.base import Service, binary, run_migration, schema_state

NAME = "prefect-api"


def server_env(ctx: Context) -> dict[str, str]:
    """Settings for every Prefect server-side process, rendered from the one config."""
    cfg = ctx.config
    hygiene = cfg.hygiene
    env = {
        "PREFECT_HOME": str(ctx.paths.prefect_home),
        # Keep a user's own ~/.prefect/profiles.toml out of the platform's processes.
        "PREFECT_PROFILES_PATH": str(ctx.paths.prefect_server_profiles),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.database_url(ctx, "prefect"),
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        # Prefect's default pool (5 + 10 overflow) runs dry at ~50 runs submitted at once and
        # the API answers 500, crashing runs; two processes x 30 stays within max_connections.
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "15",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "15",
        "PREFECT_SERVER_API_HOST": ctx.hosts.bind,
        "PREFECT_SERVER_API_PORT": str(cfg.prefect.port),
        # The internal credential, which only the access gate hands upstream.
        "PREFECT_SERVER_API_AUTH_STRING": internal_auth_string(ctx),
        # CSRF needs ambient credentials; there are none: the API answers 401 without a
        # WWW-Authenticate challenge, so browsers never cache the login, and the UI sends it
        # in a header of its own. Off on both sides (client_env.CLIENT_SETTINGS).
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "false",
        # The UI runs in the user's browser, so it must call the API by its public URL.
        "PREFECT_SERVER_UI_API_URL": f"{cfg.proxy.url}/api",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
        "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
        "PREFECT_SERVER_LOGGING_LEVEL": cfg.prefect.log_level,
        "PREFECT_LOGGING_LEVEL": cfg.prefect.log_level,
        # Run hygiene: late runs, and Prefect's vacuum for events and old flow runs.
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": str(hygiene.late_after_seconds),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(
            hygiene.retention.flow_runs_days * 86400
        ),
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"P{hygiene.retention.events_days}D",
        # Prefect's event persister acknowledges an event in Redis when it queues it in
        # memory, and writes the queue 20 events at a time or every 5 s: a kill -9 of the
        # background services lost what it had queued. One at a time, the event is written
        # before it is acknowledged (tests/integration/test_faults.py shows the difference).
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "1",
    }
    env.update(redis.prefect_env(ctx))
    return env


def migrate(ctx: Context) -> None:
    """Apply Prefect's migrations with a timeout, before any server process starts."""
    tail = run_migration(
        "Prefect's database migration",
        [binary("prefect"), "server", "database", "upgrade", "--yes"],
        server_env(ctx),
        ctx.config.prefect.migration_timeout,
        lambda: schema_state("prefect", postgres.alembic_revision(ctx, "prefect")),
        ctx.paths.service_data(NAME) / "schema",
    )
    if tail is not None:
        hint = (
            "The database was migrated by a newer Prefect than this one; install the Flowyard "
            "version that wrote it, or restore a backup taken before the upgrade."
            if "Can't locate revision" in tail
            else "Read the output above; the database was left as it was."
        )
        raise FlowyardError(f"Prefect's database migration failed:\n{tail}", fix=hint)


def health_url(ctx: Context) -> str:
    return f"{local_api_url(ctx)}/health"


def is_ready(ctx: Context) -> bool:
    try:
        with local_http(prefect_api_socket(ctx), timeout=2) as client:
            return client.get(health_url(ctx)).status_code == 200
    except httpx.HTTPError:
        return False


def command(ctx: Context) -> list[str]:
    """The API webserver, as `prefect server start --no-services` runs it (uvicorn with
    Prefect's app factory), but able to listen on a Unix socket, which Prefect's CLI
    cannot: natively nothing else on the machine can reach the API except through Caddy."""
    if ctx.hosts.use_sockets:
        listen = ["--uds", str(prefect_api_socket(ctx))]
    else:
        listen = ["--host", ctx.hosts.bind, "--port", str(ctx.config.prefect.port)]
    # Prefect's factory wrapped for per-user websocket logins and the audit log
    # (flowyard.access.prefect_app), natively and under compose.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "flowyard.access.prefect_app:create_app",
        *listen,
        "--log-level",
        ctx.config.prefect.log_level.lower(),
    ]


def env(ctx: Context) -> dict[str, str]:
    # What `prefect server start --no-services` tells its app factory.
    return {
        **server_env(ctx),
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT__SERVER_WEBSERVER_ONLY": "1",
        **access_env(ctx),
    }


def access_env(ctx: Context) -> dict[str, str]:
    """What the access layer's processes (the gate, the API's wrapper) read: the users file
    and where the audit log goes (docs/access.md)."""
    return {
        USERS_FILE_VAR: str(ctx.paths.users_file),
        audit.DSN_VAR: postgres.database_url(ctx, "prefect", "postgresql"),
        audit.RETENTION_VAR: str(ctx.config.access.audit_retention_days),
    }


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="Prefect API and UI (webserver only)",
        # Its migration (prepare) needs PostgreSQL's databases; it publishes to Redis.
        after=(postgres.NAME, redis.NAME),
        command=command(ctx),
        env=env(ctx),
        cwd=ctx.paths.prefect_home,
        ports={} if ctx.hosts.use_sockets else {"prefect.port": ctx.config.prefect.port},
        ready=lambda: is_ready(ctx),
        ready_timeout=120,
        stop_signal="INT",
        prepare=lambda: migrate(ctx),
    )
