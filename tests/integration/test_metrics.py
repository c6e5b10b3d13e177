"""/metrics on the real platform: behind the API login, counting flow runs, serving every
metric the dashboard draws; `flowyard db report`; status's run figures."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowyard.client.api import api_client, auth_header
from flowyard.config.context import Context
from flowyard.ops import dashboard
from flowyard.services import caddy
from tests.integration.conftest import flowyard_cli


def _get(ctx: Context, path: str, login: bool = True) -> httpx.Response:
    headers = auth_header(ctx.secrets.prefect_auth_string.get_secret_value()) if login else {}
    return httpx.get(
        f"{ctx.config.proxy.url}{path}", headers=headers, verify=caddy.tls_verify(ctx), timeout=30
    )


def _families(ctx: Context, path: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = _get(ctx, path)
    assert response.status_code == 200, response.text[:500]
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        samples = found.setdefault(family.name, [])
        samples += [(s.labels, s.value) for s in family.samples]
        # A counter's family drops `_total`, which its samples (and queries) keep.
        for sample in family.samples:
            found.setdefault(sample.name, [])
    return found


def test_metrics_refused_without_the_login(platform: Context) -> None:
    for path in ("/metrics", "/metrics/caddy"):
        response = _get(platform, path, login=False)
        assert response.status_code == 401, path
        assert "flowyard_" not in response.text and "caddy_" not in response.text
        wrong = httpx.get(
            f"{platform.config.proxy.url}{path}",
            auth=("admin", "wrong"),
            verify=caddy.tls_verify(platform),
            timeout=30,
        )
        assert wrong.status_code == 401, path


def _completed_runs(ctx: Context) -> float:
    samples = _families(ctx, "/metrics").get("flowyard_flow_runs", [])
    return sum(v for labels, v in samples if labels["state_type"] == "COMPLETED")


def test_flow_runs_are_counted_and_every_dashboard_metric_is_served(platform: Context) -> None:
    before = _completed_runs(platform)
    with api_client(platform) as client:
        flow = client.post("/flows/", json={"name": f"metrics-{uuid.uuid4().hex[:8]}"})
        flow.raise_for_status()
        run = client.post(
            "/flow_runs/",
            json={"flow_id": flow.json()["id"], "state": {"type": "COMPLETED"}},
        )
        run.raise_for_status()
    assert _completed_runs(platform) == before + 1
    served = set(_families(platform, "/metrics")) | set(_families(platform, "/metrics/caddy"))
    families = _families(platform, "/metrics")
    # Every figure was read, and supervisord reports every service up.
    assert all(v == 1 for _, v in families["flowyard_collector_up"]), families
    up = {labels["service"]: v for labels, v in families["flowyard_service_up"]}
    assert up.get("postgres") == up.get("metrics") == up.get("caddy") == 1, up
    workers = families["flowyard_worker_last_seen_seconds"]
    assert workers and all(v < 120 for _, v in workers), workers
    for _, _, targets, _ in dashboard.PANELS:
        for expr, _ in targets:
            for name in dashboard.metric_names(expr):
                assert name in served, f"{name} (panel expression {expr!r}) is not served"


def test_db_report_and_status_figures(platform: Context) -> None:
    result = flowyard_cli(platform, "db", "report", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for section in (
        "retention",
        "databases",
        "buckets",
        "largest_tables",
        "waiting_for_retention",
        "bloat",
    ):
        assert section in report, section
    assert report["databases"]["prefect"] > 0
    assert report["retention"]["events_days"] == platform.config.hygiene.retention.events_days
    assert {b["name"] for b in report["buckets"]} == set(platform.config.object_store.buckets)
    assert any(t["table"] == "flow_run" for t in report["largest_tables"])
    status = flowyard_cli(platform, "status", "--json")
    runs = json.loads(status.stdout)["runs"]
    assert runs["late_runs"] >= 0 and runs["queues"] and runs["workers"], runs


def test_status_shows_the_last_start_and_each_services_memory(platform: Context) -> None:
    """Issue 16: start time and idle memory visible without the benchmark."""
    status = json.loads(flowyard_cli(platform, "status", "--json").stdout)
    last = status["last_start"]
    assert 0 < last["seconds"] < 600 and last["at"] <= time.time()
    assert set(last["services"]) == {s["name"] for s in status["services"]}
    pss = {s["name"]: s["pss_mib"] for s in status["services"]}
    # Every running service costs something; none is absurd (a unit mix-up would be).
    assert all(0 < mib < 4096 for mib in pss.values()), pss
    assert status["pss_mib"] == pytest.approx(sum(pss.values()), abs=1)
