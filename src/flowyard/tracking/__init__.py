"""Experiment tracking glue: Prefect flow runs and MLflow runs, linked both ways.

    from flowyard.tracking import track_run, runs_table

    @flow
    def train(lr: float = 0.1):
        with track_run() as tracker:          # params default to the flow's parameters
            for epoch in range(10):
                tracker.log_metrics({"loss": ...}, step=epoch)
            tracker.log_table(results_df, "results.json")
            tracker.log_artifact("model.pkl")

    runs_table("train/train")                  # pandas.DataFrame, one row per run

Needs only mlflow-skinny (and pandas for tables) in the flow's environment; the MLflow
server, its database and its S3 keys stay on the platform. See docs/tracking.md.
"""

from flowyard.tracking.prefect_link import PrefectRun, current_flow_run, flow_run_url
from flowyard.tracking.run import Tracker, experiment_name, track_run
from flowyard.tracking.table import runs_table

__all__ = [
    "PrefectRun",
    "Tracker",
    "current_flow_run",
    "experiment_name",
    "flow_run_url",
    "runs_table",
    "track_run",
]
