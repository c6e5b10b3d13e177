"""A flow that reports what its own code can reach on the platform (least privilege)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError
from prefect import flow
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run


def attempt(action: Callable[[], Any]) -> str:
    """ "ok", or what refused it: an S3 error code, an HTTP status, an OSError's name."""
    try:
        action()
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code"))
    except httpx.HTTPStatusError as exc:
        return str(exc.response.status_code)
    except OSError as exc:
        return type(exc).__name__
    except Exception as exc:  # MLflow's RestException and the like
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


@flow(name="probe")
def probe(
    home: str = "", artifacts_bucket: str = "", admin_experiment_id: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid()}
    root = Path(home)
    # The platform's files: only the public CA certificate is this user's to read.
    out["read_secrets"] = attempt(lambda: (root / "secrets.toml").read_bytes())
    out["list_run"] = attempt(lambda: os.listdir(root / "run"))
    out["list_logs"] = attempt(lambda: os.listdir(root / "logs"))
    out["list_data"] = attempt(lambda: os.listdir(root / "data"))
    out["list_services_data"] = {
        name: attempt(lambda name=name: os.listdir(root / "data" / name))  # type: ignore[misc]
        for name in ("postgres", "seaweedfs", "mlflow", "redis", "caddy", "prefect", "cli")
    }
    out["list_worker_data"] = attempt(lambda: os.listdir(root / "data" / "worker"))
    out["read_ca"] = attempt(lambda: (root / "ca" / "root.crt").read_bytes())

    # S3 with the keys in this run's environment (AWS_* from the worker's profile).
    s3 = boto3.client(
        "s3", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2})
    )
    code, results = os.environ["FLOWYARD_CODE_BUCKET"], os.environ["FLOWYARD_RESULTS_BUCKET"]
    key = f"probe/{flow_run.id}"
    out["read_code"] = attempt(lambda: s3.list_objects_v2(Bucket=code, Prefix="leastpriv/"))
    out["write_code"] = attempt(lambda: s3.put_object(Bucket=code, Key=key, Body=b"evil"))
    out["write_results"] = attempt(lambda: s3.put_object(Bucket=results, Key=key, Body=b"mine"))
    out["read_results"] = attempt(lambda: s3.get_object(Bucket=results, Key=key))
    out["read_artifacts"] = attempt(lambda: s3.list_objects_v2(Bucket=artifacts_bucket))
    out["create_bucket"] = attempt(lambda: s3.create_bucket(Bucket=f"probe-{os.getpid()}"))
    out["delete_bucket"] = attempt(lambda: s3.delete_bucket(Bucket=code))
    buckets: list[str] = []
    out["list_buckets"] = attempt(
        lambda: buckets.extend(b["Name"] for b in s3.list_buckets()["Buckets"])
    )
    out["buckets"] = buckets

    # MLflow as the worker's login: its own experiment and run work; admin calls do not.
    from mlflow import MlflowClient

    client = MlflowClient()
    out["mlflow_user"] = os.environ["MLFLOW_TRACKING_USERNAME"]

    def log_own_run() -> None:
        experiment = client.create_experiment(f"probe-{flow_run.id}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "reached", 1.0)
        client.set_terminated(run.info.run_id)
        out["mlflow_run_id"] = run.info.run_id

    out["mlflow_log_own_run"] = attempt(log_own_run)
    out["mlflow_log_admins_experiment"] = attempt(lambda: client.create_run(admin_experiment_id))
    out["mlflow_read_admins_experiment"] = attempt(
        lambda: client.get_experiment(admin_experiment_id)
    )
    uri = os.environ["MLFLOW_TRACKING_URI"]
    auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH", True)
    out["mlflow_create_user"] = attempt(
        lambda: httpx.post(
            f"{uri}/api/2.0/mlflow/users/create",
            json={"username": f"probe{os.getpid()}", "password": "Probe-password-123456"},
            auth=auth,
            verify=verify,
            timeout=30,
        ).raise_for_status()
    )

    # Prefect's API with this run's own login (PREFECT_API_AUTH_STRING, through the gate): a
    # worker's role, which runs flows but may not change the platform.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    out["prefect_user"] = os.environ["PREFECT_API_AUTH_STRING"].partition(":")[0]
    with get_client(sync_client=True) as prefect:
        out["prefect_read_own_run"] = attempt(lambda: prefect.read_flow_run(flow_run.id))
        out["prefect_create_pool"] = attempt(
            lambda: prefect.create_work_pool(WorkPoolCreate(name=f"probe-{os.getpid()}"))
        )
        deployment = UUID(str(runtime_deployment.id))
        out["prefect_delete_deployment"] = attempt(lambda: prefect.delete_deployment(deployment))
    return out
