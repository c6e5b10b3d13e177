"""Tracking: MLflow `log_batch` of N metric points vs N unbatched `log_metric` calls.

Through the platform's path (Caddy, /mlflow, CA verified), as flows log. Runs only when the
MLflow service exists (src/flowyard/services/mlflow.py) and the mlflow client is
installed; otherwise it is skipped with a note.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from importlib.util import find_spec

from benchmarks.harness import BenchEnv, say
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import rate
from flowyard.client.env import platform_client_env
from flowyard.config.context import Context

BATCH_LIMIT = 1000  # MLflow's maximum metrics per log_batch request


def unavailable_reason() -> str | None:
    if find_spec("flowyard.services.mlflow") is None:
        return "this flowyard has no MLflow service (flowyard.services.mlflow)"
    if find_spec("mlflow") is None:
        return "the mlflow client is not installed (pip install -e '.[tracking]')"
    return None


@contextlib.contextmanager
def mlflow_env(ctx: Context) -> Iterator[str]:
    """MLFLOW_* for the platform (from client_env when it provides them); the tracking URI."""
    env = {k: v for k, v in platform_client_env(ctx).items() if k.startswith("MLFLOW_")}
    env.setdefault("MLFLOW_TRACKING_URI", f"{ctx.config.proxy.url}/mlflow")
    if ctx.config.proxy.tls == "internal":
        env.setdefault("MLFLOW_TRACKING_SERVER_CERT_PATH", str(ctx.paths.ca_cert))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["MLFLOW_TRACKING_URI"]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(env: BenchEnv, res: BenchResult) -> None:
    reason = unavailable_reason()
    if reason or not env.platform.config.mlflow.enabled:
        res.status = "skipped"
        res.notes.append(reason or "MLflow is disabled in the platform's config")
        print(f"tracking benchmark skipped: {res.notes[-1]}")
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    n = env.plan.tracking_points
    with mlflow_env(env.platform) as uri:
        res.candidate = f"log_batch of {n} points ({uri})"
        res.reference = f"{n} log_metric calls, one point each"
        client = MlflowClient(uri)
        experiment = client.create_experiment(f"bench-tracking-{uuid.uuid4().hex[:8]}")
        run_id = client.create_run(experiment).info.run_id
        try:
            client.log_metric(run_id, "warmup", 0.0)  # connection, TLS, server caches
            now_ms = int(time.time() * 1000)
            points = [Metric("batched", float(i), now_ms, i) for i in range(n)]
            say(f"tracking: log_batch of {n} points, then {n} log_metric calls")
            t = time.perf_counter()
            for i in range(0, n, BATCH_LIMIT):
                client.log_batch(run_id, metrics=points[i : i + BATCH_LIMIT])
            batched = time.perf_counter() - t
            t, done = time.perf_counter(), 0
            for i in range(n):
                if env.deadline.passed:
                    res.status = "partial"
                    break
                client.log_metric(run_id, "unbatched", float(i), step=i)
                done += 1
            unbatched = time.perf_counter() - t
            logged = len(client.get_metric_history(run_id, "batched"))
            res.details.update(
                points=n, batched_s=batched, unbatched_s=unbatched, unbatched_done=done
            )
            if logged != n:
                res.status = "partial"
                res.notes.append(f"only {logged} of {n} batched points were stored")
        finally:
            client.set_terminated(run_id)
            client.delete_experiment(experiment)
    # If the deadline cut the unbatched calls short, scale their time to n points.
    unbatched_n = unbatched / done * n if done else None
    res.add(
        Figure(f"{n} points: total time", "s", batched, unbatched_n, n=n),
        Figure("points per second", "points/s", rate(n, batched), rate(done, unbatched), "higher"),
    )
