"""A small authenticated HTTP client for the platform's own Prefect API calls."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from flowyard.config.model import LOOPBACK
from flowyard.services.base import Context


def auth_header(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


@contextmanager
def api_client(ctx: Context, timeout: float = 10) -> Iterator[httpx.Client]:
    """Talks to the API on loopback: platform bootstrap must not depend on the proxy."""
    with httpx.Client(
        base_url=f"http://{LOOPBACK}:{ctx.config.prefect.port}/api",
        headers=auth_header(ctx.secrets.prefect_auth_string.get_secret_value()),
        timeout=timeout,
    ) as client:
        yield client
