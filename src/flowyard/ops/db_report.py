"""`flowyard db report`: where the platform's storage goes, and what retention will free.

Read-only: database and bucket sizes, the largest tables, rows old enough for Prefect's
vacuum service to delete, dead-tuple bloat, and the retention settings that apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from flowyard.config.context import Context
from flowyard.services import metrics, postgres, seaweedfs

# Prefect's db_vacuum deletes flow runs in these final states once they ended longer ago
# than the retention period; events go after `events_days` whatever they are.
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
TOP_TABLES = 10


@dataclass
class Table:
    database: str
    table: str
    total_bytes: int
    rows_estimate: int


@dataclass
class Bloat:
    database: str
    table: str
    live_rows: int
    dead_rows: int
    dead_ratio: float
    last_autovacuum: str | None


@dataclass
class Bucket:
    name: str
    objects: int
    size_bytes: int


@dataclass
class Report:
    retention: dict[str, Any]
    databases: dict[str, int]
    buckets: list[Bucket] = field(default_factory=list)
    largest_tables: list[Table] = field(default_factory=list)
    waiting_for_retention: dict[str, int] = field(default_factory=dict)
    bloat: list[Bloat] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retention_settings(ctx: Context) -> dict[str, Any]:
    r = ctx.config.hygiene.retention
    return {
        "events_days": r.events_days,
        "flow_runs_days": r.flow_runs_days,
        "applied_by": "Prefect's db_vacuum service (events, flow_runs), in prefect-services",
        "settings": "hygiene.retention.events_days, hygiene.retention.flow_runs_days",
    }


def _databases(ctx: Context) -> list[str]:
    return [d for d in postgres.DATABASES if d != "mlflow" or ctx.config.mlflow.enabled]


def largest_tables(ctx: Context, database: str, limit: int = TOP_TABLES) -> list[Table]:
    with postgres.connect(ctx, database) as conn:
        rows = conn.execute(
            "SELECT relname, pg_total_relation_size(relid), n_live_tup "
            "FROM pg_stat_user_tables ORDER BY 2 DESC, 1 LIMIT %s",
            (limit,),
        ).fetchall()
    return [Table(database, name, int(size), int(n)) for name, size, n in rows]


def bloat(ctx: Context, database: str, limit: int = TOP_TABLES) -> list[Bloat]:
    with postgres.connect(ctx, database) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup, n_dead_tup, "
            "round(n_dead_tup::numeric / greatest(n_live_tup + n_dead_tup, 1), 3)::float, "
            "last_autovacuum::text FROM pg_stat_user_tables WHERE n_dead_tup > 0 "
            "ORDER BY n_dead_tup DESC, relname LIMIT %s",
            (limit,),
        ).fetchall()
    return [
        Bloat(database, name, int(live), int(dead), ratio, av)
        for name, live, dead, ratio, av in rows
    ]


def waiting_for_retention(ctx: Context) -> dict[str, int]:
    """Rows older than the retention settings, which Prefect's vacuum has yet to delete."""
    r = ctx.config.hygiene.retention
    with postgres.connect(ctx, "prefect") as conn:
        events = conn.execute(
            "SELECT count(*) FROM events WHERE occurred < now() - make_interval(days => %s)",
            (r.events_days,),
        ).fetchone()
        runs = conn.execute(
            "SELECT count(*) FROM flow_run WHERE state_type::text = ANY(%s) "
            "AND end_time < now() - make_interval(days => %s)",
            (list(TERMINAL_STATES), r.flow_runs_days),
        ).fetchone()
    return {"events": int(events[0]) if events else 0, "flow_runs": int(runs[0]) if runs else 0}


def buckets(ctx: Context) -> list[Bucket]:
    client: Any = seaweedfs.s3_client(ctx)
    found = []
    for name in ctx.config.object_store.buckets:
        count = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                count += 1
                size += int(obj["Size"])
        found.append(Bucket(name, count, size))
    return found


def report(ctx: Context) -> Report:
    names = _databases(ctx)
    with postgres.connect(ctx) as conn:
        sizes = metrics.database_sizes(conn)
    tables = sorted(
        (t for d in names for t in largest_tables(ctx, d)), key=lambda t: -t.total_bytes
    )[:TOP_TABLES]
    return Report(
        retention=retention_settings(ctx),
        databases={n: s for n, s in sizes.items() if n in names},
        buckets=buckets(ctx),
        largest_tables=tables,
        waiting_for_retention=waiting_for_retention(ctx),
        bloat=sorted((b for d in names for b in bloat(ctx, d)), key=lambda b: -b.dead_rows)[
            :TOP_TABLES
        ],
    )
