"""Flow-run helpers for tests that break the platform on purpose: every API call retries
through restarts, so a test observes the platform's recovery, not its own impatience."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from flowyard.client.api import api_client
from flowyard.config.context import Context
from flowyard.services.seaweedfs import s3_client
from flowyard.waiting import wait_until
from tests.integration.conftest import flowyard_cli

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api(ctx: Context, method: str, path: str, timeout: float = 120, **kwargs: Any) -> Any:
    """One API call on loopback, retried while the API (or its database) is restarting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with api_client(ctx, timeout=30) as client:
                response = client.request(method, path, **kwargs)
            if response.status_code < 500:
                response.raise_for_status()
                return response.json() if response.content else None
            error = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as exc:
            error = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path} kept failing for {timeout} s: {error}")
        time.sleep(1)


def deploy(ctx: Context, project: Path) -> list[dict[str, Any]]:
    out = flowyard_cli(ctx, "deploy", str(project), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    return list(json.loads(out.stdout))


def create_run(ctx: Context, deployment: str, **params: Any) -> str:
    dep = api(ctx, "GET", f"/deployments/name/{deployment}")
    run = api(ctx, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": params})
    return str(run["id"])


def flow_run(ctx: Context, run_id: str) -> dict[str, Any]:
    return dict(api(ctx, "GET", f"/flow_runs/{run_id}"))


def wait_state(ctx: Context, run_id: str, states: set[str], timeout: float) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def reached() -> bool:
        last.update(flow_run(ctx, run_id))
        return last["state_type"] in states

    if not wait_until(reached, timeout, interval=1):
        raise AssertionError(
            f"flow run {run_id} still {last['state_type']} after {timeout} s "
            f"(wanted {sorted(states)}): {last['state']}"
        )
    return last


def result_value(ctx: Context, run: dict[str, Any]) -> Any:
    """A Completed run's result, read back from the results bucket."""
    key = run["state"]["data"]["storage_key"]
    body = s3_client(ctx).get_object(  # type: ignore[attr-defined]
        Bucket=ctx.config.object_store.results_bucket, Key=key
    )["Body"]
    return pickle.loads(base64.b64decode(body.read()))


def events(ctx: Context, resource_prefix: str, name: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {
        "filter": {"resource": {"id_prefix": [resource_prefix]}, "order": "ASC"},
        "limit": 50,
    }
    if name:
        body["filter"]["event"] = {"name": [name]}
    return list(api(ctx, "POST", "/events/filter", json=body)["events"])


def run_logs(ctx: Context, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
    return [entry["message"] for entry in api(ctx, "POST", "/logs/filter", json=body)]


def run_pids(ctx: Context, run_id: str) -> list[int]:
    """The live processes executing a flow run: the one its worker recorded as the run's
    infrastructure (`host:pid`) and its descendants. A forked run (the `flowyard` worker)
    cannot be found by its environment, which /proc shows as it was at exec time."""
    import psutil

    recorded = flow_run(ctx, run_id).get("infrastructure_pid") or ""
    try:
        root = psutil.Process(int(str(recorded).rsplit(":", 1)[-1]))
        procs = [root, *root.children(recursive=True)]
    except (ValueError, psutil.Error):
        return []
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def cli_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
