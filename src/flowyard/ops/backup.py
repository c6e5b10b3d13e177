"""`flowyard backup`: a consistent, verifiable copy of a running platform.

Order matters for consistency. Each database is dumped from one snapshot (pg_dump), and the
databases go first: Prefect writes a result to S3 before it records the state that points at
it, so every object the dumps reference already exists when the buckets are copied next.
Objects written after the dumps are copied too; they are harmless extras on restore.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def alembic_revision(ctx: Context, database: str) -> str | None:
    """The schema revision Prefect (or MLflow) migrated this database to."""
    if not postgres.query(ctx, "SELECT to_regclass('public.alembic_version')", database):
        return None
    return postgres.query(ctx, "SELECT version_num FROM alembic_version", database) or None


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


def _dump(ctx: Context, database: str, out: Path) -> None:
    env = {**os.environ, "PGPASSWORD": ctx.secrets.postgres_superuser_password.get_secret_value()}
    # -Fc: compressed, and pg_restore can restore it selectively and in parallel.
    cmd = [
        postgres.bin_path(ctx, "pg_dump"),
        *postgres.client_args(ctx),
        *("-U", postgres.SUPERUSER),
        *("-d", database, "-Fc", "-w", "-f", str(out)),
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
    for db in existing_databases(ctx):
        with reporter.task(f"Database {db}") as task:
            databases[db] = alembic_revision(ctx, db)
            out = root / mf.dump_path(db)
            _dump(ctx, db, out)
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
    caddy_storage = ctx.paths.caddy_data / "caddy"
    if caddy_storage.is_dir():
        with reporter.task("Caddy CA and certificates") as task:
            n = _copy_tree(caddy_storage, root / "caddy", CADDY_SKIP)
            task.summary = f"{n} files"
        components.append("caddy")
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
