"""`flowyard render compose`: the container deployment files, from the same config as native
mode (see `flowyard.compose.render`); `flowyard render kubernetes`: a cluster's worker for a
kubernetes pool (see `flowyard.kubernetes.render`)."""

from __future__ import annotations

from pathlib import Path

import typer

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.compose.render import DEV_FILE, ENV_FILE, PROD_FILE, write_files
from flowyard.config.context import load_context
from flowyard.config.load import load_config
from flowyard.config.paths import Paths, default_home
from flowyard.config.secrets import load_secrets
from flowyard.config.users import ensure_platform_logins, load_users, users_text
from flowyard.kubernetes.pods import pool_namespace
from flowyard.kubernetes.render import (
    CONFIGMAP_FILE,
    SECRET_FILE,
    VALUES_FILE,
    kubernetes_pool,
)
from flowyard.kubernetes.render import write_files as k8s_write_files

app = typer.Typer(
    name="render",
    help="Write deployment files rendered from the flowyard config.",
    no_args_is_help=True,
)


@app.command("compose")
@handle_errors
def compose(
    out: Path = typer.Option(
        Path("deploy/compose"), "--out", help="Directory to write into (created if missing)."
    ),
    home: Path | None = HomeOption,
    env_file: bool = typer.Option(
        False,
        "--env-file",
        help=f"Also write {ENV_FILE} (mode 0600) with this home's secrets, for running the "
        "files on this machine. Never commit it.",
    ),
) -> None:
    """Write docker compose files (development and production), Caddyfiles and .env.example."""
    home = resolve_home(home) or default_home()
    paths = Paths(home)
    # Without flowyard.toml the defaults apply: that is how the committed files are made.
    config = load_config(home, require_file=False)
    secrets = load_secrets(paths.secrets_file) if env_file else None
    # The containers' logins: this home's users.toml (made from secrets.toml's admin login
    # when missing, with the platform workers' login, as `flowyard up` does), carried in .env
    # (docs/containers.md).
    users = ""
    if secrets is not None:
        ensure_platform_logins(paths.users_file, secrets)
        # Without the S3 secret keys: the containers only check logins.
        users = users_text(load_users(paths.users_file), s3=False)
    source = paths.config_file if paths.config_file.exists() else "defaults (no flowyard.toml)"
    console.print(f"Config: {source}")
    for path in write_files(config, out, secrets, users):
        console.print(f"  wrote {path}")
    console.print(
        f"Development: docker compose -f {out / DEV_FILE} up -d\n"
        f"Production:  docker compose -f {out / DEV_FILE} -f {out / PROD_FILE} up -d\n"
        "Guide: docs/containers.md"
    )


@app.command("kubernetes")
@handle_errors
def kubernetes(
    out: Path = typer.Option(
        Path("kubernetes"), "--out", help="Directory to write into (created if missing)."
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="A pool of type kubernetes (default: the first one in the config)."
    ),
    namespace: str | None = typer.Option(
        None,
        "--namespace",
        help="Namespace of the Secret, ConfigMaps and worker (default: the pool's namespace).",
    ),
    home: Path | None = HomeOption,
) -> None:
    """Write what a cluster needs to run a worker for a kubernetes pool: a Secret (0600, its
    own file), ConfigMaps (environment, CA) and values for prefect-helm's prefect-worker."""
    ctx = load_context(resolve_home(home))
    spec = kubernetes_pool(ctx, pool)
    pool_ns = pool_namespace(spec)
    ns = namespace or pool_ns
    for path in k8s_write_files(ctx, out, spec.name, ns):
        private = " (0600: credentials, never commit it)" if path.name == SECRET_FILE else ""
        console.print(f"  wrote {path}{private}")
    if ns != pool_ns:
        console.print(
            f"[yellow]Note:[/] pool {spec.name!r} starts its flow-run pods in namespace "
            f"{pool_ns!r}, which needs this Secret and CA too: set pools[].namespace = "
            f'"{ns}" in flowyard.toml and run `flowyard apply`.'
        )
    console.print(
        f"Then: kubectl apply -n {ns} -f {out / SECRET_FILE} -f {out / CONFIGMAP_FILE}\n"
        f"      helm install prefect-worker-{spec.name} prefect/prefect-worker -n {ns} "
        f"-f {out / VALUES_FILE}\n"
        "Guide: docs/scaling.md"
    )
