"""What every platform service knows about itself.

A `Service` is a plain description (command line, environment, data directory, readiness
check, stop signal). The supervisor config is rendered from these, and `flowyard up` walks
them in order, so there is one definition per service and nothing else starts processes.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flowyard.config.model import LOOPBACK
from flowyard.errors import FlowyardError
from flowyard.files import write_private


def no_probe() -> bool:
    """The readiness of a service with no probe of its own: `up` waits until supervisord
    calls it RUNNING, that is until it has stayed up `start_secs`."""
    return True


@dataclass
class Service:
    name: str
    command: list[str]
    description: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    # Ports this service binds, by the setting that moves each (for "port taken" errors).
    ports: dict[str, int] = field(default_factory=dict)
    # A probe of the service itself (a health endpoint, a query). `up` trusts it as soon as
    # it answers, without waiting out supervisord's `start_secs`.
    ready: Callable[[], bool] = no_probe
    ready_timeout: float = 90.0
    # Seconds a process must stay up before supervisor calls it started.
    start_secs: int = 1
    # Starts supervisor retries when the process dies within start_secs, each one second
    # later than the one before, before it gives up on the service (FATAL).
    start_retries: int = 3
    stop_signal: str = "TERM"
    stop_wait: int = 20
    # Runs before the process starts (initdb, config files); must be idempotent.
    prepare: Callable[[], None] | None = None
    # Services that must be ready (bootstrapped) before this one's process starts, and
    # before its prepare step runs (`prepare_after`, when that needs less). `up` starts
    # everything else at the same time (`platform.startup`); the catalog lists each
    # service after its dependencies, and compose's depends_on holds the same edges.
    after: tuple[str, ...] = ()
    prepare_after: tuple[str, ...] | None = None
    # Runs once the service is ready (databases, buckets, pools); must be idempotent.
    # May return lines worth showing the user.
    bootstrap: Callable[[], list[str] | None] | None = None
    # Names a condition that breaks the service while its process looks fine (a full disk),
    # for `flowyard status`; None when there is none.
    problem: Callable[[], str | None] | None = None


def disk_full(path: Path, what: str) -> str | None:
    """A clear "disk full" for `path`'s filesystem: below 1 % or 32 MB free, whichever is
    more (SeaweedFS turns its volumes read-only below 1 %, PostgreSQL stops writing at 0)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    if usage.free >= max(usage.total // 100, 32 << 20):
        return None
    return (
        f"{what}'s disk is full: {usage.free / 1e6:.1f} MB free of {usage.total / 1e9:.2f} GB "
        f"at {path}; writes fail until space is freed"
    )


def binary(name: str) -> str:
    """A console script installed beside this interpreter (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise FlowyardError(
            f"The `{name}` program is not installed.",
            fix="Install Flowyard with its dependencies: `pip install -e .` (or `make up`).",
        )
    return found


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host != "0.0.0.0" else "", port))
        except OSError:
            return False
        return True


# Services are prepared on threads of their own (`platform.startup`), some for one account.
_USERADD = threading.Lock()


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The unprivileged account a service runs as under a root install; created if missing."""
    with _USERADD:
        return _ensure_system_user(name)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            text=True,
            # `up` runs with umask 077; the account databases useradd rewrites stay readable.
            umask=0o022,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise FlowyardError(
            f"Could not create the system user {name!r} a service runs as: {detail.strip()}",
            fix=f"Create it yourself (`useradd --system {name}`) or set postgres.system_user "
            "(PostgreSQL) or worker.system_user (the worker) to an existing unprivileged user.",
        ) from exc
    return pwd.getpwnam(name)


def schema_state(package: str, revision: str | None) -> str | None:
    """What a finished migration leaves: the package that migrated and the revision it left
    (None when the database has no schema yet, so the migration always runs)."""
    if revision is None:
        return None
    return f"{package} {importlib.metadata.version(package)} at {revision}\n"


def run_migration(
    what: str,
    argv: list[str],
    env: dict[str, str],
    timeout: int,
    schema: Callable[[], str | None],
    marker: Path,
) -> str | None:
    """Run a schema migration with a timeout; None when it succeeded, else its output's tail.

    Both Prefect's and MLflow's migrations go through here, so a hung one is always stopped
    and named the same way; the caller words the failure, which differs per schema.

    Skipped when `schema()` (the package's version and the database's revision) is what
    `marker` recorded after the last migration: the migration would change nothing, and
    starting its interpreter costs several seconds of every `up`. A new package version, a
    restored or changed database, or no marker yet: it runs.
    """
    before = schema()
    if before is not None and marker.exists() and marker.read_text() == before:
        return None
    try:
        result = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise FlowyardError(
            f"{what} did not finish in {timeout} s.",
            fix="Raise prefect.migration_timeout, or check `flowyard logs postgres` for locks.",
        ) from exc
    if result.returncode != 0:
        marker.unlink(missing_ok=True)
        return "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
    after = schema()
    if after is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_private(marker, after)
    return None
