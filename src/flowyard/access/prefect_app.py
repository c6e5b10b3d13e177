"""Prefect's API app as Flowyard serves it: Prefect's own factory, plus two things.

1. Websockets accept per-user logins. Prefect checks a websocket's first message against its
   one auth string; here (`accept_socket`) the token may also be a user's `NAME:KEY` whose role
   may use that route (`matrix.WEBSOCKETS`), and a socket is closed within `REVOKE_CHECK_S`
   once its user is removed or re-keyed. HTTP requests are authorized by the gate before they
   get here; Prefect's own HTTP check of the internal credential stays on behind it.
2. The audit log of mutations: every non-GET request under /api that Prefect answers is
   recorded with the user the gate named (`X-Flowyard-User`, set by the gate on every request
   it lets through), the route, the object id and the status Prefect answered.

uvicorn runs `flowyard.access.prefect_app:create_app` as its factory, in place of
`prefect.server.api.server:create_app` (services/prefect_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from pathlib import Path
from typing import Any

from flowyard.access import audit
from flowyard.access.gate import USER_HEADER, USERS_FILE_VAR, Receive, Scope, Send
from flowyard.access.logins import Logins
from flowyard.access.matrix import CLASSES, audited, decide, is_mutation, websocket_class

REVOKE_CHECK_S = 1.0
# WebSocket close codes (RFC 6455): protocol error, policy violation.
WS_PROTOCOL_ERROR = 1002
WS_POLICY_VIOLATION = 1008
log = logging.getLogger("flowyard.access")


def _api_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    return path[4:] if path.startswith("/api/") else path


def make_socket_check(logins: Logins, internal: str | None) -> Any:
    """Prefect's `accept_prefect_socket`, for per-user logins (see the module docstring)."""
    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

    async def accept_socket(
        websocket: WebSocket,
        *,
        require_prefect_subprotocol: bool = False,
        authentication_failed_reason: str | None = None,
    ) -> WebSocket | None:
        protocols = [
            p.strip()
            for header in websocket.headers.getlist("Sec-WebSocket-Protocol")
            for p in header.split(",")
        ]
        if "prefect" not in protocols:
            # Auth is always configured behind the gate: no legacy, unauthenticated mode.
            await websocket.close(
                WS_POLICY_VIOLATION if require_prefect_subprotocol else WS_PROTOCOL_ERROR,
                reason=authentication_failed_reason,
            )
            return None
        await websocket.accept(subprotocol="prefect")
        try:
            message = await websocket.receive_json()
        except (WebSocketDisconnect, RuntimeError, ValueError):
            return None
        token = message.get("token") if isinstance(message, dict) else None
        if not isinstance(message, dict) or message.get("type") != "auth" or not token:
            await websocket.close(
                WS_POLICY_VIOLATION, reason=authentication_failed_reason or "Expected 'auth'"
            )
            return None
        if internal and hmac.compare_digest(str(token).encode(), internal.encode()):
            await websocket.send_json({"type": "auth_success"})
            return websocket
        user = logins.check(str(token), verify=False) or await asyncio.to_thread(
            logins.check, str(token)
        )
        klass = websocket_class(_api_path(websocket.scope)) or "admin"
        if user is None or user.role not in CLASSES[klass]:
            reason = "Invalid token" if user is None else f"role {user.role!r} may not use this"
            await websocket.close(
                WS_POLICY_VIOLATION, reason=authentication_failed_reason or reason
            )
            return None
        await websocket.send_json({"type": "auth_success"})

        async def watch() -> None:
            # Revocation reaches open sockets too: checked each second, closed when gone.
            while websocket.application_state == WebSocketState.CONNECTED:
                await asyncio.sleep(REVOKE_CHECK_S)
                if not logins.current(user):
                    with contextlib.suppress(Exception):
                        await websocket.close(WS_POLICY_VIOLATION, reason="login revoked")
                    return

        task = asyncio.get_running_loop().create_task(watch())
        _watchers.add(task)
        task.add_done_callback(_watchers.discard)
        return websocket

    return accept_socket


_watchers: set[asyncio.Task[None]] = set()


class AuditMiddleware:
    """Records each mutation Prefect answered (see the module docstring)."""

    def __init__(self, app: Any, writer: audit.AuditWriter | None) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        if (
            self.writer is None
            or scope["type"] != "http"
            or not is_mutation(method)
            or not path.startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        decision = decide(method, path[4:])
        if not audited(decision):
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # No name: a call on the API's socket, not through the gate (the platform itself).
            user = "(platform)"
            for key, value in scope.get("headers", []):
                if key.decode().lower() == USER_HEADER:
                    user = value.decode("latin-1")
            api_path = path[4:]
            assert self.writer is not None
            self.writer.record(
                user, method, decide(method, api_path).route, api_path, status, "api"
            )


def create_app() -> Any:
    """uvicorn's factory (the environment is what services/prefect_api.py renders)."""
    from prefect.server.api.server import create_app as prefect_create_app

    from flowyard.access.prefect_private import install_socket_check

    internal = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    install_socket_check(make_socket_check(Logins(Path(os.environ[USERS_FILE_VAR])), internal))
    return AuditMiddleware(prefect_create_app(), audit.writer_from_env(dict(os.environ)))
