"""The compose `init` job: what native mode does before the Prefect API starts.

Natively, each service's `prepare`/`bootstrap` creates the database roles, runs Prefect's and
MLflow's migrations and creates the buckets. Under compose the same functions run here, once,
with the container view of the config (`render.containers`): compose passes the config and
the secrets in the environment and starts the API only after this exits 0.
"""

from __future__ import annotations

import os

from flowyard.config.model import FlowyardConfig
from flowyard.render.containers import HOSTS, secrets_from_env
from flowyard.services import postgres, prefect_api, seaweedfs
from flowyard.services.base import Context


def ensure_databases(ctx: Context) -> None:
    """As `postgres.bootstrap`: a role and database per platform database, passwords synced.

    Natively that runs the bundled psql; the image has none, so it talks SQL via psycopg.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=ctx.hosts.postgres,
        port=ctx.config.postgres.port,
        user=postgres.SUPERUSER,
        password=ctx.secrets.postgres_superuser_password.get_secret_value(),
        dbname="postgres",
        autocommit=True,
    ) as conn:
        for name, secret_field in postgres.DATABASES.items():
            if name == "mlflow" and not ctx.config.mlflow.enabled:
                continue
            password = getattr(ctx.secrets, secret_field).get_secret_value()
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(name), sql.Literal(password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(name)
                    )
                )
            print(f"database {name}: ready", flush=True)


def run(ctx: Context) -> None:
    ensure_databases(ctx)
    prefect_api.migrate(ctx)
    print("prefect database: migrated", flush=True)
    if ctx.config.mlflow.enabled:
        from flowyard.services import mlflow

        mlflow.migrate(ctx)
        print("mlflow database: migrated", flush=True)
    if ctx.config.object_store.kind == "seaweedfs":
        seaweedfs.ensure_buckets(ctx)
        print(f"buckets: {', '.join(ctx.config.object_store.buckets)}", flush=True)


def main() -> None:
    config = FlowyardConfig.model_validate_json(os.environ["FLOWYARD_SETUP_CONFIG"])
    run(Context(config=config, secrets=secrets_from_env(), hosts=HOSTS))


if __name__ == "__main__":
    main()
