"""Parameter sweep: fan a grid out as separate runs of a deployment.

Each grid point becomes its own flow run (picked up by any worker of the pool), so a
sweep scales with the worker fleet instead of one process. Runs are created without
blocking and then polled together, bounded by `timeout`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

# Both models use C, so the 4 default runs are all distinct (rf ignores C).
DEFAULT_GRID: dict[str, list[Any]] = {"model": ["logreg", "svc"], "C": [0.1, 1.0]}
POLL_SECONDS = 5.0
ARTIFACT_KEY = "digits-sweep"


def _start(deployment: str, params: dict[str, Any], work_queue_name: str | None) -> FlowRun:
    run = run_deployment(
        name=deployment,
        parameters=params,
        timeout=0,
        as_subflow=True,
        work_queue_name=work_queue_name,
    )
    # run_deployment returns a coroutine only when called from async code; the sweep is sync.
    if not isinstance(run, FlowRun):
        raise TypeError(f"run_deployment returned {type(run).__name__}, not a FlowRun")
    return run


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in key order then value order.

    An empty grid yields one run with the deployment's default parameters.
    """
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid[{key!r}] must be a non-empty list, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten sweep records into artifact rows (one column per parameter and metric)."""
    rows = []
    for run in runs:
        metrics = (run.get("result") or {}).get("metrics", {})
        rows.append(
            {
                **run["parameters"],
                "state": run["state"],
                **metrics,
                "flow_run_id": run["flow_run_id"],
            }
        )
    return rows


def _record(flow_run: FlowRun, parameters: dict[str, Any]) -> dict[str, Any]:
    state = flow_run.state
    record: dict[str, Any] = {
        "parameters": parameters,
        "state": state.type.value if state else "UNKNOWN",
        "flow_run_id": str(flow_run.id),
        "result": None,
    }
    if state is not None and state.is_completed():
        try:
            # Reads the child's persisted result from the platform's result storage.
            record["result"] = state.result(raise_on_failure=False)
        except Exception as exc:  # storage unreachable or result not persisted
            record["result_error"] = f"{type(exc).__name__}: {exc}"
    return record


def _wait_for(ids: list[UUID], timeout: float) -> dict[UUID, FlowRun]:
    """Poll until every run is final or `timeout` seconds pass; return latest views."""
    deadline = time.monotonic() + timeout
    latest: dict[UUID, FlowRun] = {}
    pending = set(ids)
    with get_client(sync_client=True) as client:
        while True:
            for run_id in list(pending):
                latest[run_id] = run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    pending.discard(run_id)
            if not pending or time.monotonic() >= deadline:
                return latest
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


@flow(name="digits-sweep", persist_result=True, result_serializer="json")
def digits_sweep(
    grid: dict[str, list] | None = None,
    deployment: str = "train-digits/train-digits",
    work_queue_name: str | None = None,
    wait: bool = True,
    timeout: float = 600,
) -> list[dict[str, Any]]:
    """Run `deployment` once per grid point; with `wait`, collect states and metrics.

    Runs not final after `timeout` seconds are reported in their current state and are
    left running: cancelling them would throw away work the caller may still want.
    """
    logger = get_run_logger()
    combos = expand_grid(DEFAULT_GRID if grid is None else grid)
    logger.info("sweeping %d runs of %s", len(combos), deployment)

    # timeout=0: create the run and return at once, so all grid points start together.
    flow_runs = [_start(deployment, params, work_queue_name) for params in combos]
    if wait:
        latest = _wait_for([fr.id for fr in flow_runs], timeout)
        flow_runs = [latest[fr.id] for fr in flow_runs]

    runs = [_record(fr, params) for fr, params in zip(flow_runs, combos, strict=True)]
    unfinished = [r for r in runs if wait and r["state"] != "COMPLETED"]
    if unfinished:
        logger.warning(
            "%d of %d runs did not complete: %s",
            len(unfinished),
            len(runs),
            [(r["flow_run_id"], r["state"]) for r in unfinished],
        )

    create_table_artifact(
        table=summarise(runs),
        key=ARTIFACT_KEY,
        description=f"Sweep of `{deployment}` over {len(runs)} parameter sets",
    )
    return runs


if __name__ == "__main__":
    print(digits_sweep())
