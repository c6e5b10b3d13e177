"""Deployed flow code kept between runs of one worker, by its content.

Differs from stock Prefect: a deployment's `pull_from_s3` step lists and downloads the whole
code folder on every run (about 65 ms a run for a small project through the proxy: the
difference between BENCHMARKS.md's dispatch rows with local code and with code from S3).
`flowyard deploy` stores code in folders named by their content, `<folder>@sha256-<digest>`
(`flowyard.client.code_store`), which are never rewritten. So the first run of some code
on this worker pulls it as stock Prefect does and keeps a copy; later runs of the same code
copy it from there instead of from S3.

It can never serve stale or altered code. Only content folders are cached, and a copy is
used only if its files, read at that moment, still hash to the digest the folder is named
by. A copy that does not is removed and the code is pulled again; so is anything else
(a deployment made with plain `prefect deploy`, a fixed folder). Only the files the folder's
own list names are copied into a run, so a file slipped into a copy is never used. The
copies live in the worker's private scratch directory (0700) and go with the worker.

The worker's runs use it in their forked process (`forked_run`), where the pull steps run; a
run started cold (its own interpreter) pulls as stock Prefect does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The layout of flowyard.client.code_store, which this leaf may not import (the worker
# images hold only flowyard.worker); tests/unit/test_code_cache.py checks they agree.
MARKER = ".flowyard-code.json"
_CONTENT_FOLDER = re.compile(r"^(?P<base>.+)@sha256-(?P<digest>[0-9a-f]{64})$")

PullStep = Callable[..., Any]


def digest(files: dict[str, str]) -> str:
    """One sha256 for a project: over each file's relative path and sha256, sorted."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _listed(root: Path) -> list[str] | None:
    """The files a pulled content folder's list names, or None without a readable list."""
    try:
        files = json.loads((root / MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict):
        return None
    rels = [str(rel) for rel in files]
    # Relative paths inside the folder only: the list is data read from disk.
    if any(rel.startswith("/") or ".." in Path(rel).parts for rel in rels):
        return None
    return rels


def _intact(root: Path, expected: str) -> list[str] | None:
    """The listed files of `root` when they hash to `expected`, else None."""
    rels = _listed(root)
    if rels is None:
        return None
    try:
        files = {rel: _file_sha256(root / rel) for rel in rels}
    except OSError:
        return None
    return rels if digest(files) == expected else None


def _copy(source: Path, target: Path, rels: list[str]) -> None:
    for rel in [*rels, MARKER]:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target / rel)


def _entry(cache: Path, bucket: str, folder: str) -> Path:
    # One directory name per (bucket, folder): no path of the bucket's choosing is walked.
    key = hashlib.sha256(f"{bucket}\0{folder}".encode()).hexdigest()
    return cache / key


def _keep(entry: Path, pulled: Path, expected: str) -> None:
    """Copy a fresh pull into the cache if it is the code its folder names (best effort)."""
    rels = _intact(pulled, expected)
    if rels is None:
        return
    with contextlib.suppress(OSError):
        staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".incoming-"))
        try:
            _copy(pulled, staging, rels)
            # Atomic: a run reads a complete copy or none. Another run may have kept the
            # same code first; then this copy is not needed.
            staging.rename(entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)


def pull(
    cache: Path,
    original: PullStep,
    bucket: str,
    folder: str,
    credentials: dict[str, Any] | None = None,
    client_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`pull_from_s3`, served from `cache` when it holds this content folder intact."""
    name = folder.strip("/")
    match = _CONTENT_FOLDER.match(name)
    entry = _entry(cache, bucket, name)
    here = Path.cwd()
    if match is not None and entry.is_dir():
        rels = _intact(entry, match["digest"])
        if rels is not None:
            _copy(entry, here, rels)
            return {"bucket": bucket, "folder": folder, "directory": str(here)}
        shutil.rmtree(entry, ignore_errors=True)
    result = dict(
        original(
            bucket=bucket,
            folder=folder,
            credentials=credentials,
            client_parameters=client_parameters,
        )
    )
    if match is not None:
        _keep(entry, here, match["digest"])
    return result


def install(cache: Path) -> bool:
    """Serve prefect-aws's `pull_from_s3` through `cache` (made by `cache_dir`) in this
    process (a forked run, before its pull steps: Prefect looks the step up by name each
    time). False when prefect-aws is not installed, which leaves nothing to wrap."""
    try:
        import prefect_aws.deployments.steps as steps
    except ImportError:
        return False
    original = steps.pull_from_s3
    if getattr(original, "__flowyard_cache__", None) == str(cache):
        return True
    original = getattr(original, "__wrapped__", original)

    @functools.wraps(original)
    def pull_from_s3(
        bucket: str,
        folder: str,
        credentials: dict[str, Any] | None = None,
        client_parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return pull(cache, original, bucket, folder, credentials, client_parameters)

    pull_from_s3.__flowyard_cache__ = str(cache)  # type: ignore[attr-defined]
    steps.pull_from_s3 = pull_from_s3  # type: ignore[assignment]
    return True


def cache_dir(scratch: Path) -> Path:
    """Where a worker with this scratch directory keeps code (created owner-only)."""
    path = scratch / "code"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path
