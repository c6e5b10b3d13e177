"""`flowyard init`: write flowyard.toml and generate every secret (0600).

The whole configuration is validated before anything is written, so a refused option leaves
no file (and no directory) behind, and nothing `init` writes is refused by a later command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.config.load import load_config, write_config
from flowyard.config.paths import Paths, default_home
from flowyard.config.secrets import Secrets, write_secrets
from flowyard.errors import FlowyardError
from flowyard.platform.lock import home_lock


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
    if home.exists() and not home.is_dir():
        raise FlowyardError(
            f"FLOWYARD_HOME {home} exists and is not a directory.",
            fix="Choose a directory with --home or FLOWYARD_HOME.",
        )
    options: dict[str, Any] = {}
    if host is not None:
        options["host"] = host
    if https_port is not None:
        options["https_port"] = https_port
    rewrite = force or not paths.config_file.exists()
    if options and not rewrite:
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        raise FlowyardError(
            f"{paths.config_file} already exists; {given} would be ignored.",
            fix="Add --force to rewrite flowyard.toml with the new values (secrets are kept), "
            "or edit the file.",
        )
    config = None
    if rewrite:
        # Validated as a whole (port clashes included) before the first byte is written.
        try:
            config = load_config(
                home, require_file=False, overrides={"proxy": options} if options else None
            )
        except FlowyardError as exc:
            if options:
                exc.fix = "Give a valid value to the option named above; nothing was written."
            raise
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowyardError(
            f"Cannot create FLOWYARD_HOME {home}: {exc.strerror}.",
            fix="Choose a writable directory with --home or FLOWYARD_HOME.",
        ) from exc
    with home_lock(home, "init"):
        if paths.secrets_file.exists():
            # Regenerating would lock the platform out of its own database and object store.
            console.print(f"[yellow]Kept existing secrets:[/] {paths.secrets_file}")
        else:
            write_secrets(paths.secrets_file, Secrets.generate())
            console.print(f"[green]Generated secrets[/] {paths.secrets_file} (mode 0600)")
        if config is None:
            console.print(
                f"[yellow]Already initialised:[/] {paths.config_file} (use --force to rewrite)"
            )
        else:
            write_config(config)
            console.print(f"[green]Wrote[/] {paths.config_file}")
    console.print("Next: [bold]flowyard up[/]")
