"""`flowyard restore`: a backup into a fresh FLOWYARD_HOME, checked before anything changes.

Everything that can refuse the restore (every file's and object's sha256 against the
manifest, completeness, versions, the restored configuration, free ports, the target home)
runs first; only then is the home written. After the buckets are restored every object is
read back and hashed again, so what the store now serves is what was backed up.
`--verify` then starts the restored platform and proves it runs flows (`flowyard.ops.verify`). The
databases go into a fresh cluster (initdb with the restored superuser password), and the
CA is restored byte for byte, so certificates Caddy issues after `flowyard up` chain to the
root that clients already trust.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from flowyard.client import code_store
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.paths import Paths
from flowyard.config.secrets import Secrets
from flowyard.errors import FlowyardError
from flowyard.ops import manifest as mf
from flowyard.ops.backup import program_version
from flowyard.ops.progress import Reporter
from flowyard.platform import lifecycle
from flowyard.platform.lock import LOCK_NAME
from flowyard.platform.registry import build_services
from flowyard.platform.supervisor import Supervisor
from flowyard.services import caddy, postgres, seaweedfs

RESTORE_TIMEOUT = 3 * 3600


def _replaced(paths: Paths) -> list[Path]:
    """What --force replaces in an existing home: everything a backup restores and the
    state that goes with it; logs/ and backups/ are kept (the backup being restored may
    well live in backups/)."""
    return [
        paths.config_file,
        paths.secrets_file,
        *mf.private_files(paths).values(),
        paths.dask_pki,
        paths.data,
        paths.run,
        paths.ca_cert.parent,
        paths.files,
    ]


def _flowyard_entries(paths: Paths) -> Callable[[str], bool]:
    """Whether a name at the top of a home is something Flowyard itself puts there: what a
    restore replaces, logs/, backups/, the lock, the write probe, or a temporary file of
    `write_private` (`.<name>.<random>.tmp`) that a crash left behind."""
    ours = {p.name for p in _replaced(paths)} | {"logs", "backups", LOCK_NAME, ".write-test"}
    temporary = tuple(f".{n}." for n in ours)
    return lambda name: name in ours or (name.endswith(".tmp") and name.startswith(temporary))


def _installed() -> dict[str, str]:
    import importlib.metadata

    return {
        "prefect": importlib.metadata.version("prefect"),
        "pg_dump": program_version(postgres.client_program("pg_restore")),
    }


def _restored_context(backup: Path, home: Path) -> Context:
    """The configuration and secrets as they will be, validated from the backup's copies."""
    try:
        secrets = Secrets.model_validate(tomllib.loads((backup / mf.SECRETS_FILE).read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise FlowyardError(
            f"The backup's secrets.toml is not valid for this Flowyard: {exc}",
            fix="Nothing was changed. Restore with the Flowyard version that took the backup.",
        ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(backup / mf.CONFIG_FILE, Paths(Path(tmp)).config_file)
        try:
            config = load_config(Path(tmp))
        except FlowyardError as exc:
            exc.fix = "Nothing was changed. " + (exc.fix or "")
            raise
    return Context(config=config.model_copy(update={"home": home}), secrets=secrets)


def _not_a_flowyard_home(home: Path) -> str | None:
    """Why `home` is not recognisably a Flowyard home, or None when it is one: its own
    flowyard.toml and secrets.toml (0600, every generated secret), and nothing else at the
    top but what Flowyard creates."""
    paths = Paths(home)
    if not paths.config_file.is_file() or not paths.secrets_file.is_file():
        return "it has no flowyard.toml and secrets.toml"
    try:
        tomllib.loads(paths.config_file.read_text())
        Secrets.model_validate(tomllib.loads(paths.secrets_file.read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError):
        return "its flowyard.toml or secrets.toml is not Flowyard's"
    ours = _flowyard_entries(paths)
    foreign = sorted(p.name for p in home.iterdir() if not ours(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"it holds entries Flowyard never creates ({shown})"
    return None


def _check_target(home: Path, backup: Path, force: bool) -> None:
    if home.exists() and not home.is_dir():
        raise FlowyardError(f"{home} exists and is not a directory.", fix="Choose another --home.")
    if not home.exists() or not any(p.name != LOCK_NAME for p in home.iterdir()):
        return
    if not force:
        raise FlowyardError(
            f"{home} is not empty; a restore goes into a fresh FLOWYARD_HOME.",
            fix="Choose an empty --home, or add --force to replace its configuration, secrets "
            "and data (logs/ and backups/ are kept).",
        )
    why = _not_a_flowyard_home(home)
    if why is not None:
        raise FlowyardError(
            f"{home} is not recognisably a Flowyard home ({why}); --force only ever replaces "
            "a Flowyard home's config, secrets and data. Nothing was changed.",
            fix="Restore into a new or empty --home, or move what does not belong to Flowyard "
            "out of it.",
        )
    sup = Supervisor(Paths(home))
    # Services orphaned by a killed supervisord still hold the data --force would replace.
    if sup.pid() is not None or sup.orphans():
        raise FlowyardError(
            f"The platform at {home} is running.",
            fix=f"Stop it first: `flowyard down --home {home}`.",
        )
    for path in _replaced(Paths(home)):
        if backup.resolve().is_relative_to(path.resolve()):
            raise FlowyardError(
                f"The backup is inside {path}, which --force would replace.",
                fix="Move the backup elsewhere first.",
            )


def preflight(backup: Path, home: Path, force: bool) -> tuple[mf.Manifest, Context]:
    """Every reason to refuse, checked while nothing has been changed yet."""
    _check_target(home, backup, force)
    manifest = mf.verify(backup)
    problems = mf.incompatibilities(manifest, _installed())
    if problems:
        raise FlowyardError(
            f"The backup at {backup} cannot be restored with this installation:\n"
            + "\n".join(f"  - {p}" for p in problems),
            fix="Nothing was changed. Install the Flowyard version named in the backup's "
            "manifest.json (versions), restore, then `flowyard upgrade`.",
        )
    ctx = _restored_context(backup, home)
    missing = [db for db in manifest.databases if db not in postgres.DATABASES]
    if "mlflow" in manifest.databases and not ctx.config.mlflow.enabled:
        missing.append("mlflow (mlflow.enabled is false in the restored configuration)")
    if missing:
        raise FlowyardError(
            f"The backup has databases this platform would not create: {', '.join(missing)}.",
            fix="Nothing was changed. Restore with the Flowyard version that took the backup.",
        )
    needed = {"postgres", "seaweedfs"}
    try:
        lifecycle.check_ports(ctx, [s for s in build_services(ctx) if s.name in needed])
    except FlowyardError as exc:
        # The usual cause: the platform the backup came from still runs on this machine.
        exc.fix = (
            "Nothing was changed. Stop what holds them (`flowyard down` for the platform the "
            "backup came from), or set the FLOWYARD_* variables named above for the restore "
            "and for `flowyard up`."
        )
        raise
    return manifest, ctx


def _clear(home: Path) -> None:
    for path in _replaced(Paths(home)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _put_file(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


def _restore_files(backup: Path, manifest: mf.Manifest, ctx: Context) -> None:
    paths = ctx.paths
    paths.home.mkdir(parents=True, exist_ok=True)
    entries = manifest.files
    _put_file(backup / mf.CONFIG_FILE, paths.config_file, entries[mf.CONFIG_FILE].mode)
    # Never wider than 0600, whatever a copied backup's modes became.
    _put_file(backup / mf.SECRETS_FILE, paths.secrets_file, 0o600)
    for rel, path in mf.private_files(paths).items():
        if rel in entries:
            _put_file(backup / rel, path, 0o600)
    for rel, entry in entries.items():
        top, _, rest = rel.partition("/")
        if top == "caddy":
            _put_file(backup / rel, paths.caddy_data / "caddy" / rest, entry.mode)
        elif top == mf.DASK_DIR:
            _put_file(backup / rel, paths.dask_pki / rest, entry.mode)
        elif top == "files":
            _put_file(backup / rel, paths.files / rest, entry.mode)
    if "caddy" in manifest.components:
        caddy.export_ca(ctx)


def _pg_restore(ctx: Context, database: str, dump: Path) -> None:
    env = {**os.environ, "PGPASSWORD": ctx.secrets.postgres_superuser_password.get_secret_value()}
    cmd = [
        postgres.bin_path(ctx, "pg_restore"),
        *postgres.client_args(ctx),
        *("-U", postgres.SUPERUSER),
        # One transaction: a dump that fails halfway leaves the database empty, not half full.
        *("-d", database, "--exit-on-error", "--single-transaction", "-w", str(dump)),
    ]
    try:
        result = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=RESTORE_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise FlowyardError(f"pg_restore of {database} did not finish.") from exc
    if result.returncode != 0:
        raise FlowyardError(f"pg_restore of {database} failed: {result.stderr.strip()[-2000:]}")


def _restore_bucket(ctx: Context, backup: Path, bucket: str, reporter: Reporter) -> None:
    index: dict[str, Any] = json.loads((backup / mf.index_path(bucket)).read_text())
    objects = index["objects"]
    client: Any = seaweedfs.s3_client(ctx)
    total = sum(o["size"] for o in objects)
    with reporter.task(f"Bucket {bucket}", total=total) as task:
        for obj in objects:
            extra: dict[str, Any] = {"Metadata": obj.get("metadata") or {}}
            if obj.get("content_type"):
                extra["ContentType"] = obj["content_type"]
            blob = backup / mf.blob_path(bucket, obj["sha256"])
            client.upload_file(str(blob), bucket, obj["key"], ExtraArgs=extra)
            task.advance(obj["size"])
        task.summary = f"{len(objects)} objects"
    with reporter.task(f"Bucket {bucket}: checksums read back", total=total) as task:
        # Read back what the store now holds: every key, its bytes hashed, not only sized.
        wrong = []
        for obj in objects:
            try:
                digest = code_store.object_sha256(client, bucket, obj["key"])
            except ClientError as exc:
                digest = f"unreadable ({exc.response.get('Error', {}).get('Code')})"
            if digest != obj["sha256"]:
                wrong.append(f"{obj['key']!r}: {digest}")
            task.advance(obj["size"])
        if wrong:
            raise FlowyardError(
                f"Bucket {bucket}: {len(wrong)} objects did not restore intact (sha256 "
                f"expected from the backup's index, got): {', '.join(wrong[:3])}",
                fix="Check `flowyard logs seaweedfs` and the disk under data/.",
            )
        task.summary = f"{len(objects)} objects, sha256 match"


def restore(
    backup: Path, home: Path, force: bool = False, reporter: Reporter | None = None
) -> Context:
    """Restore `backup` into `home`; the platform is left stopped, ready for `flowyard up`."""
    reporter = reporter or Reporter()
    backup, home = backup.absolute(), home.absolute()
    with reporter.task("Verifying the backup") as task:
        manifest, ctx = preflight(backup, home, force)
        task.summary = f"{len(manifest.files)} files, checksums match"
    if force and home.exists():
        _clear(home)
    try:
        with reporter.task("Configuration, secrets and CA") as task:
            _restore_files(backup, manifest, ctx)
            task.summary = "modes kept"
        with reporter.task("Starting PostgreSQL and the object store") as task:
            lifecycle.up(ctx, lambda *_: None, only={"postgres", "seaweedfs"})
        for db in manifest.databases:
            with reporter.task(f"Database {db}") as task:
                _pg_restore(ctx, db, backup / mf.dump_path(db))
                task.summary = "restored"
        for bucket in manifest.buckets:
            _restore_bucket(ctx, backup, bucket, reporter)
    except BaseException as exc:
        lifecycle.down(ctx, lambda *_: None)
        if isinstance(exc, FlowyardError):
            exc.fix = (
                f"{exc.fix or ''} {home} is partly restored: run the restore again with "
                "--force once the cause is fixed."
            ).strip()
        raise
    with reporter.task("Stopping PostgreSQL and the object store"):
        lifecycle.down(ctx, lambda *_: None)
    return ctx
