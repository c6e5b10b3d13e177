"""`flowyard backup`: a consistent, verifiable copy of a running platform.

What differs from dumping each database in turn, and why the copy is one consistent moment:

1. **Both databases from snapshots taken together.** Prefect's and MLflow's databases live on
   one PostgreSQL server, but a snapshot belongs to one database (`SET TRANSACTION SNAPSHOT`
   cannot cross databases), so one snapshot cannot cover both. Instead each database gets a
   REPEATABLE READ, READ ONLY transaction that exports its snapshot (`pg_export_snapshot()`)
   and stays open while `pg_dump --snapshot` dumps exactly that snapshot, however long the
   dump takes. The two snapshots are exported back to back, Prefect's first, while a short
   lock (SHARE on Prefect's `flow_run`, held only for the two exports, milliseconds) stops
   flow runs from being created or changing state. The links between the two databases are
   what must not dangle after a restore, and each is written after what it points to:
   - MLflow -> Prefect (a tracked run's `prefect.flow_run_id` tag): the MLflow run is created
     from inside a running flow run, so the flow run was created, and set Running, before it.
     While the lock is held no flow run can be created or start, so a flow run that an MLflow
     run in MLflow's snapshot names was committed before the lock, hence is in Prefect's.
   - Prefect -> MLflow (a flow run's `mlflow-run:` tag and `mlflow-run` artifact): written
     after the MLflow run exists; anything in Prefect's snapshot was committed before it was
     exported, and MLflow's is exported later, so the MLflow run is in MLflow's.
   Dumping the databases one after the other, as before, left minutes between them in which
   both kinds of link could be made half-way.
2. **Databases, then buckets.** Everything a database row points to in the object store is
   written before the row: Prefect writes a result before the state that names it, MLflow
   clients upload an artifact under a run that already exists, and `flowyard deploy` uploads
   a project's code before it registers the deployments that pull it. So every object the
   snapshots reference exists when the buckets are copied next. The other order would lose
   code deployed between the bucket copy and the dumps.
3. **Flow code stored by content** (`flowyard.client.code_store`): a deployment pulls an
   immutable `<folder>@sha256-<digest>` folder, never overwritten, so the code a deployment in
   the dump names is the code in the backup, even if a redeploy runs during the backup (it
   writes a new folder; its deployment update is not in the snapshot, or its folder is).
   Deployments made before content folders pull a fixed folder that a redeploy used to
   overwrite: for those the backup holds whatever that folder held when it was copied.

Objects written after the snapshots are copied too; they are harmless extras on restore.
Every file and object is recorded with its sha256 in the manifest (`manifest`), and restore
checks them before it changes anything.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import ClientError

import flowyard
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.ops import manifest as mf
from flowyard.ops.progress import Reporter
from flowyard.services import postgres, seaweedfs

# pg_dump of a large history can take long; a hung one must still end.
DUMP_TIMEOUT = 3 * 3600
CHUNK = 1 << 20
# Caddy's lock files belong to the running instance, never to a restored one.
CADDY_SKIP = frozenset({"locks"})


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def default_dir(ctx: Context, suffix: str = "") -> Path:
    return ctx.paths.home / "backups" / (timestamp() + suffix)


def program_version(program: str) -> str:
    """`pg_dump (PostgreSQL) 18.1` -> `18.1`."""
    out = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().rsplit(" ", 1)[-1]


def installed_versions() -> dict[str, str]:
    versions = {
        "flowyard": flowyard.__version__,
        "prefect": importlib.metadata.version("prefect"),
        "pg_dump": program_version(postgres.client_program("pg_dump")),
    }
    with suppress(importlib.metadata.PackageNotFoundError):
        versions["mlflow"] = importlib.metadata.version("mlflow")
    return versions


def existing_databases(ctx: Context) -> list[str]:
    names = postgres.query(ctx, "SELECT datname FROM pg_database").splitlines()
    return [db for db in postgres.DATABASES if db in names]


def _require_running(ctx: Context) -> None:
    missing = []
    if not postgres.is_ready(ctx):
        missing.append("postgres")
    if ctx.config.object_store.kind == "seaweedfs" and not seaweedfs.is_ready(ctx):
        missing.append("seaweedfs")
    if missing:
        raise FlowyardError(
            f"A backup is taken from the running platform, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not running.",
            fix="Start it with `flowyard up`, then run `flowyard backup` again.",
        )


def _check_outside_home(ctx: Context, target: Path) -> None:
    """A backup holds every secret: inside the home it could be served (files/ is published
    under /files/), replaced by a restore (data/, run/) or copied into the next backup.
    Only the home's own backups/ directory, owner-only, is allowed."""
    home = ctx.paths.home.resolve()
    resolved = target.resolve()
    if resolved.is_relative_to(home) and not resolved.is_relative_to(home / "backups"):
        raise FlowyardError(
            f"Backup target {target} is inside FLOWYARD_HOME {ctx.paths.home}, where it could be "
            "published (files/ is served under /files/) or overwritten.",
            fix=f"Give --to a directory outside {ctx.paths.home} (or omit --to: "
            f"{ctx.paths.home / 'backups'}/<timestamp>).",
        )


def _prepare_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FlowyardError(
            f"{target} already exists and is not an empty directory.",
            fix="Give --to a new directory; a backup never overwrites another.",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # It holds every secret and the whole database: owner only, from the start.
    target.mkdir(mode=0o700, exist_ok=True)
    target.chmod(0o700)


@contextmanager
def _disk_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FlowyardError(
                f"The disk holding {target} is full; the backup was removed.",
                fix="Free space there, or write the backup elsewhere with --to.",
            ) from exc
        raise


# Waiting longer for the barrier lock would stall Prefect's writers queued behind it.
BARRIER_LOCK_TIMEOUT = "5s"
BARRIER_ATTEMPTS = 6
# The tables whose writes the barrier holds back while the snapshots are exported (see 1.).
BARRIER_TABLES = {"prefect": ("flow_run",)}


def _export_snapshot(conn: psycopg.Connection[Any]) -> str:
    """Open a REPEATABLE READ transaction on `conn` and export its snapshot; the transaction
    (and so the snapshot) lives until `conn` is closed."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


@contextmanager
def consistent_snapshots(
    ctx: Context,
    databases: list[str],
    attempts: int = BARRIER_ATTEMPTS,
    lock_timeout: str = BARRIER_LOCK_TIMEOUT,
    held: list[float] | None = None,
) -> Iterator[dict[str, str]]:
    """Each database's exported snapshot, all taken under the barrier (docstring, 1.);
    valid until the block ends. `held` gets how long the lock was held, in seconds."""
    conns: dict[str, psycopg.Connection[Any]] = {}
    try:
        for db in databases:
            conns[db] = postgres.connect(ctx, db)
        barrier = [(db, t) for db in databases for t in BARRIER_TABLES.get(db, ())]
        if len(databases) < 2 or not barrier:
            yield {db: _export_snapshot(conn) for db, conn in conns.items()}
            return
        lock_db = barrier[0][0]
        snapshots: dict[str, str] = {}
        with postgres.connect(ctx, lock_db) as lock:
            # A database not migrated yet has no such table and so no links to keep.
            present = [
                t
                for db, t in barrier
                if db == lock_db
                and lock.execute("SELECT to_regclass(%s)", (t,)).fetchone() != (None,)
            ]
            tables = ", ".join(present)
            if not present:
                yield {db: _export_snapshot(conn) for db, conn in conns.items()}
                return
            for attempt in range(attempts):
                try:
                    with lock.transaction():
                        lock.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                        lock.execute(f"LOCK TABLE {tables} IN SHARE MODE")
                        locked = time.monotonic()
                        # The locked database's snapshot first, then the others (docstring).
                        for db in sorted(conns, key=lambda d: d != lock_db):
                            snapshots[db] = _export_snapshot(conns[db])
                    if held is not None:
                        held.append(time.monotonic() - locked)
                    break
                except psycopg.errors.LockNotAvailable as exc:
                    # Refused at the LOCK, before any snapshot was exported: just try again.
                    if attempt == attempts - 1:
                        raise FlowyardError(
                            f"Could not lock {lock_db}.{tables} for {attempts} x "
                            f"{lock_timeout}: a long transaction is writing to it.",
                            fix="Find it in PostgreSQL's pg_stat_activity view, let it finish "
                            "or end it, then run `flowyard backup` again.",
                        ) from exc
        yield snapshots
    finally:
        for conn in conns.values():
            conn.close()


def _dump(ctx: Context, database: str, out: Path, snapshot: str | None = None) -> None:
    env = {**os.environ, "PGPASSWORD": ctx.secrets.postgres_superuser_password.get_secret_value()}
    # -Fc: compressed, and pg_restore can restore it selectively and in parallel.
    cmd = [
        postgres.bin_path(ctx, "pg_dump"),
        *postgres.client_args(ctx),
        *("-U", postgres.SUPERUSER),
        *("-d", database, "-Fc", "-w", "-f", str(out)),
        *([f"--snapshot={snapshot}"] if snapshot else []),
    ]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DUMP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise FlowyardError(
            f"pg_dump of {database} did not finish in {DUMP_TIMEOUT} s.",
            fix="Check `flowyard logs postgres` for locks or a failing disk.",
        ) from exc
    if result.returncode != 0:
        if "No space left" in result.stderr:
            raise OSError(errno.ENOSPC, result.stderr.strip())
        raise FlowyardError(
            f"pg_dump of {database} failed: {result.stderr.strip()}",
            fix="Check `flowyard logs postgres`.",
        )
    out.chmod(0o600)


def _backup_databases(ctx: Context, root: Path, reporter: Reporter) -> dict[str, str | None]:
    databases: dict[str, str | None] = {}
    (root / "databases").mkdir(mode=0o700)
    names = existing_databases(ctx)
    held: list[float] = []
    with consistent_snapshots(ctx, names, held=held) as snapshots:
        blocked = f" (flow-run writes held {held[0] * 1000:.0f} ms)" if held else ""
        reporter.note(f"snapshots of {', '.join(names)} exported together{blocked}")
        for db in names:
            with reporter.task(f"Database {db}") as task:
                databases[db] = postgres.alembic_revision(ctx, db)
                out = root / mf.dump_path(db)
                _dump(ctx, db, out, snapshots[db])
                task.summary = f"{out.stat().st_size / 1e6:.1f} MB dump"
    return databases


def _list_objects(client: Any, bucket: str) -> list[dict[str, Any]] | None:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return None
        raise FlowyardError(
            f"The object store refused access to bucket {bucket!r}: {exc}",
            fix="Check the S3 keys in secrets.toml match the store's.",
        ) from exc
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects += page.get("Contents", [])
    return objects


def _copy_object(client: Any, bucket: str, key: str, root: Path, tmp: Path) -> dict[str, Any]:
    """Stream one object to disk, hashing as it goes; stored under its checksum."""
    response = client.get_object(Bucket=bucket, Key=key)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        for chunk in response["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
            fh.write(chunk)
            size += len(chunk)
    sha = digest.hexdigest()
    blob = root / mf.blob_path(bucket, sha)
    blob.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.replace(tmp, blob)
    return {
        "key": key,
        "sha256": sha,
        "size": size,
        "content_type": response.get("ContentType"),
        "metadata": response.get("Metadata") or {},
    }


def _backup_buckets(ctx: Context, root: Path, reporter: Reporter) -> dict[str, dict[str, int]]:
    client = seaweedfs.s3_client(ctx)
    buckets: dict[str, dict[str, int]] = {}
    for bucket in ctx.config.object_store.buckets:
        listed = _list_objects(client, bucket)
        if listed is None:
            reporter.note(f"bucket {bucket} does not exist; skipped")
            continue
        total = sum(int(o["Size"]) for o in listed)
        free = shutil.disk_usage(root).free
        if total > free:
            raise FlowyardError(
                f"Bucket {bucket} holds {total / 1e9:.2f} GB; {root} has {free / 1e9:.2f} GB free.",
                fix="Free space there, or write the backup elsewhere with --to.",
            )
        bucket_dir = root / "objects" / bucket
        bucket_dir.mkdir(mode=0o700, parents=True)
        objects = []
        with reporter.task(f"Bucket {bucket}", total=total) as task:
            for obj in listed:
                try:
                    objects.append(
                        _copy_object(client, bucket, obj["Key"], root, bucket_dir / ".partial")
                    )
                except ClientError as exc:
                    # Deleted between listing and copying: it is not part of the platform now.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchKey":
                        raise
                task.advance(int(obj["Size"]))
            task.summary = f"{len(objects)} objects, {total / 1e6:.1f} MB"
        index = root / mf.index_path(bucket)
        fd = os.open(index, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"bucket": bucket, "objects": objects}, fh, indent=1)
        buckets[bucket] = {"objects": len(objects), "bytes": sum(o["size"] for o in objects)}
    return buckets


def _copy_tree(src: Path, dst: Path, skip: frozenset[str] = frozenset()) -> int:
    """Copy files with their modes (copy2); directories owner-only."""
    count = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip or path.is_symlink():
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def _backup_files(ctx: Context, root: Path, reporter: Reporter) -> list[str]:
    components = []
    with reporter.task("Configuration and secrets") as task:
        config_dir = root / "config"
        config_dir.mkdir(mode=0o700)
        shutil.copy2(ctx.paths.config_file, root / mf.CONFIG_FILE)
        shutil.copy2(ctx.paths.secrets_file, root / mf.SECRETS_FILE)
        task.summary = "flowyard.toml, secrets.toml"
        for rel, path in mf.private_files(ctx.paths).items():
            if path.exists():
                shutil.copy2(path, root / rel)
                task.summary += f", {path.name}"
    caddy_storage = ctx.paths.caddy_data / "caddy"
    if caddy_storage.is_dir():
        with reporter.task("Caddy CA and certificates") as task:
            n = _copy_tree(caddy_storage, root / "caddy", CADDY_SKIP)
            task.summary = f"{n} files"
        components.append("caddy")
    if ctx.paths.dask_pki.is_dir():
        with reporter.task("Dask CA and certificates") as task:
            n = _copy_tree(ctx.paths.dask_pki, root / mf.DASK_DIR)
            task.summary = f"{n} files"
        components.append(mf.DASK_DIR)
    if ctx.paths.files.is_dir() and any(ctx.paths.files.iterdir()):
        with reporter.task("Static files (/files/)") as task:
            n = _copy_tree(ctx.paths.files, root / "files")
            task.summary = f"{n} files"
        components.append("files")
    return components


def backup(ctx: Context, to: Path | None = None, reporter: Reporter | None = None) -> Path:
    """Back up the running platform into `to` (default: backups/<timestamp>); the path."""
    reporter = reporter or Reporter()
    target = (to or default_dir(ctx)).absolute()
    _check_outside_home(ctx, target)
    _require_running(ctx)
    _prepare_target(target)
    if to is None:
        target.parent.chmod(0o700)  # HOME/backups: nobody else needs to list it
    try:
        with _disk_errors(target):
            versions = installed_versions()
            versions["postgres"] = postgres.query(ctx, "SHOW server_version")
            if not ctx.config.mlflow.enabled:
                versions.pop("mlflow", None)
            databases = _backup_databases(ctx, target, reporter)
            buckets = _backup_buckets(ctx, target, reporter)
            components = _backup_files(ctx, target, reporter)
            for path in [target, *target.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o700)
            with reporter.task("Checksums and manifest") as task:
                manifest = mf.Manifest(
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    source_home=str(ctx.paths.home),
                    versions=versions,
                    databases=databases,
                    buckets=buckets,
                    components=components,
                    files=mf.scan(target),
                )
                mf.write_manifest(target, manifest)
                size = sum(e.size for e in manifest.files.values())
                task.summary = f"{len(manifest.files)} files, {size / 1e6:.1f} MB"
    except BaseException:
        # Half a backup looks like a backup; remove it so nobody restores from it.
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target
