"""Fixtures that start the real platform (no mocks) on free loopback ports."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowyard.platform.client_env import child_env
from flowyard.services.base import Context
from flowyard.testing import running_platform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """One shared platform for the tests that do not stop or break it."""
    with running_platform(tmp_path_factory.mktemp("shared") / "home") as ctx:
        yield ctx


def run_client(ctx: Context, code: str, timeout: float = 300, **env: str) -> Any:
    """Run Python as a platform client (through the proxy, TLS verified); return its last
    stdout line parsed as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(ctx, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def flowyard_cli(
    ctx: Context, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flowyard"), *args, "--home", str(ctx.config.home)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
