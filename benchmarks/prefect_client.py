"""Prefect client calls the worker benchmarks share: connect, deploy, trigger, wait.

The benchmark talks to the platform as a user does: through the proxy, TLS verified, with
the environment `flowyard env` prints. Settings are scoped with `temporary_settings`, since
Prefect reads its environment once at import.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from flowyard.client.env import platform_client_env
from flowyard.config.context import Context

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

FLOW_NAME = "bench-noop"
ENTRYPOINT = "bench_flow.py:noop"
# The smallest real flow: what is measured is everything around it (dispatch, process
# start, imports, state changes, result persistence), which every short run pays.
FLOW_SOURCE = f'''"""Benchmark flow: does nothing, so only the platform's overhead is measured."""

import time

from prefect import flow


@flow(name="{FLOW_NAME}")
def noop(x: int = 0, seconds: float = 0.0) -> int:
    # `seconds`: the simultaneous benchmark keeps runs alive so they overlap.
    if seconds:
        time.sleep(seconds)
    return x
'''
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The same flow as a project `flowyard deploy` takes, its push and pull steps as in
# flows/prefect.yaml: stock Prefect's push_to_s3 (which `flowyard deploy` turns into an upload
# by content, `flowyard.projects.code`) and pull_from_s3, in every run (served by the
# `flowyard` worker from its copy of the content folder after the first, worker.code_cache).
S3_CODE_FOLDER = "bench-noop"
S3_PROJECT = """\
name: bench-noop
push:
  - prefect_aws.deployments.steps.push_to_s3:
      id: push-code
      requires: prefect-aws>=0.7.12
      bucket: "{{{{ $FLOWYARD_CODE_BUCKET }}}}"
      folder: {folder}
pull:
  - prefect_aws.deployments.steps.pull_from_s3:
      id: pull-code
      requires: prefect-aws>=0.7.12
      bucket: "{{{{ push-code.bucket }}}}"
      folder: "{{{{ push-code.folder }}}}"
deployments:
  - name: {name}
    entrypoint: {entrypoint}
    parameters: {{}}
    work_pool: {{name: {pool}, work_queue_name: default}}
"""


@asynccontextmanager
async def platform_client(ctx: Context) -> AsyncIterator[PrefectClient]:
    from prefect import get_client
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_URL,
        temporary_settings,
    )

    env = platform_client_env(ctx)
    updates: dict[Any, Any] = {
        PREFECT_API_URL: env["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
    }
    if "PREFECT_API_SSL_CERT_FILE" in env:
        updates[PREFECT_API_SSL_CERT_FILE] = env["PREFECT_API_SSL_CERT_FILE"]
    with temporary_settings(updates=updates):
        async with get_client() as client:
            yield client


def write_flow_dir(root: Path) -> Path:
    """A local directory holding the flow, as a user's checkout would."""
    flow_dir = root / "flow-src"
    flow_dir.mkdir(parents=True, exist_ok=True)
    (flow_dir / "bench_flow.py").write_text(FLOW_SOURCE)
    return flow_dir


async def deploy(client: PrefectClient, flow_dir: Path, pool: str, name: str) -> UUID:
    """A deployment of the flow from a local path (a set_working_directory pull step)."""
    flow_id = await client.create_flow_from_name(FLOW_NAME)
    return await client.create_deployment(
        flow_id=flow_id,
        name=name,
        work_pool_name=pool,
        work_queue_name="default",
        entrypoint=ENTRYPOINT,
        path=str(flow_dir),
        pull_steps=[
            {"prefect.deployments.steps.set_working_directory": {"directory": str(flow_dir)}}
        ],
        parameter_openapi_schema={"type": "object", "properties": {}},
        enforce_parameter_schema=False,
    )


def write_s3_project(root: Path, pool: str, name: str) -> Path:
    """The flow as a project for `flowyard deploy`: its file and a prefect.yaml whose push
    step uploads it to the platform's code bucket and whose pull step fetches it."""
    project = root / "flow-s3"
    project.mkdir(parents=True, exist_ok=True)
    (project / "bench_flow.py").write_text(FLOW_SOURCE)
    text = S3_PROJECT.format(folder=S3_CODE_FOLDER, name=name, entrypoint=ENTRYPOINT, pool=pool)
    (project / "prefect.yaml").write_text(text)
    return project


async def deploy_from_s3(
    ctx: Context, client: PrefectClient, root: Path, pool: str, name: str
) -> dict[str, str]:
    """A deployment of the flow made the way `flowyard deploy` makes one (its own code,
    `flowyard.projects.api.deploy_project`): code uploaded by content to the code bucket,
    then registered with a pull_from_s3 step. Returns the bucket and content folder its pull
    step fetches; raises if that is not a content folder (not what a deployment pulls)."""
    from flowyard.client import code_store
    from flowyard.projects.api import deploy_project

    project = write_s3_project(root, pool, name)
    await asyncio.to_thread(deploy_project, ctx, project, pool, "default")
    deployment = await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
    pulls = [
        s[code_store.PULL_FROM_S3]
        for s in deployment.pull_steps or []
        if code_store.PULL_FROM_S3 in s
    ]
    folder = str(pulls[0].get("folder", "")) if len(pulls) == 1 else ""
    if not code_store.parse_content_folder(folder):
        raise RuntimeError(f"{name}: pull steps {deployment.pull_steps!r} fetch no content folder")
    return {"bucket": str(pulls[0].get("bucket")), "folder": folder}


async def read_runs(client: PrefectClient, ids: Iterable[UUID]) -> list[FlowRun]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = list(ids)
    runs: list[FlowRun] = []
    # The API caps a page at 200 runs.
    for i in range(0, len(ids), 200):
        chunk = ids[i : i + 200]
        runs += await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
        )
    return runs


def state_type(run: FlowRun) -> str:
    return run.state.type.value if run.state else "NONE"


def state_counts(runs: Iterable[FlowRun]) -> dict[str, int]:
    """How many runs are in each state type: {"COMPLETED": 48, "CRASHED": 2}."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[state_type(run)] = counts.get(state_type(run), 0) + 1
    return counts


async def wait_terminal(
    client: PrefectClient, ids: Iterable[UUID], timeout: float, interval: float = 0.5
) -> list[FlowRun]:
    """Poll until every run is terminal or `timeout` passes; returns the last read.

    Only tells us *when to stop waiting*: latencies come from the runs' own state
    timestamps, so the polling interval does not blur them.
    """
    ids = list(ids)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        runs = await read_runs(client, ids)
        if len(runs) == len(ids) and all(state_type(r) in TERMINAL for r in runs):
            return runs
        if loop.time() > end:
            return runs
        await asyncio.sleep(interval)


async def state_times(client: PrefectClient, run_id: UUID) -> dict[str, datetime]:
    """When the run first entered each state type (PENDING, RUNNING, COMPLETED, ...)."""
    times: dict[str, datetime] = {}
    for state in sorted(await client.read_flow_run_states(run_id), key=lambda s: s.timestamp):
        times.setdefault(state.type.value, state.timestamp)
    return times
