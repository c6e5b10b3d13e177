"""The compose `init` job: what native mode does before the Prefect API starts.

Natively, each service's `prepare`/`bootstrap` creates the database roles, runs Prefect's and
MLflow's migrations, creates MLflow's `flows` user and the buckets. Under compose the same
functions run here, once, with the container view of the config (`flowyard.compose.view`):
compose passes the config and the secrets in the environment and starts the API only after
this exits 0.
"""

from __future__ import annotations

import os

from flowyard.compose.view import HOSTS, secrets_from_env
from flowyard.config.context import Context
from flowyard.config.model import FlowyardConfig
from flowyard.services import postgres, prefect_api, seaweedfs


def run(ctx: Context) -> None:
    for line in postgres.ensure_databases(ctx):
        print(line, flush=True)
    prefect_api.migrate(ctx)
    print("prefect database: migrated", flush=True)
    if ctx.config.mlflow.enabled:
        from flowyard.services import mlflow

        mlflow.migrate(ctx)
        print("mlflow database: migrated", flush=True)
        mlflow.sync_flows_user(ctx)
        print(f"mlflow user {mlflow.FLOWS_USER}: ready", flush=True)
    if ctx.config.object_store.kind == "seaweedfs":
        seaweedfs.ensure_buckets(ctx)
        print(f"buckets: {', '.join(ctx.config.object_store.buckets)}", flush=True)


def main() -> None:
    config = FlowyardConfig.model_validate_json(os.environ["FLOWYARD_SETUP_CONFIG"])
    run(Context(config=config, secrets=secrets_from_env(), hosts=HOSTS))


if __name__ == "__main__":
    main()
