"""`flowyard backup | restore | upgrade`: keeping a platform's data safe across failures and
versions. The work is in flowyard.ops; this module draws its progress."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from flowyard.cli._common import HomeOption, console, handle_errors, resolve_home
from flowyard.config.context import Context, load_context
from flowyard.config.paths import default_home
from flowyard.errors import FlowyardError
from flowyard.ops.progress import Reporter, Task
from flowyard.platform.lock import home_lock, lock_path

CHECK_PROJECT = Path(__file__).resolve().parents[1] / "projects" / "check"


class RichReporter(Reporter):
    """A live bar per running step; a ✓ line per finished one."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.ids: dict[int, TaskID] = {}
        self.started_at: dict[int, float] = {}

    def started(self, task: Task) -> None:
        self.started_at[id(task)] = time.monotonic()
        self.ids[id(task)] = self.progress.add_task(task.label, total=task.total)

    def changed(self, task: Task) -> None:
        self.progress.update(
            self.ids[id(task)], description=task.label, total=task.total, completed=task.completed
        )

    def finished(self, task: Task) -> None:
        self.progress.remove_task(self.ids.pop(id(task)))
        took = time.monotonic() - self.started_at.pop(id(task))
        mark = "[red]✗[/]" if task.failed else "[green]✓[/]"
        summary = f"  [dim]{task.summary}[/]" if task.summary else ""
        self.progress.console.print(f"  {mark} {task.label}{summary}  [dim]{took:.1f} s[/]")

    def note(self, text: str) -> None:
        self.progress.console.print(f"      {text}", style="dim")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@handle_errors
def backup(
    to: Path | None = typer.Option(
        None, "--to", help="New directory for the backup (default: HOME/backups/<timestamp>)."
    ),
    home: Path | None = HomeOption,
) -> None:
    """Back up the running platform: databases, buckets, config, secrets and CA."""
    from flowyard.ops.backup import backup as run_backup

    ctx = load_context(resolve_home(home))
    started = time.monotonic()
    console.print(f"Backing up Flowyard at {ctx.paths.home}")
    with home_lock(ctx.paths.home, "backup"), _progress() as progress:
        path = run_backup(ctx, to, RichReporter(progress))
    console.print(
        f"\n[bold green]Backup complete[/] in {time.monotonic() - started:.1f} s: [bold]{path}[/]"
    )
    console.print("  It holds every secret (mode 0700): keep a copy off this machine.")
    console.print(f"  Restore: flowyard restore {path} --home NEW_HOME")


@handle_errors
def restore(
    backup: Path = typer.Argument(..., help="A backup directory (with manifest.json)."),
    home: Path | None = HomeOption,
    force: bool = typer.Option(
        False, "--force", help="Replace a non-empty home's config, secrets and data."
    ),
    check: bool = typer.Option(
        False, "--check", help="Only verify the backup and the target; change nothing."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Then start the restored platform, check every deployment's code and run a "
        "check flow to Completed, and stop it again.",
    ),
) -> None:
    """Restore a backup into a fresh FLOWYARD_HOME; then `flowyard up`."""
    from flowyard.ops import restore as ops_restore

    target = resolve_home(home) or default_home()
    if check:
        manifest, _ = ops_restore.preflight(backup.absolute(), target, force)
        console.print(
            f"[green]✓[/] {backup}: {len(manifest.files)} files, checksums match; "
            f"taken {manifest.created_at} with Prefect {manifest.versions.get('prefect')}; "
            f"can be restored into {target}."
        )
        return
    started = time.monotonic()
    console.print(f"Restoring {backup} into {target}")
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowyardError(
            f"Cannot create the restore target {target}: {exc.strerror}.",
            fix="Choose a writable --home.",
        ) from exc
    try:
        with home_lock(target, "restore"), _progress() as progress:
            ctx = ops_restore.restore(backup, target, force, RichReporter(progress))
    except BaseException:
        if created:
            # Refused before anything was restored: leave no trace of the attempt.
            lock_path(target).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    if verify:
        with home_lock(target, "restore --verify"), _progress() as progress:
            run = verify_restored(ctx, RichReporter(progress))
        console.print(
            f"\n[bold green]Restored and verified[/] in {time.monotonic() - started:.1f} s: "
            f"every deployment's code is present, check run {run.get('name')} Completed."
        )
    else:
        console.print(f"\n[bold green]Restored[/] in {time.monotonic() - started:.1f} s.")
    console.print(f"  Next: [bold]flowyard up --home {target}[/]")


def verify_restored(ctx: Context, reporter: Reporter) -> dict[str, Any]:
    """`restore --verify`: the platform's check flow is deployed like any project (code by
    content into the code bucket) onto the local worker's pool, run, and removed."""
    from flowyard.ops.verify import verify as verify_platform
    from flowyard.projects.api import deploy_project

    def deploy_check() -> str:
        pool = ctx.config.pool
        deployed = deploy_project(ctx, CHECK_PROJECT, pool.name, pool.queues[0].name)
        return str(deployed[0]["name"])

    return verify_platform(ctx, deploy_check, reporter)


@handle_errors
def upgrade(
    home: Path | None = HomeOption,
    backup_to: Path | None = typer.Option(
        None, "--backup-to", help="Where the pre-upgrade backup goes."
    ),
    no_backup: bool = typer.Option(
        False, "--no-backup", help="Skip the backup (only if you just took one)."
    ),
    migration_timeout: int | None = typer.Option(
        None, "--migration-timeout", min=10, help="Seconds (default: prefect.migration_timeout)."
    ),
) -> None:
    """Back up, pause schedules, migrate to the installed Prefect, restart it, resume."""
    from flowyard.ops.upgrade import upgrade as run_upgrade

    ctx = load_context(resolve_home(home))
    started = time.monotonic()
    with home_lock(ctx.paths.home, "upgrade"), _progress() as progress:
        outcome = run_upgrade(
            ctx,
            RichReporter(progress),
            backup_to=backup_to,
            take_backup=not no_backup,
            migration_timeout=migration_timeout,
        )
    console.print(
        f"\n[bold green]Upgraded[/] in {time.monotonic() - started:.1f} s: Prefect's database "
        f"{outcome.before} -> {outcome.after} "
        f"({outcome.migrations} migration{'' if outcome.migrations == 1 else 's'})."
    )
    if outcome.backup:
        console.print(f"  Backup taken before: {outcome.backup}")
    if outcome.resumed:
        console.print(f"  Schedules resumed: {', '.join(outcome.resumed)}")
