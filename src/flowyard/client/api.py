"""A small authenticated HTTP client for the platform's own Prefect API calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from flowyard.config.context import Context


def auth_header(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def local_api_url(ctx: Context) -> str:
    """The API straight on its loopback port: platform bootstrap must not need the proxy."""
    return f"http://{ctx.hosts.prefect_api}:{ctx.config.prefect.port}/api"


@contextmanager
def api_client(ctx: Context, timeout: float = 10) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=local_api_url(ctx),
        headers=auth_header(ctx.secrets.prefect_auth_string.get_secret_value()),
        timeout=timeout,
    ) as client:
        yield client
