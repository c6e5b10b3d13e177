"""The one Prefect name the access layer patches, and the patch.

Prefect 3.9 authenticates websockets in-band: `prefect.server.utilities.subscriptions.
accept_prefect_socket` accepts the socket with the `prefect` subprotocol, reads a first message
`{"type": "auth", "token": ...}` and compares the token with the server's one auth string.
Behind Flowyard's gate that string is internal (only the proxy holds it), while clients send
their own `NAME:KEY` login as the token. `install_socket_check` replaces that function (every
caller reaches it as `subscriptions.accept_prefect_socket`, at call time) with one that speaks
the same protocol but accepts the internal string or a user login whose role may use the
route, and closes the socket once that login is revoked.

Written against Prefect 3.9.1; tests/unit/test_access.py checks the name and its signature.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prefect.server.utilities import subscriptions

NAME = "accept_prefect_socket"
# Parameters Prefect's callers pass (checked by the unit test against the original).
PARAMETERS = ("websocket", "require_prefect_subprotocol", "authentication_failed_reason")


def original() -> Callable[..., Awaitable[Any]]:
    return getattr(subscriptions, "_flowyard_original", getattr(subscriptions, NAME))


def install_socket_check(accept: Callable[..., Awaitable[Any]]) -> None:
    if not hasattr(subscriptions, "_flowyard_original"):
        subscriptions._flowyard_original = getattr(subscriptions, NAME)  # type: ignore[attr-defined]
    setattr(subscriptions, NAME, accept)
