"""The metrics exporter: the platform's own figures for Prometheus, behind the proxy's login.

This module holds the service description and the figures themselves (a few aggregate SQL
queries on the `prefect` database, Redis' INFO, the disk), so `flowyard status` and the
exporter read the same numbers. The exporter process (`flowyard.platform.exporter`) turns them
into metrics with `prometheus-client`; it lives in the platform layer because natively it
also reads supervisord's state. Caddy's own metrics (request latency) are not re-exposed here:
Caddy serves them itself at `/metrics/caddy`, behind the same login (`services.caddyfile`).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from flowyard.client.api import local_http
from flowyard.config.context import Context
from flowyard.files import write_private
from flowyard.services import postgres
from flowyard.services.base import Service
from flowyard.services.caddyfile import METRICS_PORT

NAME = "metrics"
# The exporter's port in containers; natively it listens on an owner-only Unix socket.
PORT = METRICS_PORT
MODULE = "flowyard.platform.exporter"
# What carries the config (as JSON) to the exporter process: a file natively (rendered by
# `prepare`, 0600), the variable itself in a container.
CONFIG_VAR = "FLOWYARD_EXPORTER_CONFIG"
CONFIG_FILE_VAR = "FLOWYARD_EXPORTER_CONFIG_FILE"
HEALTH_PATH = "/healthz"

# Every metric the exporter exposes: name -> (type, labels, meaning). The docs, the Grafana
# dashboard and the alert rules are checked against this table; the exporter's test checks
# the table against what it really serves.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "flowyard_flow_runs": (
        "gauge",
        ("state_type", "state_name"),
        "Flow runs in the database, by state type (COMPLETED, RUNNING, ...) and state name "
        "(Late, Retrying, ...).",
    ),
    "flowyard_late_flow_runs": ("gauge", (), "Flow runs in the Late state."),
    "flowyard_late_flow_runs_oldest_seconds": (
        "gauge",
        (),
        "How late the most overdue Late run is (now - its expected start), 0 when none.",
    ),
    "flowyard_work_queue_depth": (
        "gauge",
        ("pool", "queue"),
        "Scheduled flow runs whose start time has come (Late included), waiting for a worker.",
    ),
    "flowyard_work_pool_running_flow_runs": (
        "gauge",
        ("pool",),
        "Flow runs holding a slot of the pool (Pending, Running, Cancelling).",
    ),
    "flowyard_work_pool_concurrency_limit": (
        "gauge",
        ("pool",),
        "The pool's concurrency limit (only pools that have one).",
    ),
    "flowyard_work_pool_saturation": (
        "gauge",
        ("pool",),
        "Running flow runs / concurrency limit (only pools that have a limit; 1 = full).",
    ),
    "flowyard_worker_last_seen_seconds": (
        "gauge",
        ("pool", "worker"),
        "Seconds since the worker's last heartbeat (workers send one every 30 s).",
    ),
    "flowyard_service_up": (
        "gauge",
        ("service",),
        "1 when the service runs (natively: supervisord says RUNNING; in containers: the "
        "exporter reached it), else 0.",
    ),
    "flowyard_database_size_bytes": (
        "gauge",
        ("database",),
        "pg_database_size of each platform database.",
    ),
    "flowyard_redis_used_memory_bytes": ("gauge", (), "Redis used_memory (INFO memory)."),
    "flowyard_redis_maxmemory_bytes": (
        "gauge",
        (),
        "Redis maxmemory (writes fail at this ceiling: noeviction).",
    ),
    "flowyard_disk_free_bytes": (
        "gauge",
        ("path",),
        "Free bytes on the filesystem holding the platform's data.",
    ),
    "flowyard_disk_size_bytes": (
        "gauge",
        ("path",),
        "Size of the filesystem holding the platform's data.",
    ),
    "flowyard_collector_up": (
        "gauge",
        ("collector",),
        "1 when a group of figures (prefect, postgres, redis, services, disk) was read "
        "this scrape, 0 when it failed (its metrics are then absent).",
    ),
    "flowyard_scrape_duration_seconds": ("gauge", (), "Wall time the last scrape took."),
}

# Caddy's own metrics at /metrics/caddy (Caddy's global `metrics` option): the ones the
# dashboard uses.
CADDY_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "caddy_http_request_duration_seconds": (
        "histogram",
        ("server", "handler", "code", "method"),
        "Latency of every request through the proxy (API, UI, /mlflow, S3), by status code.",
    ),
    "caddy_http_requests_in_flight": (
        "gauge",
        ("server", "handler"),
        "Requests being served by the proxy now.",
    ),
}

# Prefect's state types that hold a work-pool slot.
SLOT_STATES = ("PENDING", "RUNNING", "CANCELLING")


def socket(ctx: Context) -> Path | None:
    return ctx.paths.socket(NAME) if ctx.hosts.use_sockets else None


def local_url(ctx: Context, path: str = "/metrics") -> str:
    """The exporter itself (over its socket natively; the host then only fills Host)."""
    return f"http://{ctx.hosts.metrics}:{PORT}{path}"


@dataclass
class QueueFigure:
    pool: str
    queue: str
    depth: int


@dataclass
class PoolFigure:
    pool: str
    running: int
    limit: int | None

    @property
    def saturation(self) -> float | None:
        if not self.limit:
            return None
        return self.running / self.limit


@dataclass
class WorkerFigure:
    pool: str
    worker: str
    last_seen_seconds: float
    status: str


@dataclass
class PrefectFigures:
    """What the `prefect` database says about runs, queues, pools and workers."""

    runs_by_state: dict[tuple[str, str], int] = field(default_factory=dict)
    late_runs: int = 0
    oldest_late_seconds: float = 0.0
    queues: list[QueueFigure] = field(default_factory=list)
    pools: list[PoolFigure] = field(default_factory=list)
    workers: list[WorkerFigure] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "late_runs": self.late_runs,
            "oldest_late_seconds": round(self.oldest_late_seconds, 1),
            "queues": [q.__dict__ for q in self.queues],
            "pools": [{**p.__dict__, "saturation": p.saturation} for p in self.pools],
            "workers": [
                {**w.__dict__, "last_seen_seconds": round(w.last_seen_seconds, 1)}
                for w in self.workers
            ],
        }


# Aggregates only: each is one pass over an index or a small table, whatever the history.
_RUNS_BY_STATE = """
SELECT state_type::text, coalesce(state_name, ''), count(*)
FROM flow_run WHERE state_type IS NOT NULL GROUP BY 1, 2
"""
_LATE = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(expected_start_time)), 0)::float
FROM flow_run WHERE state_type = 'SCHEDULED' AND state_name = 'Late'
"""
_QUEUES = """
SELECT p.name, q.name, count(r.id)
FROM work_queue q JOIN work_pool p ON p.id = q.work_pool_id
LEFT JOIN flow_run r ON r.work_queue_id = q.id AND r.state_type = 'SCHEDULED'
    AND coalesce(r.next_scheduled_start_time, r.expected_start_time) <= now()
GROUP BY 1, 2 ORDER BY 1, 2
"""
_POOLS = f"""
SELECT p.name, p.concurrency_limit, count(r.id)
FROM work_pool p LEFT JOIN work_queue q ON q.work_pool_id = p.id
LEFT JOIN flow_run r ON r.work_queue_id = q.id
    AND r.state_type IN ({", ".join(f"'{s}'" for s in SLOT_STATES)})
GROUP BY 1, 2 ORDER BY 1
"""
_WORKERS = """
SELECT p.name, w.name, extract(epoch FROM now() - w.last_heartbeat_time)::float,
    coalesce(w.status::text, '')
FROM worker w JOIN work_pool p ON p.id = w.work_pool_id ORDER BY 1, 2
"""


def prefect_figures(conn: psycopg.Connection[Any]) -> PrefectFigures:
    """The run, queue, pool and worker figures, from a connection to the `prefect` database."""
    figures = PrefectFigures()
    for state_type, state_name, count in conn.execute(_RUNS_BY_STATE):
        figures.runs_by_state[(state_type, state_name)] = int(count)
    row = conn.execute(_LATE).fetchone()
    if row:
        figures.late_runs, figures.oldest_late_seconds = int(row[0]), float(row[1])
    figures.queues = [QueueFigure(p, q, int(n)) for p, q, n in conn.execute(_QUEUES)]
    figures.pools = [PoolFigure(p, int(n), limit) for p, limit, n in conn.execute(_POOLS)]
    figures.workers = [
        WorkerFigure(p, w, float(age or 0), status) for p, w, age, status in conn.execute(_WORKERS)
    ]
    return figures


def read_prefect_figures(ctx: Context) -> PrefectFigures:
    with postgres.connect(ctx, "prefect") as conn:
        return prefect_figures(conn)


def database_sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute(
        "SELECT datname, pg_database_size(datname) FROM pg_database "
        "WHERE datname = ANY(%s) ORDER BY 1",
        (list(postgres.DATABASES),),
    )
    return {name: int(size) for name, size in rows}


def redis_memory(info: dict[str, Any]) -> tuple[int, int]:
    """(used_memory, maxmemory) from Redis' `INFO memory`."""
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))


def disk(ctx: Context) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding the platform's data."""
    usage = shutil.disk_usage(ctx.paths.data if ctx.paths.data.exists() else ctx.paths.home)
    return usage.free, usage.total


def is_ready(ctx: Context) -> bool:
    try:
        with local_http(socket(ctx), timeout=5) as client:
            return client.get(local_url(ctx, HEALTH_PATH)).status_code == 200
    except httpx.HTTPError:
        return False


def config_json(ctx: Context) -> str:
    """The config the exporter runs with, as JSON (what differs from the defaults)."""
    data = ctx.config.model_dump(mode="json", exclude_defaults=True, exclude={"home"})
    return json.dumps({"home": str(ctx.config.home), **data})


def config_path(ctx: Context) -> Path:
    return ctx.paths.run / "metrics.json"


def prepare(ctx: Context) -> None:
    # The whole config, so overrides given to `flowyard up` (FLOWYARD_* variables, which
    # supervisord does not pass on) reach the exporter as they reach every other service.
    write_private(config_path(ctx), config_json(ctx))


def command(ctx: Context) -> list[str]:
    return [sys.executable, "-m", MODULE]


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description=f"Prometheus metrics ({ctx.config.proxy.url}/metrics)",
        command=command(ctx),
        env={CONFIG_FILE_VAR: str(config_path(ctx))},
        cwd=ctx.paths.run,
        prepare=lambda: prepare(ctx),
        # A Unix socket natively; its container port is no setting (nothing publishes it).
        ports={},
        ready=lambda: is_ready(ctx),
        ready_timeout=30,
    )
