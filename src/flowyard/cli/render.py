"""`flowyard render compose`: the container deployment files, from the same config as native
mode (see `flowyard.compose.render`)."""

from __future__ import annotations

from pathlib import Path

import typer

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.compose.render import DEV_FILE, ENV_FILE, PROD_FILE, write_files
from flowyard.config.load import load_config
from flowyard.config.paths import Paths, default_home
from flowyard.config.secrets import load_secrets

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
    source = paths.config_file if paths.config_file.exists() else "defaults (no flowyard.toml)"
    console.print(f"Config: {source}")
    for path in write_files(config, out, secrets):
        console.print(f"  wrote {path}")
    console.print(
        f"Development: docker compose -f {out / DEV_FILE} up -d\n"
        f"Production:  docker compose -f {out / DEV_FILE} -f {out / PROD_FILE} up -d\n"
        "Guide: docs/containers.md"
    )
