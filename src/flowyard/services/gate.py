"""The access gate (`flowyard.access.gate`): Caddy's `forward_auth` target for every API, UI,
/files/ and /metrics request. Natively only: the compose stack still checks the one admin
credential in Prefect itself (docs/access.md says what is not done).

uvicorn serves the gate's bare ASGI app on an owner-only Unix socket; the users file is made
here from secrets.toml's login when missing (the migration: that login becomes the first
admin), so an existing home keeps working unchanged. With `[access.sso]` enabled the gate also
serves the OpenID Connect login pages under /auth/ (flowyard.access.sso), its settings rendered
here to an owner-only file it reads at start.
"""

from __future__ import annotations

import json
import sys

import httpx

from flowyard.access.gate import INTERNAL_VAR, SSO_FILE_VAR
from flowyard.client.api import internal_auth_string, local_http
from flowyard.config.context import Context
from flowyard.config.users import ensure_platform_worker, ensure_users_file
from flowyard.files import write_private
from flowyard.services import postgres
from flowyard.services.base import Service
from flowyard.services.prefect_api import access_env

NAME = "gate"
MODULE = "flowyard.access.gate:create_app"


def enabled(ctx: Context) -> bool:
    return ctx.hosts.use_sockets


def prepare(ctx: Context) -> None:
    ctx.paths.sockets.mkdir(parents=True, exist_ok=True)
    admin = ctx.secrets.prefect_auth_string.get_secret_value()
    ensure_users_file(ctx.paths.users_file, admin)
    ensure_platform_worker(
        ctx.paths.users_file, admin, ctx.secrets.get("prefect_worker_auth_string")
    )
    sso = ctx.config.access.sso
    if sso.enabled:
        settings = {
            "issuer": sso.issuer,
            "client_id": sso.client_id,
            # The provider sends the browser back here, through Caddy (services.caddyfile).
            "redirect_uri": f"{ctx.config.proxy.url}/auth/callback",
            "scopes": sso.scopes,
            "groups_claim": sso.groups_claim,
            "roles": sso.roles,
            "session_hours": sso.session_hours,
            "secret_file": str(ctx.paths.sso_client_secret),
        }
        write_private(ctx.paths.sso_settings, json.dumps(settings, indent=2) + "\n")
    else:
        ctx.paths.sso_settings.unlink(missing_ok=True)


def sso_env(ctx: Context) -> dict[str, str]:
    return {SSO_FILE_VAR: str(ctx.paths.sso_settings)} if ctx.config.access.sso.enabled else {}


def is_ready(ctx: Context) -> bool:
    """The gate answers a probe the way it answers Caddy (public route: allowed)."""
    try:
        with local_http(ctx.paths.socket(NAME), timeout=2) as client:
            r = client.get(
                "http://gate/check",
                headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/health"},
            )
            return r.status_code == 200
    except httpx.HTTPError:
        return False


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="Access gate: logins and roles in front of Prefect's API",
        # Its audit writer connects to PostgreSQL (it retries until it can).
        after=(postgres.NAME,),
        command=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            MODULE,
            "--uds",
            str(ctx.paths.socket(NAME)),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={**access_env(ctx), INTERNAL_VAR: internal_auth_string(ctx), **sso_env(ctx)},
        cwd=ctx.paths.run,
        ready=lambda: is_ready(ctx),
        ready_timeout=30,
        prepare=lambda: prepare(ctx),
    )
