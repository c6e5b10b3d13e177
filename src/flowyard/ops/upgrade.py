"""`flowyard upgrade`: migrate a running platform's databases to the installed Prefect.

The order is what makes it safe: refuse a step the installed Prefect cannot migrate (while
nothing has changed), back up, pause the active schedules (so nothing is scheduled against a
half-migrated database), stop Prefect's server processes, migrate with a timeout while
starting them again, then resume exactly the schedules that were active. The paused list is
kept in a file until the end, so an interrupted upgrade is finished by running it again.
The worker keeps running: restarting it would kill the flow runs it is executing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowyard.client.api import api_client
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.ops import manifest as mf
from flowyard.ops.backup import backup
from flowyard.ops.progress import Reporter
from flowyard.platform import lifecycle
from flowyard.platform.registry import build_services
from flowyard.services import postgres, prefect_api

STATE_FILE = "upgrade-paused-schedules.json"


def _versions_dir() -> Path:
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "server/database/_migrations/versions/postgresql"


def migration_graph(versions_dir: Path | None = None) -> dict[str, tuple[str, ...]]:
    """The installed Prefect's PostgreSQL migrations: revision -> the revisions it follows.

    Read from the migration files' `revision` / `down_revision` lines, as alembic reads them,
    without importing Prefect's server."""
    graph: dict[str, tuple[str, ...]] = {}
    for script in (versions_dir or _versions_dir()).glob("*.py"):
        text = script.read_text()
        rev = re.search(r"^revision\s*=\s*[\"'](\w+)[\"']", text, re.M)
        if not rev:
            continue
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.M)
        graph[rev.group(1)] = tuple(re.findall(r"[\"'](\w+)[\"']", down.group(1))) if down else ()
    return graph


def heads(graph: dict[str, tuple[str, ...]]) -> list[str]:
    followed = {d for downs in graph.values() for d in downs}
    return sorted(set(graph) - followed)


def ancestors(graph: dict[str, tuple[str, ...]], revision: str) -> set[str]:
    """`revision` and every revision before it."""
    todo, seen = [revision], set()
    while todo:
        rev = todo.pop()
        if rev not in seen:
            seen.add(rev)
            todo.extend(graph.get(rev, ()))
    return seen


def pending(graph: dict[str, tuple[str, ...]], current: str | None) -> list[str]:
    """The migrations an upgrade from `current` applies."""
    wanted = set().union(*(ancestors(graph, h) for h in heads(graph)))
    done = ancestors(graph, current) if current else set()
    return sorted(wanted - done)


@dataclass
class Plan:
    current: str | None
    head: str
    pending: list[str]
    full_restart: bool


@dataclass
class Outcome:
    backup: Path | None
    before: str | None
    after: str | None
    migrations: int
    resumed: list[str] = field(default_factory=list)


def _backups_at(ctx: Context, revision: str) -> list[str]:
    """Backups of this home taken at `revision`, with the Prefect that wrote them."""
    found = []
    for manifest_file in sorted((ctx.paths.home / "backups").glob(f"*/{mf.MANIFEST}")):
        try:
            manifest = mf.Manifest.from_json(manifest_file.read_text())
        except (ValueError, KeyError, TypeError):
            continue
        if manifest.databases.get("prefect") == revision:
            found.append(f"{manifest_file.parent} (Prefect {manifest.versions.get('prefect')})")
    return found


def check(ctx: Context) -> Plan:
    """Refuse, while nothing has changed, an upgrade the installed Prefect cannot make."""
    if not prefect_api.is_ready(ctx):
        raise FlowyardError(
            "`flowyard upgrade` works on the running platform, and Prefect's API is not up.",
            fix="Start it with `flowyard up`, then run `flowyard upgrade`. (With a newer "
            "Prefect installed, `up` alone migrates too, but without a backup first.)",
        )
    graph = migration_graph()
    tips = heads(graph)
    if len(tips) != 1:
        raise FlowyardError(
            f"The installed Prefect's migrations have {len(tips)} heads ({tips}), not one.",
            fix="Reinstall Flowyard (`pip install -e .`); its Prefect installation is damaged.",
        )
    head = tips[0]
    current = postgres.alembic_revision(ctx, "prefect")
    installed = importlib.metadata.version("prefect")
    if current is not None and current not in graph:
        known = _backups_at(ctx, current)
        hint = f" Backups at that revision: {'; '.join(known)}." if known else ""
        raise FlowyardError(
            f"Prefect's database is at revision {current}, which the installed Prefect "
            f"{installed} does not know (its migration would fail with \"Can't locate "
            f"revision identified by '{current}'\"): a newer Prefect migrated it.{hint}",
            fix="Nothing was changed. Install the Flowyard version whose Prefect migrated this "
            "database and run `flowyard upgrade` with it; or, to go back to this version, "
            "restore a backup taken with it (`flowyard restore BACKUP --home NEW_HOME`).",
        )
    services = build_services(ctx)
    return Plan(
        current=current,
        head=head,
        pending=pending(graph, current),
        full_restart=lifecycle.supervisor_conf_changed(ctx, services),
    )


def _active_schedules(ctx: Context) -> list[dict[str, Any]]:
    with api_client(ctx, timeout=30) as api:
        response = api.post("/deployments/filter", json={})
        response.raise_for_status()
        return [
            {
                "deployment_id": d["id"],
                "deployment": d["name"],
                "schedule_id": s["id"],
                # Sent back with every change: Prefect 3.9's schedule PATCH otherwise resets
                # a schedule's parameter overrides to {} (its `parameters` defaults to {}).
                "parameters": s.get("parameters") or {},
            }
            for d in response.json()
            for s in d.get("schedules") or []
            if s.get("active")
        ]


def _set_active(ctx: Context, schedules: list[dict[str, Any]], active: bool) -> None:
    with api_client(ctx, timeout=30) as api:
        for s in schedules:
            response = api.patch(
                f"/deployments/{s['deployment_id']}/schedules/{s['schedule_id']}",
                json={"active": active, "parameters": s["parameters"]},
            )
            # A deployment deleted meanwhile has nothing left to resume.
            if response.status_code != 404:
                response.raise_for_status()


def _pause(ctx: Context, reporter: Reporter) -> list[dict[str, Any]]:
    state = ctx.paths.home / STATE_FILE
    if state.exists():
        # A previous upgrade stopped after pausing: these are the schedules it paused.
        paused: list[dict[str, Any]] = json.loads(state.read_text())
        reporter.note(f"resuming an interrupted upgrade: {len(paused)} schedules were paused")
        return paused
    with reporter.task("Pausing active schedules") as task:
        paused = _active_schedules(ctx)
        # Written before pausing, so a crash cannot lose which ones to resume.
        state.write_text(json.dumps(paused, indent=1))
        _set_active(ctx, paused, False)
        task.summary = f"{len(paused)} paused"
    return paused


def _resume(ctx: Context, paused: list[dict[str, Any]], reporter: Reporter) -> list[str]:
    with reporter.task("Resuming the schedules that were active") as task:
        _set_active(ctx, paused, True)
        (ctx.paths.home / STATE_FILE).unlink(missing_ok=True)
        task.summary = f"{len(paused)} resumed"
    return sorted({s["deployment"] for s in paused})


def _restart(ctx: Context, plan: Plan, reporter: Reporter) -> None:
    names = {"prefect-api", "prefect-services"}
    if ctx.config.mlflow.enabled:
        names.add("mlflow")  # its start migrates MLflow's schema too
    label = f"Migrating ({len(plan.pending)} pending) and restarting Prefect"
    with reporter.task(label) as task:

        def progress(name: str, phase: str) -> None:
            if not phase.startswith(lifecycle.NOTE):
                task.label = f"{label}: {name} {phase}"
                task.advance(0)

        if plan.full_restart:
            # A new Flowyard renders the processes differently: restart them all cleanly.
            reporter.note("the supervisor configuration changed: restarting every service")
            lifecycle.down(ctx, progress)
            lifecycle.up(ctx, progress)
        else:
            lifecycle.stop_services(ctx, names, progress)
            # prefect-api's prepare step is the migration, under migration_timeout.
            lifecycle.up(ctx, progress, only=names)
        task.label = label


def upgrade(
    ctx: Context,
    reporter: Reporter | None = None,
    backup_to: Path | None = None,
    take_backup: bool = True,
    migration_timeout: int | None = None,
) -> Outcome:
    reporter = reporter or Reporter()
    if migration_timeout is not None:
        config = ctx.config.model_copy(deep=True)
        config.prefect.migration_timeout = migration_timeout
        ctx = Context(config=config, secrets=ctx.secrets, hosts=ctx.hosts)
    with reporter.task("Checking the migration path") as task:
        plan = check(ctx)
        task.summary = (
            f"{plan.current} -> {plan.head}, {len(plan.pending)} pending"
            if plan.pending
            else f"already at {plan.head}"
        )
    saved = None
    if take_backup:
        saved = backup(ctx, backup_to or _default_backup_dir(ctx), reporter)
        reporter.note(f"backup: {saved}")
    paused = _pause(ctx, reporter)
    try:
        _restart(ctx, plan, reporter)
    except FlowyardError as exc:
        rollback = (
            f" To roll back: `flowyard down`, then `flowyard restore {saved} --home NEW_HOME`."
            if saved
            else ""
        )
        exc.fix = (
            f"{exc.fix or ''} Prefect's server processes are stopped and {len(paused)} "
            "schedules paused; once fixed, run `flowyard upgrade` again (it resumes them)."
            + rollback
        ).strip()
        raise
    resumed = _resume(ctx, paused, reporter)
    return Outcome(
        backup=saved,
        before=plan.current,
        after=postgres.alembic_revision(ctx, "prefect"),
        migrations=len(plan.pending),
        resumed=resumed,
    )


def _default_backup_dir(ctx: Context) -> Path:
    from flowyard.ops.backup import default_dir

    return default_dir(ctx, "-pre-upgrade")
