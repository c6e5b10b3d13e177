"""The access gate: Caddy asks it about every API, UI-API, /files/ and /metrics request
(`forward_auth`), and it answers allow (2xx) or refuse (401/403) by the caller's role.

Stock Prefect checks one shared auth string itself. Here Prefect keeps that check with an
internal credential only the proxy holds: on "allow" the gate hands Caddy the internal
`Authorization` header to send upstream (`copy_headers`), plus the caller's name for the audit
log. A refused request never reaches Prefect; its refusal is written to the audit log here.

It is a bare ASGI app (no framework) served by uvicorn on an owner-only Unix socket: a
decision with a cached login costs a dictionary lookup and a few regex matches.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flowyard.access import audit
from flowyard.access.logins import Logins, TooManyFailures
from flowyard.access.matrix import PUBLIC, Decision, decide, websocket_class

USERS_FILE_VAR = "FLOWYARD_USERS_FILE"
# The internal credential, in the environment supervisord's 0600 config gives the gate (as it
# gives Prefect's API the same string), never on a command line.
INTERNAL_VAR = "FLOWYARD_INTERNAL_AUTH"
USER_HEADER = "x-flowyard-user"
ROLE_HEADER = "x-flowyard-role"
# On the gate's own refusals, so a client (and the tests) can tell them from Prefect's.
REFUSED_HEADER = "x-flowyard-refused"
API_PREFIX = "/api"
# Where Caddy's forward_auth asks (services.caddyfile); the gate answers nothing else there.
CHECK_PATH = "/check"
# Names the SSO settings file (flowyard.access.sso); absent when SSO is off.
SSO_FILE_VAR = "FLOWYARD_SSO_FILE"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Gate:
    def __init__(self, users_file: Path, internal_auth: str, writer: audit.AuditWriter | None):
        self.logins = Logins(users_file)
        self.internal = "Basic " + base64.b64encode(internal_auth.encode()).decode()
        self.writer = writer
        # SSO (flowyard.access.sso), when `[access.sso]` is enabled: its pages under /auth/
        # are proxied here by Caddy without forward_auth.
        self.sso: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.sso is not None and scope["type"] == "http" and scope["path"].startswith("/auth/"):
            status, out, body = await self.sso.handle(
                scope["method"], scope["path"], scope.get("query_string", b"").decode(), headers
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k.encode(), v.encode("latin-1")) for k, v in out.items()],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"] != CHECK_PATH:
            # Only Caddy's forward_auth question is answered: an allow carries the internal
            # credential for Caddy to send upstream, so a request Caddy merely proxies here
            # (SSO's /auth/*, a websocket to any path) must never get one back.
            await _not_found(scope, send)
            return
        method = headers.get("x-forwarded-method", "GET").upper()
        uri = urlsplit(headers.get("x-forwarded-uri", "/"))
        path = unquote(uri.path)
        status, out = await self.decide(method, path, uri.query, headers)
        body = b"" if status < 300 else json.dumps({"detail": out.pop("x-detail", "")}).encode()
        # Caddy's forward_auth copies the whole request, a websocket upgrade's headers too,
        # so uvicorn hands an upgrade here as a websocket: it is answered with a plain HTTP
        # response all the same (ASGI's websocket denial response), which is what Caddy reads.
        kind = "http" if scope["type"] == "http" else "websocket.http"
        await send(
            {
                "type": f"{kind}.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode("latin-1")) for k, v in out.items()],
            }
        )
        await send({"type": f"{kind}.response.body", "body": body})

    async def decide(
        self, method: str, path: str, query: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str]]:
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            api_path = path[len(API_PREFIX) :] or "/"
            ws = websocket_class(api_path) if method == "GET" else None
            if ws is not None:
                # Websockets authenticate in-band, inside Prefect's protocol (the events
                # subscriber sends no Authorization on the upgrade): the API checks the login
                # and this role there (flowyard.access.prefect_app). Nothing is added here.
                return 200, {USER_HEADER: "-"}
            decision = decide(method, api_path, query)
        else:
            # /files/ and /metrics: reads for any login; nothing else is served there.
            decision = Decision(
                f"{method} {path}", "read" if method in ("GET", "HEAD") else "admin"
            )
        if decision.klass == PUBLIC:
            return 200, {USER_HEADER: "-"}
        try:
            user = await self.logins.check_request(headers)
        except TooManyFailures as exc:
            self._audit("-", method, decision.route, path, 429)
            return 429, {
                "content-type": "application/json",
                "retry-after": str(exc.seconds),
                REFUSED_HEADER: "login",
                "x-detail": f"Flowyard: too many failed logins from this address; retry in "
                f"{exc.seconds} s.",
            }
        if user is None:
            self._audit("-", method, decision.route, path, 401)
            # No WWW-Authenticate challenge, as Prefect itself answers: browsers keep no
            # ambient login (docs/security.md).
            return 401, {
                "content-type": "application/json",
                REFUSED_HEADER: "login",
                "x-detail": "Flowyard: a valid login is required (user:key, basic auth).",
            }
        if not decision.allows(user.role):
            self._audit(user.name, method, decision.route, path, 403)
            return 403, {
                "content-type": "application/json",
                REFUSED_HEADER: "role",
                "x-detail": f"Flowyard: role {user.role!r} of {user.name!r} may not call "
                f"{decision.route} (docs/access.md).",
            }
        return 200, {"authorization": self.internal, USER_HEADER: user.name, ROLE_HEADER: user.role}

    def _audit(self, user: str, method: str, route: str, path: str, status: int) -> None:
        if self.writer is not None:
            self.writer.record(user, method, route, path, status, "gate")


async def _not_found(scope: Scope, send: Send) -> None:
    kind = "http" if scope["type"] == "http" else "websocket.http"
    headers = [(b"content-type", b"application/json")]
    await send({"type": f"{kind}.response.start", "status": 404, "headers": headers})
    await send({"type": f"{kind}.response.body", "body": b'{"detail": "Not Found"}'})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app() -> Gate:
    """uvicorn's factory: settings from the environment the service description renders."""
    env = dict(os.environ)
    gate = Gate(Path(env[USERS_FILE_VAR]), env[INTERNAL_VAR], audit.writer_from_env(env))
    if env.get(SSO_FILE_VAR):
        # Imported only then: authlib is not needed by a gate without SSO.
        from flowyard.access.sso import sso_from_env

        gate.sso = sso_from_env(env, Path(env[USERS_FILE_VAR]), gate.logins, gate.writer)
    return gate
