"""The Grafana dashboard (`deploy/grafana/flowyard.json`), generated from the metric names the
exporter declares (`flowyard.services.metrics`): `python -m flowyard.ops.dashboard [OUT]`.

A unit test checks the committed file equals a fresh render; an integration test checks every
panel's metric is served by the live endpoints.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from flowyard.services.metrics import CADDY_METRICS, METRICS

DEFAULT_OUT = Path("deploy/grafana/flowyard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_NAME = re.compile(r"\b((?:flowyard|caddy)_[a-z0-9_]+)")

# (title, unit, [(expression, legend)], width): one row of panels after another, 24 wide.
PANELS: list[tuple[str, str, list[tuple[str, str]], int]] = [
    ("Late flow runs", "short", [("flowyard_late_flow_runs", "late")], 6),
    (
        "Most overdue late run",
        "s",
        [("flowyard_late_flow_runs_oldest_seconds", "late by")],
        6,
    ),
    ("Services up", "short", [("flowyard_service_up", "{{service}}")], 12),
    (
        "Flow runs by state",
        "short",
        [("sum by (state_name) (flowyard_flow_runs)", "{{state_name}}")],
        12,
    ),
    ("Work-queue depth", "short", [("flowyard_work_queue_depth", "{{pool}}/{{queue}}")], 12),
    (
        "Worker last seen",
        "s",
        [("flowyard_worker_last_seen_seconds", "{{worker}} ({{pool}})")],
        12,
    ),
    (
        "Pool saturation",
        "percentunit",
        [
            ("flowyard_work_pool_saturation", "{{pool}} saturation"),
            ("flowyard_work_pool_running_flow_runs", "{{pool}} running"),
        ],
        12,
    ),
    (
        "API request latency (p50, p95, p99)",
        "s",
        [
            (
                f"histogram_quantile({q}, sum by (le) "
                "(rate(caddy_http_request_duration_seconds_bucket[5m])))",
                f"p{int(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        12,
    ),
    (
        "Requests by status code",
        "reqps",
        [("sum by (code) (rate(caddy_http_request_duration_seconds_count[5m]))", "{{code}}")],
        12,
    ),
    ("Database size", "bytes", [("flowyard_database_size_bytes", "{{database}}")], 8),
    (
        "Redis memory",
        "bytes",
        [
            ("flowyard_redis_used_memory_bytes", "used"),
            ("flowyard_redis_maxmemory_bytes", "maxmemory"),
        ],
        8,
    ),
    (
        "Disk free",
        "percentunit",
        [("flowyard_disk_free_bytes / flowyard_disk_size_bytes", "{{path}}")],
        8,
    ),
    (
        "Exporter scrape",
        "s",
        [
            ("flowyard_scrape_duration_seconds", "scrape duration"),
            ("rate(flowyard_exporter_process_cpu_seconds_total[5m])", "exporter CPU (cores)"),
        ],
        12,
    ),
    ("Collectors up", "short", [("flowyard_collector_up", "{{collector}}")], 12),
]

# The exporter's own process metrics (prometheus-client's ProcessCollector).
PROCESS_METRICS = {"flowyard_exporter_process_cpu_seconds_total"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (histogram series map to their family)."""
    names = set()
    for name in _NAME.findall(expr):
        for suffix in ("_bucket", "_count", "_sum"):
            family = name.removesuffix(suffix)
            if family != name and family in CADDY_METRICS:
                name = family
        names.add(name)
    return names


def known_metrics() -> set[str]:
    return set(METRICS) | set(CADDY_METRICS) | PROCESS_METRICS


def render() -> str:
    panels: list[dict[str, Any]] = []
    x = y = 0
    for index, (title, unit, targets, width) in enumerate(PANELS, start=1):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(
            {
                "id": index,
                "type": "timeseries",
                "title": title,
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": width, "h": 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )
        x += width
    dashboard = {
        "title": "Flowyard",
        "uid": "flowyard",
        "tags": ["flowyard", "prefect"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }
    return json.dumps(dashboard, indent=2) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
