"""Start a real platform on free loopback ports in a temporary home (tests, benchmarks).

Nothing is mocked: the same services `flowyard up` runs, stopped afterwards by supervisor,
and every PID checked gone.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from flowyard.config.context import Context
from flowyard.config.load import load_config, write_config
from flowyard.config.model import GRPC_OFFSET
from flowyard.config.paths import Paths
from flowyard.config.secrets import Secrets, write_secrets
from flowyard.platform import lifecycle
from flowyard.services.base import port_free


def free_port(used: set[int], with_grpc: bool = False) -> int:
    """A free loopback port (and, for SeaweedFS, a free port + 10000 too)."""
    # Below Linux's ephemeral range (32768+), where outgoing connections would collide;
    # SeaweedFS's ports sit low enough that their +10000 gRPC twins stay below it too.
    low, high = (10000, 21999) if with_grpc else (22000, 32000)
    for _ in range(2000):
        port = random.randint(low, high)
        candidates = [port, port + GRPC_OFFSET] if with_grpc else [port]
        if any(p in used for p in candidates):
            continue
        if all(port_free(p) for p in candidates):
            used.update(candidates)
            return port
    raise RuntimeError("no free port found")


def free_port_run(used: set[int], count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(2000):
        port = random.randint(22000, 32000 - count)
        run = range(port, port + count)
        if not any(p in used for p in run) and all(port_free(p) for p in run):
            used.update(run)
            return port
    raise RuntimeError("no free port run found")


def free_port_config(home: Path, **overrides: Any) -> dict[str, Any]:
    used: set[int] = set()
    store = {
        name: free_port(used, with_grpc=True)
        for name in ("s3_port", "master_port", "volume_port", "filer_port", "admin_port")
    }
    data: dict[str, Any] = {
        "proxy": {
            n: free_port(used) for n in ("https_port", "http_port", "s3_https_port", "admin_port")
        },
        "postgres": {"port": free_port(used)},
        "redis": {"port": free_port(used)},
        "prefect": {"port": free_port(used)},
        "object_store": store,
        "mlflow": {"port": free_port(used), "enabled": False},
        # Off unless a test turns it on; its ports free either way (worker_port: room for 4).
        "dask": {
            "https_port": free_port(used),
            "scheduler_port": free_port(used),
            "worker_port": free_port_run(used, 4),
        },
        # Two flow runs at once is plenty for tests on a 2-core machine.
        "worker": {"concurrency": 2},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def init_home(home: Path, **overrides: Any) -> Context:
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # Temp dirs are 0700; PostgreSQL's unprivileged user must pass through them.
        for parent in home.parents:
            if parent.owner() == "root" and str(parent).startswith(tempfile.gettempdir() + "/"):
                parent.chmod(parent.stat().st_mode | 0o011)
    import tomli_w

    Paths(home).config_file.write_text(tomli_w.dumps(free_port_config(home, **overrides)))
    config = load_config(home)
    write_config(config)
    secrets = Secrets.generate()
    write_secrets(Paths(home).secrets_file, secrets)
    return Context(config=config, secrets=secrets)


def platform_pids(ctx: Context) -> set[int]:
    """supervisord and every process below it."""
    from flowyard.platform.supervisor import Supervisor

    pid = Supervisor(ctx.paths).pid()
    if pid is None:
        return set()
    try:
        proc = psutil.Process(pid)
        return {pid, *(c.pid for c in proc.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


@contextmanager
def running_platform(home: Path, **overrides: Any) -> Iterator[Context]:
    """`flowyard up` on free ports; on exit `flowyard down`, then make sure nothing is left."""
    # A test runner's own PREFECT_*/AWS_* must not leak into the platform's processes.
    ctx = init_home(home, **overrides)
    pids: set[int] = set()
    try:
        lifecycle.up(ctx, lambda *_: None)
        pids = platform_pids(ctx)
        yield ctx
    finally:
        stop_platform(ctx, pids)


def stop_platform(ctx: Context, known_pids: set[int] | None = None) -> None:
    """`flowyard down`, then make sure every process it had (and any known before) is gone."""
    pids = platform_pids(ctx) | (known_pids or set())
    lifecycle.down(ctx, lambda *_: None)
    for pid in pids:
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            os.kill(pid, 9)
