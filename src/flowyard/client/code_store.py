"""How deployed flow code is laid out in the code bucket: by content, never overwritten.

Stock Prefect's `push_to_s3` step uploads a project into one fixed folder on every deploy,
overwriting the previous code in place: a deployment registered yesterday silently runs
today's code, and a backup taken during a redeploy can hold a database whose deployments
point at code that is not in the same backup. Flowyard's deploy uploads instead into

    <folder>@sha256-<digest>/<file>...        the project's files
    <folder>@sha256-<digest>/.flowyard-code.json   written last: every file and its sha256

where `digest` is the sha256 of the sorted (path, file sha256) list. A content folder is
immutable: the same code always gets the same folder (an unchanged redeploy uploads
nothing), other code gets another, and a folder with its marker is complete. The `@` keeps
content folders out of the old fixed folder's prefix (`<folder>/`), so deployments made
before this change, which still pull `<folder>/`, keep pulling exactly what they did.

Deployers (`flowyard.projects.code`) write this layout; restore verification
(`flowyard.ops.verify`) reads it. Both are here so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER = ".flowyard-code.json"
# The pull step deployments keep (stock Prefect's); its `folder` is a content folder or a
# fixed one.
PULL_FROM_S3 = "prefect_aws.deployments.steps.pull_from_s3"
# Never uploaded nor hashed: bytecode is rebuilt by whichever interpreter runs the flow, and
# differs between interpreters, so hashing it would make unchanged code look changed.
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
_CONTENT_FOLDER = re.compile(r"^(?P<base>.+)@sha256-(?P<digest>[0-9a-f]{64})$")


def skipped(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in SKIPPED_DIRS for p in parts[:-1]) or rel.endswith(SKIPPED_SUFFIXES)


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def object_sha256(client: Any, bucket: str, key: str) -> str:
    """An S3 object's sha256, read in 1 MiB chunks (backups' and deployments' checks)."""
    h = hashlib.sha256()
    for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def digest(files: dict[str, str]) -> str:
    """One sha256 for a project: over each file's relative path and sha256, sorted."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def hash_files(root: Path, rels: Iterable[str]) -> dict[str, str]:
    return {rel: file_sha256(root / rel) for rel in sorted(rels)}


def content_folder(folder: str, code_digest: str) -> str:
    return f"{folder.strip('/')}@sha256-{code_digest}"


def parse_content_folder(folder: str) -> tuple[str, str] | None:
    """(base folder, digest) of a content folder; None for a fixed (legacy) folder."""
    match = _CONTENT_FOLDER.match(folder.strip("/"))
    return (match["base"], match["digest"]) if match else None


def marker_key(folder: str) -> str:
    return f"{folder.strip('/')}/{MARKER}"


def marker_text(code_digest: str, files: dict[str, str], sizes: dict[str, int]) -> str:
    return json.dumps(
        {
            "sha256": code_digest,
            "files": {rel: {"sha256": files[rel], "size": sizes[rel]} for rel in sorted(files)},
        },
        indent=1,
    )


def read_marker(text: str | bytes) -> dict[str, dict[str, Any]]:
    """The marker's files: {relative path: {"sha256", "size"}}; ValueError when malformed."""
    data = json.loads(text)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ValueError("no file list")
    listed: dict[str, dict[str, Any]] = {
        str(k): {"sha256": str(v["sha256"]), "size": int(v["size"])} for k, v in files.items()
    }
    if digest({k: v["sha256"] for k, v in listed.items()}) != data.get("sha256"):
        raise ValueError("the file list does not match the folder's digest")
    return listed
