"""`flowyard worker join-file` (on the server) and `flowyard worker join` (on another host)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import typer

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.client.env import DASK_WORKER_ENV
from flowyard.client.joinfile import JoinInfo
from flowyard.config.context import load_context
from flowyard.config.users import load_users
from flowyard.errors import FlowyardError
from flowyard.platform import identities
from flowyard.platform.join import (
    DASK_WORKER_PORT,
    check_connection,
    check_dask,
    contact_host,
    dask_worker_argv,
    default_worker_name,
    join_info,
    joined_worker_env,
)

app = typer.Typer(help="Workers on other machines.", no_args_is_help=True)


@app.command("join-file")
@handle_errors
def join_file(
    out: Path = typer.Option(Path("flowyard-join.toml"), "--out", help="Where to write it (0600)."),
    pool: str | None = typer.Option(None, "--pool", help="Pool the worker serves."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="The worker's login name, for `flowyard worker remove` (default: worker-POOL-xxxxxx).",
    ),
    prefect_only: bool = typer.Option(
        False,
        "--prefect-only",
        help="Only its own Prefect login; the file carries the flows' shared S3 keys and "
        "MLflow login (a compose stack's home, whose S3 and MLflow have no per-user "
        "identities; needs nothing running).",
    ),
    home: Path | None = HomeOption,
) -> None:
    """Write the file a remote worker joins with (URL, CA, its own logins and keys, pool)."""
    ctx = load_context(resolve_home(home))
    info = join_info(ctx, pool or ctx.config.worker.pool)
    # The worker's own login with the `worker` role (never the admin's): revocable alone.
    login_name = name or f"worker-{info.pool}-{secrets.token_hex(3)}".lower()
    if not out.parent.is_dir():
        # Checked before anything is minted (the write itself is checked again below).
        raise FlowyardError(
            f"Cannot write the join file {out}: no directory {out.parent}.",
            fix="Give --out a path in an existing, writable directory.",
        )
    users_existed = ctx.paths.users_file.exists()
    minted = identities.add(ctx, login_name, "worker", prefect_only)
    info.auth_string = minted.prefect_auth_string
    if minted.user.s3_access_key:
        # Its own S3 identity (role worker, the flows' actions) instead of the shared one.
        info.s3_access_key = minted.user.s3_access_key
        info.s3_secret_key = minted.user.s3_secret_key
    if minted.mlflow_password is not None:
        # Its own MLflow login (EDIT on every experiment) instead of the shared `flows` one.
        info.mlflow_user = login_name
        info.mlflow_password = minted.mlflow_password
    try:
        info.write(out)
    except OSError as exc:
        # Nothing half-made: the identities go again (and the users file, if this made it);
        # a failure there must not hide why the file could not be written.
        identities.quietly(lambda: identities.remove(ctx, login_name))
        if not users_existed:
            ctx.paths.users_file.unlink(missing_ok=True)
        raise FlowyardError(
            f"Cannot write the join file {out}: {exc.strerror}.",
            fix="Give --out a path in an existing, writable directory.",
        ) from exc
    console.print(
        f"[green]Wrote[/] {out} (0600) with the login {login_name!r} (role worker). It grants "
        f"access to the platform: copy it safely; `flowyard worker remove {login_name}` revokes it."
    )
    console.print(
        f"On the worker host: [bold]flowyard worker join {info.url} --pool {info.pool} "
        f"--join-file {out.name}[/]"
    )


@app.command("remove")
@handle_errors
def remove(
    name: str = typer.Argument(..., help="The worker's login name (from `join-file`)."),
    home: Path | None = HomeOption,
) -> None:
    """Revoke a joined worker's login, S3 keys and MLflow login: refused within seconds."""
    ctx = load_context(resolve_home(home))
    users = load_users(ctx.paths.users_file)
    if name in users and users[name].role != "worker":
        raise FlowyardError(
            f"{name!r} is a person's login (role {users[name].role}), not a worker's.",
            fix=f"Use `flowyard user remove {name}`.",
        )
    identities.remove(ctx, name)
    console.print(f"[green]Removed[/] the worker login {name}.")


@app.command("join")
@handle_errors
def join(
    url: str | None = typer.Argument(None, help="The platform's public URL (default: from file)."),
    join_file: Path = typer.Option(Path("flowyard-join.toml"), "--join-file"),
    pool: str | None = typer.Option(None, "--pool", help="Work pool (default: from file)."),
    name: str | None = typer.Option(None, "--name", help="Worker name."),
    limit: int | None = typer.Option(None, "--limit", help="Flow runs at once."),
    worker_type: str | None = typer.Option(
        None, "--type", help="Prefect worker type (default: the pool's own type)."
    ),
    home: Path = typer.Option(
        Path.home() / ".flowyard-worker", "--home", envvar="FLOWYARD_WORKER_HOME"
    ),
    check_only: bool = typer.Option(False, "--check", help="Check the connection, then exit."),
    dask: bool = typer.Option(
        False,
        "--dask",
        help="Start a Dask worker for the platform's Dask cluster instead of a Prefect worker.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Dask worker threads (default: this machine's CPU count)."
    ),
    dask_host: str | None = typer.Option(
        None,
        "--dask-host",
        help="Address the platform reaches this Dask worker at (default: this machine's "
        "address on the route to the platform).",
    ),
    dask_port: int = typer.Option(
        DASK_WORKER_PORT, "--dask-port", help="Port this Dask worker listens on (mutual TLS)."
    ),
) -> None:
    """Start a worker on this machine that serves a pool of a remote platform."""
    info = JoinInfo.read(join_file)
    if pool:
        info.pool = pool
    home.mkdir(parents=True, exist_ok=True)
    profile = info.profile(home, url)
    base = profile.url
    env = joined_worker_env(profile, home)
    for line in check_connection(profile, info.pool):
        console.print(f"  [green]✓[/] {line}")
    if dask:
        for line in check_dask(profile):
            console.print(f"  [green]✓[/] {line}")
    if check_only:
        return
    if dask:
        contact = dask_host or contact_host(profile)
        argv = dask_worker_argv(
            profile,
            home,
            name or f"{default_worker_name()}-dask",
            threads,
            contact,
            dask_port,
            contact,
        )
        console.print(f"Starting Dask worker at wss://{contact}:{dask_port} for {base}")
        _exec(home, argv, {**env, **DASK_WORKER_ENV})
    argv = [
        str(Path(sys.executable).parent / "prefect"),
        "worker",
        "start",
        "--pool",
        info.pool,
        # Without --type Prefect starts the pool's own type (for Flowyard's pools, the fast
        # `flowyard` worker this package registers).
        *(["--type", worker_type] if worker_type else []),
        "--name",
        name or default_worker_name(),
        *(["--limit", str(limit)] if limit else []),
    ]
    console.print(f"Starting worker for pool {info.pool!r} at {base}")
    _exec(home, argv, env)


def _exec(home: Path, argv: list[str], env: dict[str, str]) -> None:
    sys.stdout.flush()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "AWS_", "MLFLOW_", "DASK_"))
    }
    os.chdir(home)
    # exec: the worker becomes this process, so signals and exit codes reach it directly.
    os.execve(argv[0], argv, {**clean, **env})
