"""A backup's manifest, and the verification that runs before a restore changes anything.

A backup directory looks like this; the manifest is written last, so a backup that was
interrupted has none and is refused as incomplete:

    manifest.json                    versions, components, sha256/size/mode of every file
    config/flowyard.toml             the configuration, its mode kept
    config/secrets.toml              the secrets (0600)
    caddy/...                        Caddy's storage: the internal CA (pki/) and certificates
    databases/<name>.dump            pg_dump, custom format, one per platform database
    objects/<bucket>/index.json      every object: key, sha256, size, content type, metadata
    objects/<bucket>/blobs/ab/ab12…  object contents, stored by checksum (keys are not paths)
    files/...                        the proxy's static /files/ directory
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from flowyard.config.paths import Paths
from flowyard.errors import FlowyardError
from flowyard.files import write_private

FORMAT = "flowyard-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG_FILE = "config/flowyard.toml"
SECRETS_FILE = "config/secrets.toml"
# People's and workers' logins (docs/access.md); absent from backups of homes without one.
USERS_FILE = "config/users.toml"
# The Dask cluster's CA and certificates: joined Dask workers hold a certificate it signed.
DASK_DIR = "dask"
# Listing every problem buries the first; a damaged backup is refused after this many.
MAX_PROBLEMS = 12
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def private_files(paths: Paths) -> dict[str, Path]:
    """The owner-only files of a home's access, by their place in a backup; each is absent
    from backups of homes without one: the logins, MLflow logins still to delete (a user
    removed while MLflow was off), the SSO client secret."""
    return {
        USERS_FILE: paths.users_file,
        "config/mlflow-revoked.txt": paths.mlflow_revoked,
        "config/sso-client-secret": paths.sso_client_secret,
    }


def dump_path(database: str) -> str:
    return f"databases/{database}.dump"


def index_path(bucket: str) -> str:
    return f"objects/{bucket}/index.json"


def blob_path(bucket: str, sha256: str) -> str:
    return f"objects/{bucket}/blobs/{sha256[:2]}/{sha256}"


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class FileEntry:
    sha256: str
    size: int
    mode: int


@dataclass
class Manifest:
    created_at: str
    source_home: str
    # flowyard, prefect, postgres (server), pg_dump, and mlflow when it was enabled.
    versions: dict[str, str]
    # Per database: its alembic revision (None when it has no alembic_version table).
    databases: dict[str, str | None]
    # Per bucket: object count and total bytes (the index has the objects themselves).
    buckets: dict[str, dict[str, int]]
    # Optional parts present in this backup: "caddy", "files".
    components: list[str] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "source_home": self.source_home,
            "versions": self.versions,
            "databases": self.databases,
            "buckets": self.buckets,
            "components": self.components,
            "files": {
                path: {"sha256": e.sha256, "size": e.size, "mode": f"{e.mode:04o}"}
                for path, e in sorted(self.files.items())
            },
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a Flowyard backup manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"manifest format version {data.get('format_version')!r}; this Flowyard reads "
                f"version {FORMAT_VERSION}"
            )
        files = {
            str(path): FileEntry(str(e["sha256"]), int(e["size"]), int(str(e["mode"]), 8))
            for path, e in data["files"].items()
        }
        return cls(
            created_at=str(data["created_at"]),
            source_home=str(data["source_home"]),
            versions={str(k): str(v) for k, v in data["versions"].items()},
            databases={str(k): v for k, v in data["databases"].items()},
            buckets={str(k): {**v} for k, v in data["buckets"].items()},
            components=[str(c) for c in data.get("components", [])],
            files=files,
        )


def scan(root: Path) -> dict[str, FileEntry]:
    """Checksum every file under `root` except the manifest itself."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or not path.is_file():
            continue
        st = path.stat()
        entries[rel] = FileEntry(sha256_file(path), st.st_size, stat.S_IMODE(st.st_mode))
    return entries


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Written last and atomically: its presence is what marks a backup complete."""
    target = root / MANIFEST
    write_private(target, manifest.to_json())
    return target


def _safe(rel: str) -> bool:
    """A manifest path must stay inside the backup (a crafted one could overwrite /etc)."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and not rel.startswith("/") and ".." not in parts and "\\" not in rel


def _required(manifest: Manifest) -> list[str]:
    required = [CONFIG_FILE, SECRETS_FILE]
    required += [dump_path(db) for db in manifest.databases]
    required += [index_path(bucket) for bucket in manifest.buckets]
    return required


def _check_indexes(root: Path, manifest: Manifest, problems: list[str]) -> None:
    """Each bucket's index must name only objects whose contents are in the backup."""
    for bucket, summary in manifest.buckets.items():
        rel = index_path(bucket)
        if rel not in manifest.files or not (root / rel).is_file():
            continue  # already reported as missing
        try:
            index = json.loads((root / rel).read_text())
            objects = index["objects"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{rel} is not a valid object index")
            continue
        if len(objects) != summary.get("objects"):
            problems.append(
                f"{rel} lists {len(objects)} objects, the manifest says {summary.get('objects')}"
            )
        for obj in objects:
            digest = str(obj.get("sha256", ""))
            if not _SHA256.match(digest):
                problems.append(f"{rel}: object {obj.get('key')!r} has no valid checksum")
                continue
            blob = blob_path(bucket, digest)
            entry = manifest.files.get(blob)
            if entry is None or not (root / blob).is_file():
                problems.append(f"bucket {bucket}: the contents of {obj.get('key')!r} are missing")
            elif entry.size != obj.get("size"):
                problems.append(f"bucket {bucket}: {obj.get('key')!r} has the wrong size")
            elif entry.sha256 != digest:
                # The blob is named by the object's checksum; its recorded contents must match.
                problems.append(
                    f"bucket {bucket}: {obj.get('key')!r} is damaged (sha256 differs from the "
                    "object index)"
                )


def _blob_objects(root: Path, manifest: Manifest) -> dict[str, str]:
    """Each blob's path -> the object(s) it holds, so a damaged blob is named by its key."""
    named: dict[str, str] = {}
    for bucket in manifest.buckets:
        if index_path(bucket) not in manifest.files:
            continue  # reported as missing; and only paths the manifest vouches for are read
        try:
            objects = json.loads((root / index_path(bucket)).read_text())["objects"]
            for obj in objects:
                rel = blob_path(bucket, str(obj["sha256"]))
                named.setdefault(rel, f"object {obj['key']!r} in bucket {bucket}")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # reported by _check_indexes
    return named


def find_problems(root: Path) -> tuple[Manifest | None, list[str]]:
    """Everything wrong with the backup at `root`; an empty list means it can be restored."""
    if not root.is_dir():
        return None, [f"{root} is not a directory"]
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        return None, [
            f"no {MANIFEST}: the backup is incomplete (it is written last, so the backup "
            "was interrupted or files were removed)"
        ]
    try:
        manifest = Manifest.from_json(manifest_file.read_text())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, [f"{MANIFEST} is damaged: {exc}"]
    problems: list[str] = []
    unsafe = [rel for rel in manifest.files if not _safe(rel)]
    if unsafe:
        return manifest, [f"{MANIFEST} names paths outside the backup: {unsafe[:3]}"]
    for rel in _required(manifest):
        if rel not in manifest.files:
            problems.append(f"{rel} is not in the manifest")
    objects = _blob_objects(root, manifest)
    for rel, entry in manifest.files.items():
        path = root / rel
        # A blob's path is its checksum: name the object it holds as well.
        holds = f" ({objects[rel]})" if rel in objects else ""
        if path.is_symlink():
            problems.append(f"{rel} is a symbolic link; a backup holds only regular files")
        elif not path.is_file():
            problems.append(f"{rel} is missing{holds}")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel} has {path.stat().st_size} bytes, expected {entry.size}{holds}")
        elif sha256_file(path) != entry.sha256:
            # Every file is hashed, not only sized: same size and other bytes is refused here.
            problems.append(f"{rel} is damaged (sha256 differs from the manifest){holds}")
        if len(problems) >= MAX_PROBLEMS:
            return manifest, problems
    on_disk = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    }
    for rel in sorted(on_disk - set(manifest.files) - {MANIFEST}):
        problems.append(f"{rel} is not in the manifest (added after the backup was taken)")
    _check_indexes(root, manifest, problems)
    return manifest, problems[:MAX_PROBLEMS]


def verify(root: Path) -> Manifest:
    """The backup's manifest, or a FlowyardError naming every problem found."""
    manifest, problems = find_problems(root)
    if problems or manifest is None:
        raise FlowyardError(
            f"The backup at {root} cannot be restored:\n" + "\n".join(f"  - {p}" for p in problems),
            fix="Nothing was changed. Restore from another backup (`ls` the backups "
            "directory), or copy this one again from where it is kept.",
        )
    return manifest


def _major(version: str) -> int:
    match = re.match(r"\D*(\d+)", version)
    return int(match.group(1)) if match else 0


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def incompatibilities(manifest: Manifest, installed: dict[str, str]) -> list[str]:
    """Why this installation cannot restore the backup (a newer Prefect's schema, a newer
    pg_dump's format); empty when it can. Older backups are fine: `up` migrates forward."""
    problems = []
    taken, here = manifest.versions.get("pg_dump", ""), installed.get("pg_dump", "")
    if taken and here and _major(taken) > _major(here):
        problems.append(
            f"the databases were dumped by {taken}; this installation's pg_restore is {here} "
            "and cannot read a newer dump format"
        )
    taken, here = manifest.versions.get("prefect", ""), installed.get("prefect", "")
    if taken and here and _release(taken) > _release(here):
        problems.append(
            f"the backup was taken with Prefect {taken}, newer than the installed {here}: "
            "its database schema is one this Prefect cannot run or migrate"
        )
    return problems
