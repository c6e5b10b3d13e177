"""A small authenticated HTTP client for the platform's own Prefect API calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from flowyard.config.context import Context


def auth_header(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def internal_auth_string(ctx: Context) -> str:
    """The credential Prefect's API itself checks: the internal one only the access gate
    hands upstream (docs/access.md), natively and under compose."""
    return ctx.secrets.get("prefect_internal_auth_string")


def local_api_url(ctx: Context) -> str:
    """The API itself, not through the proxy: on its socket natively (the host and port in
    the URL then only fill the Host header), on its container's address under compose."""
    return f"http://{ctx.hosts.prefect_api}:{ctx.config.prefect.port}/api"


def prefect_api_socket(ctx: Context) -> Path | None:
    return ctx.paths.socket("prefect-api") if ctx.hosts.use_sockets else None


def local_http(socket: Path | None, **kwargs: Any) -> httpx.Client:
    """An HTTP client for an internal service: over its Unix socket when it has one."""
    transport = httpx.HTTPTransport(uds=str(socket)) if socket else None
    return httpx.Client(transport=transport, **kwargs)


@contextmanager
def api_client(ctx: Context, timeout: float = 10) -> Iterator[httpx.Client]:
    """The platform's own calls to the API (readiness, tests, upgrades)."""
    with local_http(
        prefect_api_socket(ctx),
        base_url=local_api_url(ctx),
        headers=auth_header(internal_auth_string(ctx)),
        timeout=timeout,
    ) as client:
        yield client
