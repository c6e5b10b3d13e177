"""Fixtures that start the real platform (no mocks) on free loopback ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.testing import running_platform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def homes() -> Iterator[Callable[[str], Path]]:
    """Fresh FLOWYARD_HOMEs, removed at the end.

    Not pytest's tmp_path: pytest resets its base dir to 0700 and prunes old numbered dirs
    at every session start, which breaks a running platform whose PostgreSQL runs as an
    unprivileged user (root installs) or whose data sits in a pruned dir.
    """
    base = Path(tempfile.mkdtemp(prefix="flowyard-test-"))
    base.chmod(0o711)
    counter = iter(range(1000))

    def make(tag: str) -> Path:
        return base / f"{tag}-{next(counter)}" / "home"

    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def platform(homes: Callable[[str], Path]) -> Iterator[Context]:
    """One shared platform for the tests that do not stop or break it."""
    with running_platform(homes("shared")) as ctx:
        yield ctx


def run_client(ctx: Context, code: str, *, timeout: float = 300, **env: str) -> Any:
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
