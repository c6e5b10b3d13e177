"""Least privilege for flows, end to end: a flow run on the platform's own worker reports
what its code can reach.

One platform (MLflow on, the local worker on) for the module. A deployment whose code the
worker pulls from S3 runs a probe flow (projects/leastpriv) that tries, with nothing but the
environment its worker gave it: the platform's files, S3 outside its scope, and MLflow
beyond its own runs. On a root run (CI) it must not be root, nor able to read secrets.toml.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from flowyard.config.context import Context
from flowyard.config.secrets import PLATFORM_WORKER
from flowyard.platform.supervisor import Supervisor
from flowyard.services import mlflow as mlflow_service
from flowyard.services import seaweedfs
from flowyard.services.caddy import tls_verify
from flowyard.testing import running_platform
from tests.integration.runs import create_run, deploy, result_value, run_logs, wait_state

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).parent / "projects" / "leastpriv"
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def platform() -> Iterator[Context]:
    # Not tmp_path_factory: the worker's unprivileged user must traverse the path (0711).
    base = Path(tempfile.mkdtemp(prefix="flowyard-leastpriv-"))
    base.chmod(0o711)
    try:
        with running_platform(base / "home", mlflow={"enabled": True}) as ctx:
            yield ctx
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def probe(platform: Context) -> dict[str, Any]:
    """The probe flow's report, from a run on the platform's worker."""
    ctx = platform
    # An experiment of the admin's: the flows user may read it, not write to it.
    uri = f"{ctx.config.proxy.url}{mlflow_service.PREFIX}"
    r = httpx.post(
        f"{uri}/api/2.0/mlflow/experiments/create",
        json={"name": "admins-own"},
        auth=mlflow_service.admin_auth(ctx),
        verify=tls_verify(ctx),
        timeout=30,
    )
    r.raise_for_status()
    deploy(ctx, PROJECT)
    run_id = create_run(
        ctx,
        "probe/probe",
        home=str(ctx.config.home),
        artifacts_bucket=ctx.config.object_store.artifacts_bucket,
        admin_experiment_id=r.json()["experiment_id"],
    )
    run = wait_state(ctx, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
    assert run["state_type"] == "COMPLETED", (run["state"], run_logs(ctx, run_id)[-20:])
    # The result itself was written by the run to the results bucket with the flows' key.
    report = result_value(ctx, run)
    assert isinstance(report, dict)
    return report


def test_flow_runs_as_an_unprivileged_user_on_a_root_install(
    platform: Context, probe: dict[str, Any]
) -> None:
    worker = Supervisor(platform.paths).info("worker")
    uids = psutil.Process(worker["pid"]).uids()
    if AS_ROOT:
        expected = pwd.getpwnam(platform.config.worker.system_user).pw_uid
        assert probe["uid"] == probe["euid"] == expected != 0
        assert uids.real == uids.effective == expected
        # Its state directory is its own, and stays so after `up`'s secure_home.
        state = platform.paths.service_data("worker")
        assert state.stat().st_uid == expected and state.stat().st_mode & 0o777 == 0o700
        # The platform's files are out of its reach; the public CA is not.
        for what in ("read_secrets", "list_run", "list_logs", "list_data"):
            assert probe[what] == "PermissionError", (what, probe[what])
        # Other services' data, on the first `up` too (made before any `secure_home` ran).
        for name, outcome in probe["list_services_data"].items():
            assert outcome in ("PermissionError", "FileNotFoundError"), (name, outcome)
        assert probe["list_worker_data"] == "ok"
    else:
        # A non-root install has no more privileged account to step down from.
        assert probe["uid"] == os.getuid()
    assert probe["read_ca"] == "ok"


def test_flow_s3_key_reads_code_and_writes_results_only(
    platform: Context, probe: dict[str, Any]
) -> None:
    assert probe["read_code"] == "ok"
    assert probe["write_code"] == "AccessDenied"
    assert probe["write_results"] == "ok" and probe["read_results"] == "ok"
    # MLflow's artifacts go through its server; the flows' key has no access of its own.
    assert probe["read_artifacts"] == "AccessDenied"
    assert probe["create_bucket"] == "AccessDenied"
    assert probe["delete_bucket"] == "AccessDenied"
    # SeaweedFS answers ListBuckets with the buckets an identity may use: never the others.
    store = platform.config.object_store
    assert set(probe["buckets"]) <= {store.code_bucket, store.results_bucket}
    # The refused write left nothing behind.
    listed = seaweedfs.s3_client(platform).list_objects_v2(  # type: ignore[attr-defined]
        Bucket=store.code_bucket, Prefix="probe/"
    )
    assert listed.get("KeyCount", 0) == 0


def test_flow_prefect_login_is_a_workers(platform: Context, probe: dict[str, Any]) -> None:
    """The run's Prefect login is the platform workers' own (role `worker`), not the admin's:
    it reads its own run, and the gate refuses what only an admin may do."""
    assert probe["prefect_user"] == PLATFORM_WORKER
    assert probe["prefect_read_own_run"] == "ok", probe["prefect_read_own_run"]
    assert probe["prefect_create_pool"] == "403", probe["prefect_create_pool"]
    assert probe["prefect_delete_deployment"] == "403", probe["prefect_delete_deployment"]


def test_flow_mlflow_login_logs_its_own_runs_and_is_no_admin(
    platform: Context, probe: dict[str, Any]
) -> None:
    assert probe["mlflow_user"] == mlflow_service.FLOWS_USER
    assert probe["mlflow_log_own_run"] == "ok", probe["mlflow_log_own_run"]
    assert probe["mlflow_read_admins_experiment"] == "ok"
    assert "403" in probe["mlflow_log_admins_experiment"]
    assert probe["mlflow_create_user"] == "403"
    # The metric landed, as the flows user logged it.
    with httpx.Client(verify=tls_verify(platform), timeout=30) as client:
        r = client.get(
            f"{platform.config.proxy.url}{mlflow_service.PREFIX}/api/2.0/mlflow/runs/get",
            params={"run_id": probe["mlflow_run_id"]},
            auth=mlflow_service.admin_auth(platform),
        )
    r.raise_for_status()
    run = r.json()["run"]
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"reached": 1.0}


def test_flows_mlflow_login_follows_the_secrets_file(platform: Context) -> None:
    """A changed password (say secrets.toml restored from a backup) is re-synced at `up`,
    through the server so its login cache follows at once; the store path (compose's init
    job) keeps the user a non-admin."""
    changed = dataclasses.replace(
        platform,
        secrets=platform.secrets.model_copy(
            update={"mlflow_flows_password": SecretStr("restored-flows-password-1234")}
        ),
    )

    def works(ctx: Context) -> bool:
        with httpx.Client(verify=tls_verify(ctx), timeout=30) as client:
            r = client.get(
                f"{ctx.config.proxy.url}{mlflow_service.PREFIX}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                auth=mlflow_service.flows_auth(ctx),
            )
        return r.status_code == 200

    try:
        assert works(platform)
        assert len(mlflow_service.bootstrap(changed)) == 1
        assert works(changed) and not works(platform)
    finally:
        mlflow_service.bootstrap(platform)
    assert works(platform)
    assert mlflow_service.bootstrap(platform) == []
    mlflow_service.sync_flows_user(platform)  # idempotent on an existing user
