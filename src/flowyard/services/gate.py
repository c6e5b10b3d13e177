"""The access gate (`flowyard.access.gate`): Caddy's `forward_auth` target for every API, UI,
/files/ and /metrics request, natively and in the compose stack.

Natively uvicorn serves the gate's bare ASGI app on an owner-only Unix socket; in containers
on `PORT` on the private server network (never published). The users file is made here from
secrets.toml's login when missing (the migration: that login becomes the first admin), so an
existing home keeps working unchanged; containers get the home's file through the env file
(docs/containers.md). With `[access.sso]` enabled
the gate also serves the OpenID Connect login pages under /auth/ (flowyard.access.sso), its
settings rendered here to an owner-only file it reads at start (natively only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from flowyard.access.gate import INTERNAL_VAR, SSO_FILE_VAR
from flowyard.client.api import internal_auth_string, local_http
from flowyard.config.context import Context
from flowyard.config.users import ensure_platform_logins
from flowyard.files import write_private
from flowyard.services import postgres
from flowyard.services.base import Service
from flowyard.services.caddyfile import GATE_PORT
from flowyard.services.prefect_api import access_env

NAME = "gate"
MODULE = "flowyard.access.gate:create_app"
# The gate's port in containers; natively it listens on an owner-only Unix socket.
PORT = GATE_PORT
# What a readiness probe sends: the request Caddy forwards for a public route (allowed).
PROBE_HEADERS = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/health"}


def prepare(ctx: Context) -> None:
    ctx.paths.sockets.mkdir(parents=True, exist_ok=True)
    ensure_platform_logins(ctx.paths.users_file, ctx.secrets)
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
    return answers(ctx.paths.socket(NAME))


def answers(sock: Path) -> bool:
    """A gate on `sock` answers a probe the way it answers Caddy (public route: allowed)."""
    try:
        with local_http(sock, timeout=2) as client:
            r = client.get("http://gate/check", headers=PROBE_HEADERS)
            return r.status_code == 200
    except httpx.HTTPError:
        return False


def listen(ctx: Context) -> list[str]:
    if ctx.hosts.use_sockets:
        return ["--uds", str(ctx.paths.socket(NAME))]
    return ["--host", ctx.hosts.bind, "--port", str(PORT)]


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
            *listen(ctx),
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
