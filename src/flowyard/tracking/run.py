"""`track_run`: one MLflow run per Prefect flow run, linked both ways.

Only the MLflow client API is used (`MlflowClient`, entities), which mlflow-skinny provides,
so flows do not need the full MLflow server package. The client reads its URI, credentials
and CA from the environment `flowyard env` prints (MLFLOW_TRACKING_*).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from flowyard.tracking.prefect_link import PrefectRun, current_flow_run, link_flow_run

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "Default"
# MLflow run tags that carry the Prefect side of the link (read back by runs_table).
TAG_FLOW_RUN_ID = "prefect.flow_run_id"
TAG_FLOW_RUN_NAME = "prefect.flow_run_name"
TAG_FLOW_NAME = "prefect.flow_name"
TAG_DEPLOYMENT = "prefect.deployment"
TAG_FLOW_RUN_URL = "prefect.flow_run_url"


def experiment_name(run: PrefectRun | None) -> str:
    """After the deployment (`flow/deployment`), else the flow: runs of one job side by side."""
    if run is None:
        return DEFAULT_EXPERIMENT
    return run.deployment or run.flow_name or DEFAULT_EXPERIMENT


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:
        # The runs of a sweep start together: another one may have just created it.
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        found = client.get_experiment_by_name(name)
        assert found is not None
        return str(found.experiment_id)


def param_value(value: Any) -> str:
    """MLflow params are strings: JSON for containers (readable, comparable), str otherwise."""
    text = (
        json.dumps(value, sort_keys=True, default=str)
        if isinstance(value, (dict, list, tuple))
        else str(value)
    )
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[: MAX_PARAM_VAL_LENGTH - 1] + "…"


def prefect_tags(run: PrefectRun | None) -> dict[str, str]:
    if run is None:
        return {}
    url = run.url
    values = {
        TAG_FLOW_RUN_ID: run.flow_run_id,
        TAG_FLOW_RUN_NAME: run.flow_run_name,
        TAG_FLOW_NAME: run.flow_name,
        TAG_DEPLOYMENT: run.deployment,
        TAG_FLOW_RUN_URL: url,
        # The run's description in the MLflow UI: a clickable way back to Prefect.
        MLFLOW_RUN_NOTE: f"Prefect flow run [{run.flow_run_name or run.flow_run_id}]({url})"
        if url
        else None,
    }
    # Absent values are left out rather than stored as the string "None".
    return {k: v[:MAX_TAG_VAL_LENGTH] for k, v in values.items() if v}


def run_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class Tracker:
    """Logs to one MLflow run; metrics are buffered and sent with `log_batch`.

    One request per metric is about 100 times slower than batches, so metrics wait until
    `flush_every` of them are pending or `flush_seconds` have passed, and always go out when
    the run ends.
    """

    # Flows may check this to tell a real tracker from flowyard_flows' NullTracker.
    active = True

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        experiment_id: str,
        url: str | None,
        flush_every: int = 1000,
        flush_seconds: float = 10.0,
    ):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.url = url
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(str(k), param_value(v)) for k, v in params.items()]
        if entries:
            self.client.log_batch(self.run_id, params=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [
            RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items() if v is not None
        ]
        if entries:
            self.client.log_batch(self.run_id, tags=entries)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()]
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def flush(self) -> None:
        """Send pending metrics now (the client splits them into API-sized batches)."""
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        if pending:
            self.client.log_batch(self.run_id, metrics=pending)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file or a directory; the server stores it in the platform's S3 bucket."""
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path)

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """A results table: `.json`/`.parquet` in MLflow's table format, or `.csv`."""
        if name.endswith(".csv"):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / Path(name).name
                df.to_csv(target, index=False)
                parent = str(Path(name).parent)
                self.client.log_artifact(
                    self.run_id, str(target), None if parent == "." else parent
                )
            return
        # MLflow's own format: the UI shows it as a table and mlflow.load_table reads it back.
        self.client.log_table(self.run_id, data=df, artifact_file=name)


def _end_status(exc: BaseException | None) -> str:
    if exc is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    # Cancellation and interrupts are not the code's failure.
    if not isinstance(exc, Exception):
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED)


@contextmanager
def track_run(
    params: Mapping[str, Any] | None = None,
    *,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    client: MlflowClient | None = None,
) -> Iterator[Tracker]:
    """Track the current Prefect flow run as an MLflow run.

    `params` defaults to the flow run's own parameters. The experiment is named after the
    deployment (`flow/deployment`), else the flow, unless `experiment` is given. The MLflow
    run is tagged with the flow run's id, name, deployment and UI URL; the flow run gets an
    `mlflow-run:<id>` tag and a link artifact back. The run ends FINISHED, or FAILED when an
    exception escapes (which is re-raised).
    """
    client = client or MlflowClient()
    prefect_run = current_flow_run()
    experiment_id = ensure_experiment(client, experiment or experiment_name(prefect_run))
    name = run_name or (prefect_run.flow_run_name if prefect_run else None)
    run = client.create_run(
        experiment_id, tags={**prefect_tags(prefect_run), **(tags or {})}, run_name=name
    )
    run_id = run.info.run_id
    url = run_ui_url(client.tracking_uri, experiment_id, run_id)
    tracker = Tracker(client, run_id, experiment_id, url)
    exc: BaseException | None = None
    try:
        tracker.log_params(
            params if params is not None else (prefect_run.parameters if prefect_run else {})
        )
        if prefect_run is not None:
            link_flow_run(prefect_run, run_id, url)
        yield tracker
    except BaseException as error:
        exc = error
        raise
    finally:
        try:
            tracker.flush()
        finally:
            client.set_terminated(run_id, status=_end_status(exc))
