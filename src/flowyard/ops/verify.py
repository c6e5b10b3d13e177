"""`flowyard restore --verify`: prove the restored platform works before calling it restored.

A restore that only copies bytes back can still leave a platform whose deployments cannot
run (code missing from the code bucket, a worker that cannot reach the store). So, on the
restored home: start the whole platform, check that every deployment's code is in the code
bucket and intact (a content folder against its marker's sha256 list; a fixed folder from
before content folders at least holds the entrypoint), run one flow run through the worker
to Completed, then stop the platform again. Any failure names the deployment or object and
what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from botocore.exceptions import ClientError

from flowyard.client import code_store
from flowyard.client.api import api_client
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.ops.progress import Reporter
from flowyard.platform import lifecycle
from flowyard.services import seaweedfs

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT = 300.0
REDEPLOY = "Redeploy it with `flowyard deploy PROJECT`, or restore from another backup."


def _api(ctx: Context, method: str, path: str, **kwargs: Any) -> Any:
    with api_client(ctx, timeout=60) as client:
        response = client.request(method, path, **kwargs)
    response.raise_for_status()
    return response.json() if response.content else None


def deployments(ctx: Context) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = _api(ctx, "POST", "/deployments/filter", json={"offset": len(found), "limit": 200})
        found += page
        if len(page) < 200:
            return found


def _listing(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return keys


def _content_problems(
    client: Any, name: str, bucket: str, folder: str, listed: dict[str, int]
) -> list[str]:
    where = f"deployment {name}: s3://{bucket}/{folder}/"
    parsed = code_store.parse_content_folder(folder)
    assert parsed is not None
    marker = code_store.marker_key(folder)
    if marker not in listed:
        return [f"{where}{code_store.MARKER} is missing: the code upload never finished"]
    try:
        body = client.get_object(Bucket=bucket, Key=marker)["Body"].read()
        files = code_store.read_marker(body)
    except (ClientError, ValueError) as exc:
        return [f"{where}{code_store.MARKER} is not readable: {exc}"]
    if code_store.digest({k: v["sha256"] for k, v in files.items()}) != parsed[1]:
        return [f"{where}: its files are not the code the folder is named after"]
    problems = []
    for rel, entry in files.items():
        key = f"{folder}/{rel}"
        if key not in listed:
            problems.append(f"{where}{rel} is missing")
        elif (
            listed[key] != entry["size"]
            or code_store.object_sha256(client, bucket, key) != entry["sha256"]
        ):
            problems.append(f"{where}{rel} is damaged (sha256 differs from the code's marker)")
    return problems


def code_problems(ctx: Context, found: list[dict[str, Any]]) -> list[str]:
    """Every deployment whose S3 code is missing or damaged, one line each."""
    client: Any = seaweedfs.s3_client(ctx)
    problems: list[str] = []
    for dep in found:
        name = dep.get("name", dep["id"])
        for step in dep.get("pull_steps") or []:
            args = step.get(code_store.PULL_FROM_S3) if isinstance(step, dict) else None
            if not isinstance(args, dict):
                continue
            bucket, folder = str(args.get("bucket")), str(args.get("folder", "")).strip("/")
            try:
                listed = _listing(client, bucket, f"{folder}/")
            except ClientError as exc:
                problems.append(f"deployment {name}: bucket {bucket!r} cannot be read: {exc}")
                continue
            if not listed:
                problems.append(f"deployment {name}: no code at s3://{bucket}/{folder}/")
            elif code_store.parse_content_folder(folder):
                problems += _content_problems(client, name, bucket, folder, listed)
            entrypoint = str(dep.get("entrypoint") or "").rsplit(":", 1)[0]
            if listed and entrypoint and f"{folder}/{entrypoint}" not in listed:
                problems.append(
                    f"deployment {name}: entrypoint {entrypoint} is not in s3://{bucket}/{folder}/"
                )
    return problems


def run_deployment(
    ctx: Context, deployment_id: str, timeout: float = RUN_TIMEOUT
) -> dict[str, Any]:
    """Create a flow run of the deployment and wait for a final state; the run."""
    run = _api(ctx, "POST", f"/deployments/{deployment_id}/create_flow_run", json={})
    deadline = time.monotonic() + timeout
    while True:
        run = _api(ctx, "GET", f"/flow_runs/{run['id']}")
        if run.get("state_type") in TERMINAL or time.monotonic() > deadline:
            return dict(run)
        time.sleep(1)


def verify(
    ctx: Context,
    deploy_check: Callable[[], str],
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Start the restored platform, check every deployment's code, run the check deployment
    that `deploy_check` makes (its full name) to Completed, remove it, stop the platform."""
    reporter = reporter or Reporter()
    if not ctx.config.worker.enabled:
        raise FlowyardError(
            "The restore finished, but --verify runs a flow on the local worker and the "
            "restored configuration has worker.enabled = false.",
            fix=f"`flowyard up --home {ctx.paths.home}` and run a deployment with a worker of "
            "your own (`flowyard run NAME`).",
        )
    try:
        with reporter.task("Starting the restored platform") as task:
            lifecycle.up(ctx, lambda *_: None)
            task.summary = "all services ready"
        with reporter.task("Every deployment's code in the code bucket") as task:
            found = deployments(ctx)
            problems = code_problems(ctx, found)
            if problems:
                raise FlowyardError(
                    "The restored platform has deployments whose code is missing or damaged:\n"
                    + "\n".join(f"  - {p}" for p in problems[:12]),
                    fix=REDEPLOY,
                )
            task.summary = f"{len(found)} deployments, code present and checksums match"
        with reporter.task("A flow run through the restored worker") as task:
            name = deploy_check()
            check = _api(ctx, "GET", f"/deployments/name/{name}")
            try:
                run = run_deployment(ctx, check["id"])
            finally:
                try:
                    _api(ctx, "DELETE", f"/deployments/{check['id']}")
                except httpx.HTTPError as exc:
                    reporter.note(f"could not remove the check deployment {name}: {exc}")
            if run.get("state_type") != "COMPLETED":
                raise FlowyardError(
                    f"The check flow run {run.get('name')} ended {run.get('state_type')}"
                    f" ({(run.get('state') or {}).get('message')}), not Completed.",
                    fix=f"`flowyard up --home {ctx.paths.home}`, then read the run's logs in "
                    "the UI and `flowyard logs worker`.",
                )
            task.summary = f"{name}: {run.get('name')} Completed"
    finally:
        with reporter.task("Stopping the restored platform"):
            lifecycle.down(ctx, lambda *_: None)
    return run
