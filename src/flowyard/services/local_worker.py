"""The local worker: serves the default work pool through the proxy, like any remote worker.

Its environment is a worker's client profile (`flowyard.client.env.worker_client_env`: the
flows' scoped S3 and MLflow credentials, the same profile a joined worker's join file
carries), plus where this machine keeps the worker's state.

Every flow run it starts is its child and inherits its user. On a root install it therefore
runs as an unprivileged system account (`worker.system_user`) that owns only its own state
directory: it can read the public CA certificate, and nothing else of FLOWYARD_HOME
(secrets.toml, run/, logs/ and the other services' data stay their owners' alone).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

from flowyard.client.api import api_client
from flowyard.client.env import worker_client_env
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.services import caddy, worker_python
from flowyard.services.base import Service, binary, ensure_system_user

NAME = "worker"
# The worker's own Prefect profiles file: one empty profile, readable by the worker's user.
# Every setting comes from its environment; the file only keeps another profile (the
# operator's, which holds more) from being read, and must exist for Prefect to start.
PROFILES_FILE = "profiles.toml"
EMPTY_PROFILES = 'active = "worker"\n\n[profiles.worker]\n'


def worker_name(ctx: Context) -> str:
    return f"flowyard-{socket.gethostname()}"


def home(ctx: Context) -> Path:
    return ctx.paths.service_data("worker")


def system_user(ctx: Context) -> str | None:
    """The account the worker and its flow runs run as; None means "as flowyard itself"
    (a non-root install, where there is no more privileged account to step down from)."""
    return ctx.config.worker.system_user if os.geteuid() == 0 else None


def env(ctx: Context) -> dict[str, str]:
    state = home(ctx)
    return {
        **worker_client_env(ctx),
        "PREFECT_HOME": str(state),
        "PREFECT_PROFILES_PATH": str(state / PROFILES_FILE),
    }


def _prepared_mark(ctx: Context) -> Path:
    return ctx.paths.run / "worker.prepared"


def is_registered(ctx: Context) -> bool:
    """Ready once the worker has announced itself to the API for its pool: a heartbeat
    newer than its last start's prepare step, since the API keeps the row of the worker
    that ran before (a warm `up` would otherwise find it at once)."""
    try:
        since = float(_prepared_mark(ctx).read_text())
    except (OSError, ValueError):
        since = 0.0  # none under compose, or made by an older version
    try:
        with api_client(ctx) as client:
            r = client.post(f"/work_pools/{ctx.config.worker.pool}/workers/filter", json={})
    except httpx.HTTPError:
        return False
    if r.status_code != 200:
        return False
    name = worker_name(ctx)
    return any(
        w["name"] == name
        and w.get("last_heartbeat_time")
        and datetime.fromisoformat(w["last_heartbeat_time"]).timestamp() >= since
        for w in r.json()
    )


def _own_python(ctx: Context) -> bool:
    """Whether the worker runs the linked runtime (`worker_python`) instead of this one."""
    return system_user(ctx) is not None and worker_python.needed()


def command(ctx: Context, name: str, limit: str, python: str | None = None) -> list[str]:
    """`prefect worker start` for the configured pool. Without --type Prefect starts the
    pool's own type (for Flowyard's pools, the fast `flowyard` worker). Name and limit are
    parameters: compose names a worker after its container and sizes it to its CPUs.
    `python`: run Prefect's CLI as a module of that interpreter, not the console script."""
    return [
        *([python, "-m", "prefect"] if python else [binary("prefect")]),
        "worker",
        "start",
        "--pool",
        ctx.config.worker.pool,
        "--name",
        name,
        "--limit",
        limit,
    ]


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, uid, gid, follow_symlinks=False)


def _check_reachable(ctx: Context, user: pwd.struct_passwd) -> None:
    """The worker's user must be able to run its Python with Flowyard and Prefect (a venv
    under /root is out of its reach) and read the CA certificate; say so now rather than
    as a crash loop."""
    probe = (
        "import os, sys, flowyard, prefect\n"
        "for p in sys.argv[1:]: os.listdir(p) if os.path.isdir(p) else open(p).close()"
    )
    # This runs while Caddy starts (`prepare_after`): on a first `up` Caddy has not
    # exported the certificate yet, and reading its directory proves the same access.
    ca_path = next((p for p in (ctx.paths.ca_cert, ctx.paths.ca_cert.parent) if p.exists()), None)
    ca = [str(ca_path)] if ca_path else []
    own = _own_python(ctx)
    python = str(worker_python.python(ctx)) if own else sys.executable
    try:
        result = subprocess.run(
            [python, "-c", probe, *ca],
            capture_output=True,
            text=True,
            cwd="/",
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home(ctx)),
                **(worker_python.env(ctx) if own else {}),
            },
            timeout=120,
        )
        problem = "" if result.returncode == 0 else result.stderr.strip()
    except OSError as exc:
        problem = str(exc)
    if problem:
        raise FlowyardError(
            f"The worker runs as {user.pw_name!r}, which cannot run {python} with Flowyard "
            f"and Prefect or read {ctx.paths.ca_cert}: {problem.splitlines()[-1]}",
            fix="Install Flowyard's environment where every user can read it (e.g. a venv "
            "under /opt, not /root), and keep FLOWYARD_HOME traversable (0711).",
        )


def prepare(ctx: Context) -> None:
    _prepare(ctx)
    # What a heartbeat must be newer than for this start's worker to be ready (is_registered).
    mark = _prepared_mark(ctx)
    mark.parent.mkdir(parents=True, exist_ok=True)
    write_private(mark, str(time.time()))


def _prepare(ctx: Context) -> None:
    state = home(ctx)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    profiles = state / PROFILES_FILE
    if not profiles.exists() or profiles.read_text() != EMPTY_PROFILES:
        profiles.write_text(EMPTY_PROFILES)
    name = system_user(ctx)
    if name is None:
        return
    if name in ("root", ctx.config.postgres.system_user):
        raise FlowyardError(
            f"worker.system_user is {name!r}: flow runs would get that account's access "
            "(PostgreSQL's data, or everything).",
            fix="Set worker.system_user to an account of its own (default: flowyard-flows).",
        )
    user = ensure_system_user(name)
    if _own_python(ctx):
        worker_python.ensure(ctx)
    # Its own directory and nothing else; a home made before (or a restore) left it root's.
    if state.stat().st_uid != user.pw_uid or profiles.stat().st_uid != user.pw_uid:
        _chown_tree(state, user.pw_uid, user.pw_gid)
    _check_reachable(ctx, user)


def service(ctx: Context) -> Service:
    cfg = ctx.config.worker
    user = system_user(ctx)
    # supervisor sets no HOME for a `user=` program (it would keep root's): flows' caches
    # (~/.cache, ...) land in the worker's own directory instead.
    own_home = {"HOME": str(home(ctx))} if user else {}
    own = _own_python(ctx)
    python = str(worker_python.python(ctx)) if own else None
    return Service(
        name=NAME,
        description=f"Prefect worker for pool '{cfg.pool}'",
        # It reaches the API through the proxy, into a pool `apply` made; its preflight
        # check (prepare) needs neither and runs while the rest starts.
        after=(caddy.NAME,),
        prepare_after=(),
        command=command(ctx, worker_name(ctx), str(cfg.effective_concurrency), python),
        env={**env(ctx), **own_home, **(worker_python.env(ctx) if own else {})},
        cwd=home(ctx),
        user=user,
        ready=lambda: is_registered(ctx),
        ready_timeout=60,
        # Prefect 3.9's worker ignores SIGTERM: INT asks it to stop; supervisor KILLs the
        # whole process group after stop_wait, so no flow-run child outlives it.
        stop_signal="INT",
        stop_wait=20,
        prepare=lambda: prepare(ctx),
    )
