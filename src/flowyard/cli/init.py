"""`flowyard init`: write flowyard.toml and generate every secret (0600)."""

from __future__ import annotations

from pathlib import Path

import typer

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.config.load import load_config, write_config
from flowyard.config.paths import Paths, default_home
from flowyard.config.secrets import Secrets, write_secrets
from flowyard.errors import FlowyardError


@handle_errors
def init(
    home: Path | None = HomeOption,
    host: str | None = typer.Option(None, help="Public host name (proxy.host)."),
    https_port: int | None = typer.Option(None, help="proxy.https_port"),
    force: bool = typer.Option(
        False, "--force", help="Rewrite flowyard.toml; existing secrets are always kept."
    ),
) -> None:
    """Create the platform's configuration and secrets."""
    home = resolve_home(home) or default_home()
    paths = Paths(home)
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowyardError(
            f"Cannot create FLOWYARD_HOME {home}: {exc.strerror}.",
            fix="Choose a writable directory with --home or FLOWYARD_HOME.",
        ) from exc
    if paths.config_file.exists() and not force:
        console.print(
            f"[yellow]Already initialised:[/] {paths.config_file} (use --force to rewrite)"
        )
    else:
        config = load_config(home, require_file=False)
        if host:
            config.proxy.host = host
        if https_port:
            config.proxy.https_port = https_port
        write_config(config)
        console.print(f"[green]Wrote[/] {paths.config_file}")
    if paths.secrets_file.exists():
        # Regenerating would lock the platform out of its own database and object store.
        console.print(f"[yellow]Kept existing secrets:[/] {paths.secrets_file}")
    else:
        write_secrets(paths.secrets_file, Secrets.generate())
        console.print(f"[green]Generated secrets[/] {paths.secrets_file} (mode 0600)")
    console.print("Next: [bold]flowyard up[/]")
