"""The metrics' contract: the dashboard and alert files read only declared metrics, the
committed dashboard is a fresh render, and /metrics is routed behind the API login."""

from __future__ import annotations

from pathlib import Path

import yaml

from flowyard.config.context import Context
from flowyard.config.model import FlowyardConfig
from flowyard.config.secrets import Secrets
from flowyard.ops import dashboard
from flowyard.platform.exporter import make_app
from flowyard.services import catalog, gate, metrics
from flowyard.services.caddyfile import METRICS_PORT, Upstreams, render_caddyfile

REPO = Path(__file__).resolve().parents[2]


def _ctx(tmp_path: Path) -> Context:
    return Context(FlowyardConfig(home=tmp_path), Secrets.generate())


def test_committed_dashboard_is_a_fresh_render() -> None:
    assert (REPO / "deploy/grafana/flowyard.json").read_text() == dashboard.render()


def test_every_dashboard_panel_reads_declared_metrics() -> None:
    known = dashboard.known_metrics()
    for _, _, targets, _ in dashboard.PANELS:
        for expr, _ in targets:
            names = dashboard.metric_names(expr)
            assert names, expr
            assert names <= known, (expr, names - known)


def test_alert_rules_read_only_exposed_metrics() -> None:
    doc = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {"FlowyardLateRuns", "FlowyardWorkerDown", "FlowyardDiskNearlyFull"} <= alerts
    for rule in rules:
        names = dashboard.metric_names(rule["expr"])
        assert names and names <= set(metrics.METRICS), (rule["alert"], names)


def test_metrics_service_follows_caddy(tmp_path: Path) -> None:
    names = [s.name for s in catalog.services(_ctx(tmp_path))]
    assert names.index(metrics.NAME) == names.index("caddy") + 1
    assert metrics.PORT == METRICS_PORT


def test_metrics_routes_require_the_api_login(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    lines = [line.strip() for line in text.splitlines()]
    assert "metrics" in lines[: lines.index("}")]  # Caddy's request metrics, globally on
    for route in ("handle /metrics {", "handle /metrics/caddy {"):
        start = lines.index(route)
        # Natively the access gate decides (any login may read them).
        assert lines[start + 1] == f"forward_auth unix/{ctx.paths.socket(gate.NAME)} {{"
        assert lines[start + 2] == "uri /check"
    assert f"reverse_proxy unix/{ctx.paths.socket(metrics.NAME)}" in lines


def test_exporter_app_answers_health_without_scraping() -> None:
    class Boom:
        def collect(self) -> list[object]:
            raise AssertionError("scraped")

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Boom())  # type: ignore[arg-type]
    app = make_app(registry)
    seen: list[str] = []
    body = app({"PATH_INFO": metrics.HEALTH_PATH}, lambda status, headers: seen.append(status))
    assert seen == ["200 OK"] and b"".join(body) == b"ok\n"
