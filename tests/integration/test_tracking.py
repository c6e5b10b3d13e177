"""Tracking end to end: MLflow on the platform, behind the proxy with TLS verified, linked both
ways with Prefect flow runs.

One platform (MLflow on, no worker) for the module. One client process runs the flows as a
user would, with only `flowyard env`'s variables: a deployment's runs (like a sweep's), one
of them failing, and the real `train-digits` flow through its soft import. The tests then
check what landed in MLflow, in Prefect and in S3.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.platform.supervisor import Supervisor
from flowyard.services import mlflow as mlflow_service
from flowyard.services import seaweedfs
from flowyard.services.caddy import tls_verify
from flowyard.testing import running_platform

pytestmark = pytest.mark.integration

DEPLOYMENT = "tracked-demo/tracking-test"
ARTIFACT = b"flowyard artifact bytes for lr="
STEPS = 20

CLIENT = """
import json, sys, tempfile
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.deployments import run_deployment
from prefect.flow_engine import run_flow

from flowyard.tracking import runs_table, track_run

ARTIFACT = %(artifact)r
STEPS = %(steps)d


@flow(name="tracked-demo")
def tracked_demo(lr: float = 0.1, label: str | None = None, fail: bool = False) -> float:
    with track_run() as tracker:
        loss = 1.0
        for step in range(STEPS):
            loss *= 1 - lr
            tracker.log_metrics({"loss": loss}, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "notes.txt"
            path.write_bytes(ARTIFACT + str(lr).encode())
            tracker.log_artifact(path)
        tracker.log_table(pd.DataFrame({"step": [0, STEPS - 1], "loss": [1.0, loss]}), "curve.json")
        if fail:
            raise RuntimeError("planned failure")
    return loss


if __name__ == "__main__":
    # A deployment's runs, executed here instead of by a worker: the same engine call a
    # worker's child process makes, so the runs carry their deployment like a sweep's do.
    tracked_demo.to_deployment("tracking-test").apply()
    runs = []
    for params in ({"lr": 0.1}, {"lr": 0.5, "label": "fast"}, {"lr": 0.2, "fail": True}):
        fr = run_deployment("%(deployment)s", parameters=params, timeout=0)
        state = run_flow(tracked_demo, flow_run=fr, parameters=fr.parameters, return_type="state")
        runs.append({"flow_run_id": str(fr.id), "params": params, "state": state.type.value})

    from flowyard_flows.experiment import train_digits

    digits = train_digits(model="logreg", C=0.5, return_state=True)
    digits_run = {"flow_run_id": str(digits.state_details.flow_run_id), "state": digits.type.value}
    table = runs_table("%(deployment)s")
    print(json.dumps({
        "runs": runs,
        "digits": digits_run,
        "table": json.loads(table.to_json(orient="records", double_precision=15)),
        "columns": list(table.columns),
    }))
"""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not tmp_path_factory: concurrent pytest sessions of one user prune each other's
    # numbered temp dirs, which would delete a running platform's data under it.
    path = Path(tempfile.mkdtemp(prefix="flowyard-tracking-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def platform(workdir: Path) -> Iterator[Context]:
    # No worker: flows run in the client process, which keeps the module to one start.
    with running_platform(
        workdir / "home", mlflow={"enabled": True}, worker={"enabled": False}
    ) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def tracked(platform: Context, workdir: Path) -> dict[str, Any]:
    script = workdir / "client" / "tracked_demo.py"
    script.parent.mkdir()
    script.write_text(CLIENT % {"artifact": ARTIFACT, "steps": STEPS, "deployment": DEPLOYMENT})
    env = child_env(platform)
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(platform.paths.ca_cert)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def mlflow_api(ctx: Context, path: str, auth: Any = "admin", **params: Any) -> httpx.Response:
    """MLflow's REST API through the proxy, TLS verified against the platform CA."""
    credentials = mlflow_service.admin_auth(ctx) if auth == "admin" else auth
    return httpx.get(
        f"{ctx.config.proxy.url}/mlflow/api/2.0/mlflow/{path}",
        params=params,
        auth=credentials,
        verify=tls_verify(ctx),
        timeout=30,
    )


def prefect_api(ctx: Context, path: str, body: dict[str, Any]) -> Any:
    user, password = ctx.secrets.prefect_auth_string.get_secret_value().split(":", 1)
    response = httpx.post(
        f"{ctx.config.proxy.url}/api/{path}",
        json=body,
        auth=(user, password),
        verify=tls_verify(ctx),
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def mlflow_run_for(ctx: Context, flow_run_id: str) -> dict[str, Any]:
    experiments = mlflow_api(ctx, "experiments/search", max_results=100).json()["experiments"]
    found = httpx.post(
        f"{ctx.config.proxy.url}/mlflow/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [e["experiment_id"] for e in experiments],
            "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}'",
        },
        auth=mlflow_service.admin_auth(ctx),
        verify=tls_verify(ctx),
        timeout=30,
    ).json()
    assert len(found.get("runs", [])) == 1, found
    return dict(found["runs"][0])


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_requests_without_credentials_are_refused(platform: Context) -> None:
    assert mlflow_api(platform, "experiments/search", auth=None, max_results=1).status_code == 401
    wrong = ("admin", "not-the-password")
    assert mlflow_api(platform, "experiments/search", auth=wrong, max_results=1).status_code == 401
    ui = httpx.get(f"{platform.config.proxy.url}/mlflow/", verify=tls_verify(platform))
    assert ui.status_code == 401
    assert mlflow_api(platform, "experiments/search", max_results=1).status_code == 200


def test_runs_carry_params_metric_curve_and_prefect_tags(
    platform: Context, tracked: dict[str, Any]
) -> None:
    assert [r["state"] for r in tracked["runs"]] == ["COMPLETED", "COMPLETED", "FAILED"]
    for record in tracked["runs"]:
        run = mlflow_run_for(platform, record["flow_run_id"])
        run_id = run["info"]["run_id"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["lr"] == str(record["params"]["lr"])
        history = mlflow_api(platform, "metrics/get-history", run_id=run_id, metric_key="loss")
        points = sorted(history.json()["metrics"], key=lambda m: m["step"])
        assert [p["step"] for p in points] == list(range(STEPS))
        assert points[-1]["value"] < points[0]["value"]

        tags = tags_of(run)
        flow_run_id = record["flow_run_id"]
        assert tags["prefect.flow_run_id"] == flow_run_id
        assert tags["prefect.flow_name"] == "tracked-demo"
        assert tags["prefect.deployment"] == DEPLOYMENT
        assert tags["prefect.flow_run_name"] and tags["mlflow.runName"] == run["info"]["run_name"]
        assert tags["prefect.flow_run_url"] == (
            f"{platform.config.proxy.url}/runs/flow-run/{flow_run_id}"
        )
        assert "None" not in tags.values()
        assert run["info"]["status"] == ("FAILED" if record["params"].get("fail") else "FINISHED")
        # The experiment is the deployment: runs of one job side by side.
        experiment = mlflow_api(
            platform, "experiments/get", experiment_id=run["info"]["experiment_id"]
        )
        assert experiment.json()["experiment"]["name"] == DEPLOYMENT


def test_flow_runs_link_back_to_mlflow(platform: Context, tracked: dict[str, Any]) -> None:
    for record in tracked["runs"]:
        flow_run_id = record["flow_run_id"]
        run = mlflow_run_for(platform, flow_run_id)
        run_id, experiment_id = run["info"]["run_id"], run["info"]["experiment_id"]
        flow_run = prefect_api(
            platform, "flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )[0]
        assert f"mlflow-run:{run_id}" in flow_run["tags"]
        artifacts = prefect_api(
            platform, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        )
        links = [a for a in artifacts if a["key"] == "mlflow-run"]
        assert len(links) == 1
        url = f"{platform.config.proxy.url}/mlflow/#/experiments/{experiment_id}/runs/{run_id}"
        assert f"]({url})" in links[0]["data"]


def test_runs_table_is_one_row_per_run(platform: Context, tracked: dict[str, Any]) -> None:
    rows = {row["flow_run_id"]: row for row in tracked["table"]}
    assert set(rows) == {r["flow_run_id"] for r in tracked["runs"]}
    columns = tracked["columns"]
    assert columns[:3] == ["run_id", "run_name", "status"]
    assert {"params.lr", "params.label", "params.fail", "metrics.loss"} <= set(columns)
    for record in tracked["runs"]:
        row = rows[record["flow_run_id"]]
        lr = record["params"]["lr"]
        assert row["params.lr"] == str(lr)
        # Final metric: the last point of the curve.
        assert row["metrics.loss"] == pytest.approx((1 - lr) ** STEPS)
        assert row["prefect_state"] == ("Failed" if record["params"].get("fail") else "Completed")
        assert row["deployment"] == DEPLOYMENT
        assert row["prefect_url"].endswith(f"/runs/flow-run/{record['flow_run_id']}")
        assert row["mlflow_url"].endswith(f"/runs/{row['run_id']}")


def test_artifacts_are_in_the_bucket(platform: Context, tracked: dict[str, Any]) -> None:
    record = tracked["runs"][0]
    run = mlflow_run_for(platform, record["flow_run_id"])
    listed = mlflow_api(platform, "artifacts/list", run_id=run["info"]["run_id"]).json()
    assert {"notes.txt", "curve.json"} <= {f["path"] for f in listed["files"]}
    # Served through MLflow, stored in the platform's S3 bucket (read here on loopback).
    s3 = seaweedfs.s3_client(platform)
    key = f"{run['info']['experiment_id']}/{run['info']['run_id']}/artifacts/notes.txt"
    body = s3.get_object(  # type: ignore[attr-defined]
        Bucket=platform.config.object_store.artifacts_bucket, Key=key
    )["Body"].read()
    assert body == ARTIFACT + str(record["params"]["lr"]).encode()


def test_experiment_flow_logs_through_its_soft_import(
    platform: Context, tracked: dict[str, Any]
) -> None:
    assert tracked["digits"]["state"] == "COMPLETED"
    run = mlflow_run_for(platform, tracked["digits"]["flow_run_id"])
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model"] == "logreg" and params["C"] == "0.5"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["accuracy"] > 0.9
    listed = mlflow_api(platform, "artifacts/list", run_id=run["info"]["run_id"]).json()
    assert "per_class_metrics.json" in {f["path"] for f in listed["files"]}
    assert tags_of(run)["prefect.flow_name"] == "train-digits"
    assert "prefect.deployment" not in tags_of(run)


def test_mlflow_idles_small(platform: Context, tracked: dict[str, Any]) -> None:
    """The tuning holds: one uvicorn worker, no job runner (MLflow's defaults idle near
    3 GB), and no `mlflow server` process idling beside it: the CLI became the server."""
    pid = Supervisor(platform.paths).info("mlflow")["pid"]
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    assert len(procs) == 1, [p.cmdline() for p in procs]
    assert "uvicorn" in root.cmdline(), root.cmdline()
    rss = root.memory_info().rss
    assert rss < 500 * 2**20, f"MLflow uses {rss / 2**20:.0f} MB"


def test_admin_password_follows_the_secrets_file(platform: Context) -> None:
    """MLflow only reads the bootstrap password into an empty user store; `bootstrap`
    re-syncs it from secrets.toml (e.g. one restored from a backup), as for Postgres roles."""
    other = dataclasses.replace(
        platform,
        secrets=platform.secrets.model_copy(
            update={"mlflow_admin_password": SecretStr("restored-from-backup")}
        ),
    )
    try:
        assert mlflow_service.bootstrap(other) == [
            f"admin password re-synced from {platform.paths.secrets_file}"
        ]
        assert mlflow_api(other, "experiments/search", max_results=1).status_code == 200
    finally:
        mlflow_service.bootstrap(platform)
    assert mlflow_api(platform, "experiments/search", max_results=1).status_code == 200
    assert mlflow_service.bootstrap(platform) == []


def test_teams_get_users_that_read_but_do_not_edit_others_runs(
    platform: Context, tracked: dict[str, Any]
) -> None:
    base = f"{platform.config.proxy.url}/mlflow/api/2.0/mlflow"
    team = ("team-a", "team-a-has-a-long-password")
    created = httpx.post(
        f"{base}/users/create",
        json={"username": team[0], "password": team[1]},
        auth=mlflow_service.admin_auth(platform),
        verify=tls_verify(platform),
    )
    assert created.status_code == 200, created.text
    run_id = mlflow_run_for(platform, tracked["runs"][0]["flow_run_id"])["info"]["run_id"]
    assert mlflow_api(platform, "runs/get", auth=team, run_id=run_id).status_code == 200
    edit = httpx.post(
        f"{base}/runs/set-tag",
        json={"run_id": run_id, "key": "touched", "value": "yes"},
        auth=team,
        verify=tls_verify(platform),
    )
    assert edit.status_code == 403


def test_glue_needs_only_mlflow_skinny() -> None:
    """Every MLflow module `flowyard.tracking` loads ships in the mlflow-skinny wheel."""
    code = (
        "import json, sys, flowyard.tracking; "
        "print(json.dumps({m: getattr(sys.modules[m], '__file__', None) "
        "for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    from importlib.metadata import distribution

    skinny = distribution("mlflow-skinny")
    shipped = {str(Path(str(skinny.locate_file(f))).resolve()) for f in skinny.files or []}
    outside = sorted(m for m, f in loaded.items() if f and str(Path(f).resolve()) not in shipped)
    assert loaded and not outside
