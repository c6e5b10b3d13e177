"""The metrics exporter process: `python -m flowyard.platform.exporter [--containers]`.

A `prometheus-client` registry with one custom collector, computed at scrape time from the
figures in `flowyard.services.metrics` (a few aggregate queries on one kept-open PostgreSQL
connection, Redis' INFO over its socket, the disk) and, natively, supervisord's view of every
service. Served by `wsgiref` on an owner-only Unix socket natively, on TCP in a container;
Caddy routes `/metrics` to it behind the API login. Nothing runs between scrapes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
import redis as redis_client
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from flowyard.client.api import api_client
from flowyard.compose.view import HOSTS, secrets_from_env
from flowyard.config.context import Context
from flowyard.config.model import FlowyardConfig
from flowyard.config.paths import Paths
from flowyard.config.secrets import load_secrets
from flowyard.platform.supervisor import Supervisor
from flowyard.services import metrics, postgres
from flowyard.services import redis as redis_service

# A query slower than this fails its collector rather than hold the scrape.
STATEMENT_TIMEOUT_MS = 5000


def _gauge(name: str, **kwargs: Any) -> GaugeMetricFamily:
    kind, labels, meaning = metrics.METRICS[name]
    assert kind == "gauge"
    return GaugeMetricFamily(name, meaning, labels=list(labels) if labels else None, **kwargs)


class PlatformCollector(Collector):
    """Every `flowyard_*` metric, read when Prometheus asks (one scrape at a time)."""

    def __init__(self, ctx: Context, supervisor: Supervisor | None):
        self.ctx = ctx
        self.supervisor = supervisor
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        # Collectors failing now: each failure and recovery is logged once, not per scrape.
        self._failing: set[str] = set()
        self._redis = redis_client.Redis.from_url(
            redis_service.url(ctx, redis_service.MESSAGING_DB), socket_timeout=2
        )

    def describe(self) -> Iterable[Metric]:
        return []  # values are read at scrape time only

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = postgres.connect(self.ctx, "prefect")
            self._conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        return self._conn

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        up = _gauge("flowyard_collector_up")
        reached: dict[str, bool] = {}
        groups: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("prefect", self._prefect),
            ("postgres", self._postgres),
            ("redis", self._redis_memory),
            ("disk", self._disk),
        ]
        for name, read in groups:
            try:
                found = read()
                if name in self._failing:
                    self._failing.discard(name)
                    print(f"{name}: read again", flush=True)
            except Exception as exc:
                found = None
                if name not in self._failing:
                    self._failing.add(name)
                    print(f"{name}: cannot read ({type(exc).__name__}: {exc})", flush=True)
                if name in ("prefect", "postgres") and self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
            reached[name] = found is not None
            up.add_metric([name], 1.0 if found is not None else 0.0)
            yield from found or []
        try:
            services = self._services(reached)
            up.add_metric(["services"], 1.0)
            yield services
        except Exception:
            up.add_metric(["services"], 0.0)
        yield up
        duration = _gauge("flowyard_scrape_duration_seconds")
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _prefect(self) -> list[Metric]:
        figures = metrics.prefect_figures(self._connection())
        runs = _gauge("flowyard_flow_runs")
        for (state_type, state_name), count in sorted(figures.runs_by_state.items()):
            runs.add_metric([state_type, state_name], count)
        late = _gauge("flowyard_late_flow_runs", value=figures.late_runs)
        oldest = _gauge("flowyard_late_flow_runs_oldest_seconds", value=figures.oldest_late_seconds)
        depth = _gauge("flowyard_work_queue_depth")
        for q in figures.queues:
            depth.add_metric([q.pool, q.queue], q.depth)
        running = _gauge("flowyard_work_pool_running_flow_runs")
        limit = _gauge("flowyard_work_pool_concurrency_limit")
        saturation = _gauge("flowyard_work_pool_saturation")
        for p in figures.pools:
            running.add_metric([p.pool], p.running)
            if p.limit is not None:
                limit.add_metric([p.pool], p.limit)
            if p.saturation is not None:
                saturation.add_metric([p.pool], p.saturation)
        seen = _gauge("flowyard_worker_last_seen_seconds")
        for w in figures.workers:
            seen.add_metric([w.pool, w.worker], w.last_seen_seconds)
        return [runs, late, oldest, depth, running, limit, saturation, seen]

    def _postgres(self) -> list[Metric]:
        sizes = _gauge("flowyard_database_size_bytes")
        for name, size in metrics.database_sizes(self._connection()).items():
            sizes.add_metric([name], size)
        return [sizes]

    def _redis_memory(self) -> list[Metric]:
        used, ceiling = metrics.redis_memory(self._redis.info("memory"))
        return [
            _gauge("flowyard_redis_used_memory_bytes", value=used),
            _gauge("flowyard_redis_maxmemory_bytes", value=ceiling),
        ]

    def _disk(self) -> list[Metric]:
        free, total = metrics.disk(self.ctx)
        path = str(self.ctx.paths.data)
        free_gauge, size_gauge = (
            _gauge("flowyard_disk_free_bytes"),
            _gauge("flowyard_disk_size_bytes"),
        )
        free_gauge.add_metric([path], free)
        size_gauge.add_metric([path], total)
        return [free_gauge, size_gauge]

    def _services(self, reached: dict[str, bool]) -> Metric:
        gauge = _gauge("flowyard_service_up")
        if self.supervisor is not None:
            # Natively: supervisord's state of every program.
            for info in self.supervisor.all_info():
                gauge.add_metric([info["name"]], 1.0 if info["statename"] == "RUNNING" else 0.0)
            return gauge
        # In containers there is no supervisord: what this exporter itself reached.
        with contextlib.suppress(Exception), api_client(self.ctx, timeout=3) as client:
            reached["prefect-api"] = client.get("/health").status_code == 200
        for service in (postgres.NAME, redis_service.NAME, "prefect-api"):
            key = {postgres.NAME: "postgres", redis_service.NAME: "redis"}.get(service, service)
            gauge.add_metric([service], 1.0 if reached.get(key) else 0.0)
        return gauge


def build_registry(ctx: Context, supervisor: Supervisor | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(ctx, supervisor))
    # The exporter's own CPU and memory (process_cpu_seconds_total: the scrape cost).
    ProcessCollector(namespace="flowyard_exporter", registry=registry)
    return registry


def make_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    # Caddy compresses responses (`encode`), so the exporter spends no CPU on it.
    scrape = make_wsgi_app(registry, disable_compression=True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == metrics.HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        result: Iterable[bytes] = scrape(environ, start_response)
        return result

    return app


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        # A Unix socket's peer has no address; wsgiref wants a (host, port).
        if not isinstance(self.client_address, tuple):
            self.client_address = ("local", 0)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Caddy's access log already records every request."""


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class UnixWSGIServer(_ThreadingWSGIServer):
    address_family = socket.AF_UNIX
    allow_reuse_address = False
    allow_reuse_port = False

    def server_bind(self) -> None:
        path = Path(self.server_address)  # type: ignore[arg-type]
        path.unlink(missing_ok=True)
        old = os.umask(0o077)
        try:
            self.socket.bind(str(path))
        finally:
            os.umask(old)
        path.chmod(0o600)
        self.server_name, self.server_port = "localhost", 0
        self.setup_environ()


def serve(ctx: Context, app: Callable[..., Iterable[bytes]]) -> WSGIServer:
    sock = metrics.socket(ctx)
    if sock is not None:
        server: WSGIServer = UnixWSGIServer(str(sock), _Handler)  # type: ignore[arg-type]
        server.set_app(app)
        return server
    return make_server(
        "0.0.0.0", metrics.PORT, app, server_class=_ThreadingWSGIServer, handler_class=_Handler
    )


def load(containers: bool) -> Context:
    text = os.environ.get(metrics.CONFIG_VAR)
    if text is None:
        text = Path(os.environ[metrics.CONFIG_FILE_VAR]).read_text()
    config = FlowyardConfig.model_validate_json(text)
    if containers:
        return Context(config=config, secrets=secrets_from_env(), hosts=HOSTS)
    return Context(config=config, secrets=load_secrets(Paths(config.home).secrets_file))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    containers = "--containers" in args
    ctx = load(containers)
    registry = build_registry(ctx, None if containers else Supervisor(ctx.paths))
    server = serve(ctx, make_app(registry))

    def stop(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=60)
    finally:
        server.server_close()
        sock = metrics.socket(ctx)
        if sock is not None:
            sock.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
