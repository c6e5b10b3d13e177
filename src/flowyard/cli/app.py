"""The `flowyard` command: one module per command group, registered here."""

from __future__ import annotations

import os

import typer

from flowyard.cli import (
    access,
    apply,
    db,
    deploy,
    env,
    init,
    ops,
    platform_cmds,
    render,
    worker_cmds,
)

app = typer.Typer(
    name="flowyard",
    help="Flowyard: a self-hosted workflow and experiment platform on Prefect 3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(init.init)
app.command()(platform_cmds.up)
app.command()(platform_cmds.down)
app.command()(platform_cmds.status)
app.command()(platform_cmds.logs)
app.command()(env.env)
app.command()(apply.apply)
app.command()(deploy.deploy)
app.command()(deploy.run)
app.command()(ops.backup)
app.command()(ops.restore)
app.command()(ops.upgrade)
app.command()(access.audit)
app.add_typer(worker_cmds.app, name="worker")
app.add_typer(access.app, name="user")
app.add_typer(render.app, name="render")
app.add_typer(db.app, name="db")


def main() -> None:
    # Whatever flowyard writes (configs, rendered files, logs, backups) is its user's alone.
    os.umask(0o077)
    app()
