"""`runs_table`: the domain table (one row per run) read from the tracking store.

Parameters and final metrics come from MLflow, the state from Prefect: a run's MLflow status
ends with the tracked block, while the flow run may still fail or crash afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from flowyard.tracking.prefect_link import flow_run_states
from flowyard.tracking.run import (
    TAG_DEPLOYMENT,
    TAG_FLOW_RUN_ID,
    TAG_FLOW_RUN_NAME,
    TAG_FLOW_RUN_URL,
    run_ui_url,
)

if TYPE_CHECKING:
    import pandas as pd

# Fixed columns first; then `params.<name>` and `metrics.<name>`, MLflow's own naming, which
# keeps a parameter and a metric of the same name apart.
BASE_COLUMNS = [
    "run_id",
    "run_name",
    "status",
    "start_time",
    "end_time",
    "flow_run_id",
    "flow_run_name",
    "deployment",
    "prefect_state",
    "prefect_url",
    "mlflow_url",
]


def runs_table(
    experiment: str,
    *,
    filter_string: str = "",
    order_by: list[str] | None = None,
    max_results: int = 1000,
    prefect_state: bool = True,
    client: MlflowClient | None = None,
) -> pd.DataFrame:
    """One row per run of `experiment` (a name, e.g. "train-digits/train-digits").

    `filter_string` and `order_by` are MLflow's search syntax (e.g. "params.model = 'svc'",
    ["metrics.accuracy DESC"]); newest first by default. With `prefect_state`, each run's
    Prefect flow run state is read from the Prefect API in one batched call.
    """
    import pandas as pd

    client = client or MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"No MLflow experiment named {experiment!r}")
    runs: list[Run] = []
    token: str | None = None
    while len(runs) < max_results:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=filter_string,
            order_by=order_by or ["attributes.start_time DESC"],
            max_results=min(1000, max_results - len(runs)),
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            break

    flow_run_ids = [r.data.tags[TAG_FLOW_RUN_ID] for r in runs if TAG_FLOW_RUN_ID in r.data.tags]
    states = flow_run_states(flow_run_ids) if prefect_state and flow_run_ids else {}
    rows = []
    for run in runs:
        info, tags = run.info, run.data.tags
        flow_run_id = tags.get(TAG_FLOW_RUN_ID)
        row = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "status": info.status,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True)
            if info.end_time
            else pd.NaT,
            "flow_run_id": flow_run_id,
            "flow_run_name": tags.get(TAG_FLOW_RUN_NAME),
            "deployment": tags.get(TAG_DEPLOYMENT),
            "prefect_state": states.get(flow_run_id) if flow_run_id else None,
            "prefect_url": tags.get(TAG_FLOW_RUN_URL),
            "mlflow_url": run_ui_url(client.tracking_uri, found.experiment_id, info.run_id),
        }
        row |= {f"params.{k}": v for k, v in sorted(run.data.params.items())}
        # run.data.metrics holds each metric's latest value: the run's final metrics.
        row |= {f"metrics.{k}": v for k, v in sorted(run.data.metrics.items())}
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    extra = sorted(
        (c for c in frame.columns if c not in BASE_COLUMNS),
        key=lambda c: (not c.startswith("params."), c),
    )
    return frame[BASE_COLUMNS + extra]
