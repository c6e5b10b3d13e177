"""Cross-validated grid search on the digits, fanned out as Dask tasks.

Where `digits-sweep` makes one flow run per grid point, this is one flow run whose tasks
(one per grid point and fold) run on the platform's Dask cluster through prefect-dask's
`DaskTaskRunner`: the cluster's cores, local and joined from other hosts, serve one run.
Each task records which Dask worker ran it; the flow logs every grid point's mean and
spread to MLflow and returns the ranking.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold

try:
    from flowyard_flows._cluster import cluster_runner
    from flowyard_flows._tracking import tracking
    from flowyard_flows.experiment import build_model, validate_params
    from flowyard_flows.sweep import expand_grid
except ImportError:  # pragma: no cover
    # Loaded as a script from the S3-pulled tree without the package installed.
    from _cluster import cluster_runner  # type: ignore[no-redef]
    from _tracking import tracking  # type: ignore[no-redef]
    from experiment import build_model, validate_params  # type: ignore[no-redef]
    from sweep import expand_grid  # type: ignore[no-redef]

# A worker runs this module's tasks without having imported it (Prefect loads a deployed
# flow from a file, under a module name no worker knows): ship its code with each task.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEFAULT_GRID: dict[str, list[Any]] = {"model": ["logreg", "svc"], "C": [0.1, 1.0, 10.0]}
ARTIFACT_KEY = "digits-cv"


def _where() -> str:
    """The Dask worker running this task (its name), else this host."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return socket.gethostname()


def fold_score(
    params: dict[str, Any], fold: int, folds: int, seed: int, hold_seconds: float = 0.0
) -> dict[str, Any]:
    """Train on all folds but `fold`, score on `fold` (plain function: unit-testable)."""
    started = time.perf_counter()
    x, y = load_digits(return_X_y=True)
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    train, test = splits[fold]
    model = build_model(
        params.get("model", "logreg"),
        float(params.get("C", 1.0)),
        params.get("max_depth"),
        int(params.get("n_estimators", 100)),
        seed,
    )
    model.fit(x[train], y[train])
    accuracy = float((model.predict(x[test]) == y[test]).mean())
    if hold_seconds:
        # Keeps the task busy (the fault tests kill a worker while tasks run).
        time.sleep(hold_seconds)
    return {
        "params": params,
        "fold": fold,
        "accuracy": accuracy,
        "seconds": round(time.perf_counter() - started, 4),
        "worker": _where(),
    }


score_task = task(name="cv-fold", retries=0, persist_result=False, cache_policy=NO_CACHE)(
    fold_score
)


def rank(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread of each grid point's fold accuracies, best first."""
    frame = pd.DataFrame(
        [
            {**s["params"], "key": repr(sorted(s["params"].items())), "accuracy": s["accuracy"]}
            for s in scores
        ]
    )
    rows = []
    for _key, group in frame.groupby("key", sort=False):
        params = {k: v for k, v in group.iloc[0].items() if k not in ("key", "accuracy")}
        rows.append(
            {
                **params,
                "mean_accuracy": round(float(group["accuracy"].mean()), 4),
                "std_accuracy": round(float(np.std(group["accuracy"])), 4),
                "folds": len(group),
            }
        )
    return sorted(rows, key=lambda r: -r["mean_accuracy"])


@flow(
    name="digits-cv",
    task_runner=cluster_runner(),
    persist_result=True,
    result_serializer="json",
)
def digits_cv(
    grid: dict[str, list] | None = None,
    folds: int = 3,
    seed: int = 0,
    hold_seconds: float = 0.0,
) -> dict[str, Any]:
    """k-fold cross-validation of every grid point, each (point, fold) a Dask task."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    combos = expand_grid(DEFAULT_GRID if grid is None else grid)
    for params in combos:
        validate_params(
            params.get("model", "logreg"),
            float(params.get("C", 1.0)),
            params.get("max_depth"),
            int(params.get("n_estimators", 100)),
            0.25,
        )
    logger = get_run_logger()
    logger.info("cross-validating %d grid points x %d folds on Dask", len(combos), folds)
    futures = [
        score_task.submit(params, fold, folds, seed, hold_seconds)
        for params in combos
        for fold in range(folds)
    ]
    scores = [f.result() for f in futures]
    ranking = rank(scores)
    workers = sorted({s["worker"] for s in scores})
    with tracking({"grid": combos, "folds": folds, "seed": seed}) as tracker:
        best = ranking[0]
        tracker.log_metrics(
            {
                "best_mean_accuracy": best["mean_accuracy"],
                "tasks": len(scores),
                "workers": len(workers),
            }
        )
        tracker.log_table(pd.DataFrame(ranking), "ranking.json")
        tracker.log_table(pd.DataFrame(scores).drop(columns=["params"]), "folds.json")
    create_table_artifact(
        table=ranking,
        key=ARTIFACT_KEY,
        description=f"{len(combos)} grid points x {folds} folds on Dask workers {workers}",
    )
    logger.info("best %s; tasks ran on %s", ranking[0], workers)
    return {"ranking": ranking, "scores": scores, "workers": workers}


if __name__ == "__main__":
    print(digits_cv())
