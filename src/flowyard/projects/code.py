"""`flowyard deploy` stores flow code by content (layout: `flowyard.client.code_store`).

A project's prefect.yaml keeps stock Prefect's `push_to_s3`/`pull_from_s3` steps, so it still
deploys with plain `prefect deploy`. `flowyard deploy` rewrites the copy it hands to
`prefect deploy`: each `push_to_s3` becomes `push_code` below (same arguments), which uploads
into the content folder and returns it as its `folder` output, so a pull step reading
`{{ push-code.folder }}` stores the content folder in the deployment. A pull step that names
the push step's folder literally is pointed at that output too. The pull step itself stays
Prefect's `pull_from_s3`: workers need nothing new, and deployments made before keep their
fixed folder, which is never written again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowyard.client import code_store
from flowyard.client.code_store import PULL_FROM_S3

PUSH_TO_S3 = "prefect_aws.deployments.steps.push_to_s3"
PUSH_CODE = "flowyard.projects.code.push_code"
DEFAULT_PUSH_ID = "push-code"


def project_files(root: Path, ignore_file: str | None = ".prefectignore") -> list[str]:
    """The files `push_to_s3` would upload (it honours the ignore file), minus bytecode."""
    included: set[str] | None = None
    if ignore_file and (root / ignore_file).exists():
        from prefect.utilities.filesystem import filter_files

        patterns = [line.strip() for line in (root / ignore_file).read_text().splitlines()]
        included = filter_files(str(root), patterns, as_posix=True)
    rels = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() or code_store.skipped(rel):
            continue
        if included is None or rel in included:
            rels.append(rel)
    return sorted(rels)


def push_code(
    bucket: str,
    folder: str,
    credentials: dict[str, Any] | None = None,
    client_parameters: dict[str, Any] | None = None,
    ignore_file: str | None = ".prefectignore",
) -> dict[str, Any]:
    """A Prefect deployment step: upload the working directory into its content folder.

    Files already there at their size are not uploaded again (a content folder's keys only
    ever hold that content), and the marker goes last, so an interrupted push is finished by
    the next one and a folder with a marker is complete."""
    from prefect_aws.s3 import get_s3_client

    root = Path.cwd()
    files = code_store.hash_files(root, project_files(root, ignore_file))
    code_digest = code_store.digest(files)
    target = code_store.content_folder(folder, code_digest)
    s3: Any = get_s3_client(credentials=credentials, client_parameters=client_parameters)
    present: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{target}/"):
        present.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    uploaded = 0
    for rel in files:
        key = f"{target}/{rel}"
        if present.get(key) != sizes[rel]:
            s3.upload_file(str(root / rel), bucket, key)
            uploaded += 1
    marker = code_store.marker_key(target)
    if marker not in present or uploaded:
        body = code_store.marker_text(code_digest, files, sizes).encode()
        s3.put_object(Bucket=bucket, Key=marker, Body=body, ContentType="application/json")
    return {"bucket": bucket, "folder": target, "uploaded": uploaded, "sha256": code_digest}


def _rewrite(push: list[Any], pull: list[Any]) -> None:
    """In place: push_to_s3 -> push_code; literal pull folders -> the push step's output."""
    literal: dict[str, str] = {}
    for i, step in enumerate(push):
        if isinstance(step, dict) and PUSH_TO_S3 in step:
            converted = dict(step[PUSH_TO_S3] or {})
            converted.setdefault("id", DEFAULT_PUSH_ID if i == 0 else f"{DEFAULT_PUSH_ID}-{i}")
            push[i] = {PUSH_CODE: converted}
        args: Any = push[i].get(PUSH_CODE) if isinstance(push[i], dict) else None
        if (
            isinstance(args, dict)
            and isinstance(args.get("folder"), str)
            and "{{" not in args["folder"]
            and args.get("id")
        ):
            literal[args["folder"].strip("/")] = args["id"]
    for step in pull:
        pull_args: Any = step.get(PULL_FROM_S3) if isinstance(step, dict) else None
        folder = pull_args.get("folder") if isinstance(pull_args, dict) else None
        if isinstance(folder, str) and folder.strip("/") in literal:
            pull_args["folder"] = f"{{{{ {literal[folder.strip('/')]}.folder }}}}"


def content_addressed(data: dict[str, Any]) -> dict[str, Any]:
    """prefect.yaml's data with every S3 push stored by content (see the module docstring);
    deployments' own push/pull sections too."""
    _rewrite(data.get("push") or [], data.get("pull") or [])
    for raw in data.get("deployments") or []:
        if isinstance(raw, dict):
            _rewrite(raw.get("push") or data.get("push") or [], raw.get("pull") or [])
    return data
