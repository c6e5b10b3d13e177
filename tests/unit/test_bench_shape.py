"""The benchmark suite's pure parts: statistics, figures, the JSON shape and the markdown.

No platform and no timing assertions: the figures themselves live in BENCHMARKS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from benchmarks import dispatch, gate_cost, gate_path, prefect_client, report
from benchmarks.cli import parse_args
from benchmarks.plan import ALL, make_plan
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import percentile, rate, ratio, summarize

from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.secrets import Secrets
from flowyard.projects.code import PUSH_CODE, content_addressed
from flowyard.projects.project import load_project
from flowyard.services.caddyfile import Upstreams, render_caddyfile


def test_percentile_interpolates_like_numpy() -> None:
    samples = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert percentile(samples, 50) == pytest.approx(5.5)
    assert percentile(samples, 95) == pytest.approx(9.55)
    assert percentile([3.0], 95) == 3.0
    assert percentile([5.0, 1.0, 3.0], 0) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_and_ratio() -> None:
    s = summarize([0.2, 0.1, 0.4, 0.3])
    assert s["n"] == 4 and s["min"] == 0.1 and s["max"] == 0.4
    assert s["mean"] == pytest.approx(0.25)
    assert summarize([]) == {"n": 0}
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert rate(30, 60, per=60) == 30
    assert rate(1, 0) is None


def _results() -> list[BenchResult]:
    dispatch = BenchResult("dispatch", "Dispatch latency", "fast worker", "stock worker")
    dispatch.add(Figure("run_deployment → Running p50", "s", 0.4, 8.0, "lower", n=20))
    dispatch.add(Figure("runs | per minute", "runs/min", 240.0, 22.0, "higher"))
    dispatch.notes.append("a note")
    skipped = BenchResult("tracking", "MLflow tracking", status="skipped", notes=["no MLflow"])
    return [dispatch, skipped]


def _doc(results: list[BenchResult]) -> dict:
    return report.document(
        results,
        machine={"nproc": 2, "ram_bytes": 2**31, "cpu_model": "Test CPU", "loadavg_start": [1.0]},
        settings={"dispatch_runs": 20, "timeouts_s": {"api": 1}},
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:10:00+00:00",
        quick=False,
        note="shared machine",
    )


def test_document_shape_is_valid_and_round_trips() -> None:
    results = _results()
    doc = json.loads(json.dumps(_doc(results)))
    assert report.validate(doc) == []
    fig = doc["benchmarks"][0]["figures"][0]
    assert fig["ratio"] == pytest.approx(0.05)
    again = report.results_from_document(doc)
    assert [r.name for r in again] == ["dispatch", "tracking"]
    assert again[0].figures[0].ratio == pytest.approx(0.05)


def test_validate_reports_problems() -> None:
    doc = _doc(_results())
    doc["benchmarks"][0]["figures"][0].pop("reference")
    doc["benchmarks"][1]["status"] = "ok"  # ok without figures
    del doc["machine"]["cpu_model"]
    problems = report.validate(doc)
    assert any("reference" in p for p in problems)
    assert any("tracking" in p for p in problems)
    assert any("cpu_model" in p for p in problems)


def test_markdown_table_has_value_reference_and_ratio() -> None:
    results = _results()
    text = report.render_markdown(_doc(results), results)
    assert "| Benchmark | Metric | Value | Reference | Ratio | Better | n |" in text
    assert "| Dispatch latency | run_deployment → Running p50 | 0.400 s | 8.00 s | 0.050x |" in text
    assert "runs \\| per minute" in text  # pipes in cells are escaped
    assert "*skipped*: no MLflow" in text
    assert "2 CPUs (Test CPU), 2.0 GiB RAM" in text
    assert "value = fast worker; reference = stock worker" in text
    assert "shared machine" in text


def test_number_formatting() -> None:
    assert report.fmt_number(None) == "-"
    assert report.fmt_number(1234.4, "MiB") == "1,234 MiB"
    assert report.fmt_number(12.345, "ms") == "12.3 ms"
    assert report.fmt_number(0.01234, "s") == "0.0123 s"
    assert report.fmt_number(0) == "0"


def test_update_doc_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Intro\n\n{report.BEGIN_MARK}\nold\n{report.END_MARK}\n\n## After\n")
    report.update_doc(doc, "new table\n")
    text = doc.read_text()
    assert "old" not in text and "new table" in text
    assert text.startswith("# Intro") and text.endswith("## After\n")
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(ValueError):
        report.update_doc(tmp_path / "bare.md", "x")


def test_write_outputs(tmp_path: Path) -> None:
    results = _results()
    doc = _doc(results)
    written = report.write_outputs(doc, "md", tmp_path, "run1")
    assert {p.name for p in written} == {"run1.json", "run1.md", "latest.json", "latest.md"}
    assert report.validate(json.loads((tmp_path / "latest.json").read_text())) == []


def test_plans_are_bounded_and_quick_is_smaller() -> None:
    full, quick = make_plan(False, 2), make_plan(True, 2)
    assert full.dispatch_runs >= 20 and full.throughput_runs >= 50
    assert quick.dispatch_runs == 3 and quick.throughput_runs == 10
    for name in ALL:
        assert 0 < quick.timeouts_s[name] <= full.timeouts_s[name]
    assert sum(quick.timeouts_s.values()) < sum(full.timeouts_s.values())


def test_cli_arguments() -> None:
    args = parse_args(["--quick", "--only", "api,s3", "--candidate", "process"])
    assert args.quick and args.only == ["api", "s3"] and args.candidate == "process"
    with pytest.raises(SystemExit):
        parse_args(["--only", "nonsense"])


def test_gate_cost_rows_and_goal() -> None:
    """The gate's cost: with and without the gate (p50, p95), the added p50 judged against
    the 2 ms goal (value / reference <= 1 meets it), the A/A control between the two Caddys,
    the gate's own decision both ways."""
    ms = 0.001
    samples = {
        "gate": [10 * ms, 11 * ms, 12 * ms],
        "no gate": [9 * ms, 9.5 * ms, 10 * ms],
        "gate alone": [0.5 * ms, 0.6 * ms, 0.7 * ms],
        "gate alone, asyncio+h11": [0.8 * ms, 0.9 * ms, 1.0 * ms],
        "control: platform's Caddy": [5 * ms, 5 * ms, 5 * ms],
        "control: bench Caddy": [5 * ms, 5 * ms, 5 * ms],
    }
    rows, note = gate_cost.figures(samples)
    by = {f.metric: f for f in rows}
    assert len(by) == 5 and all(f.unit == "ms" and f.n == 3 for f in rows)
    added = next(f for f in rows if "added p50" in f.metric)
    assert added.value == pytest.approx(1.5) and added.reference == gate_cost.GOAL_MS
    assert added.ratio is not None and added.ratio < 1 and "met" in note and "NOT" not in note
    assert all(f.reference is not None for f in rows)  # the quick test expects a pair per row
    samples["gate"] = [13 * ms, 14 * ms, 15 * ms]
    _, note = gate_cost.figures(samples)
    assert "NOT met" in note


def test_gate_path_rows_and_goal() -> None:
    """The gate on the worker's path: dispatch and throughput with vs without the gate,
    each judged against the 5 % goal in the right direction (latency lower, rate higher)."""
    res = BenchResult("gate", "gate path")
    phases = {"PENDING": [0.1, 0.1], "RUNNING": [0.50, 0.52], "COMPLETED": [0.9, 1.0]}
    slower = {p: [v * 1.02 for v in vs] for p, vs in phases.items()}
    batch = {"runs": 50, "all_completed": True, "platform_cpu_per_run_s": 0.3}
    res.details = {
        "samples_s": {"gate": slower, "no gate": phases},
        "batches": {
            # gate averaged over its two batches: 96 runs/min vs 100 (4 % fewer)
            "gate": [{**batch, "runs_per_min": 95.0}, {**batch, "runs_per_min": 97.0}],
            "no gate": [{**batch, "runs_per_min": 100.0}],
        },
        "failures": {"gate": [], "no gate": []},
    }
    gate_path._figures(res)
    by_metric = {f.metric: f for f in res.figures}
    running = by_metric["run_deployment → Running p50, with vs without the gate"]
    assert running.ratio == pytest.approx(1.02)
    rate = by_metric["short runs per minute, with vs without the gate"]
    assert rate.value == pytest.approx(96.0) and rate.reference == 100.0
    (goal,) = [n for n in res.notes if n.startswith("goal")]
    assert "Running p50 +2.0 % (met)" in goal and "runs/min +4.0 % (met)" in goal
    assert res.status == "ok"
    res = BenchResult("gate", "gate path")
    res.details = {
        "batches": {
            "gate": [{**batch, "runs_per_min": 90.0, "all_completed": False}],
            "no gate": [{**batch, "runs_per_min": 100.0}],
        }
    }
    gate_path._figures(res)
    assert any("runs/min +10.0 % (NOT met)" in n for n in res.notes)
    assert res.status == "partial"


def test_gate_cost_compares_against_the_platforms_caddyfile_without_the_gate(
    tmp_path: Path,
) -> None:
    """The bench-only Caddy is the renderer's own output with the gate taken out of /api/*,
    on loopback ports of its own; the platform's Caddyfile keeps its forward_auth there."""
    config = FlowyardConfig(home=tmp_path)
    ctx = Context(config, Secrets.generate())
    up = Upstreams.from_context(ctx)
    platform = render_caddyfile(config, up)
    ports = {"https_port": 31001, "http_port": 31002, "s3_https_port": 31003}
    moved, bench = gate_cost.no_gate_caddyfile(config, up, ports, tmp_path / "bench")
    assert "forward_auth" in gate_cost.api_route(platform)
    assert "forward_auth" not in gate_cost.api_route(bench)
    assert f"reverse_proxy {up.prefect}" in gate_cost.api_route(bench)
    assert moved.proxy.url.endswith(":31001") and f"https_port {31001}" in bench
    assert f"default_bind {LOOPBACK}" in bench and str(tmp_path / "bench") in bench
    assert str(ctx.paths.socket("caddy-admin")) not in bench


def test_dispatch_code_from_s3_rows() -> None:
    """The candidate's runs with code from S3 are judged against its own local-code runs."""
    res = BenchResult("dispatch", "Dispatch latency")
    local = {"PENDING": [0.1, 0.1], "RUNNING": [0.4, 0.6], "COMPLETED": [0.7, 0.9]}
    s3 = {"PENDING": [0.1, 0.1], "RUNNING": [0.6, 0.8], "COMPLETED": [0.9, 1.1]}
    stock = {p: [v + 8 for v in vs] for p, vs in local.items()}
    dispatch._figures(res, {"candidate": local, "reference": stock, dispatch.S3: s3})
    by_metric = {f.metric: f for f in res.figures}
    p50 = by_metric["run_deployment → Running p50, code from S3 vs local code"]
    assert p50.value == pytest.approx(0.7) and p50.reference == pytest.approx(0.5)
    assert p50.n == 2 and "run_deployment → Running p95, code from S3 vs local code" in by_metric
    assert by_metric["run_deployment → Running p50"].reference == pytest.approx(8.5)
    res = BenchResult("dispatch", "Dispatch latency")  # stopped before the S3 segment
    dispatch._figures(res, {"candidate": local, "reference": stock})
    assert by_metric.keys() == {f.metric for f in res.figures}


def test_dispatch_s3_project_deploys_like_flows(tmp_path: Path) -> None:
    """The S3 project is a `flowyard deploy` project: its push_to_s3 becomes the upload by
    content and its pull step fetches the folder that upload returns, as for flows/."""
    project = prefect_client.write_s3_project(tmp_path, "bench-candidate", "dispatch-x")
    (spec,) = load_project(project)
    assert (spec.name, spec.pool, spec.queue) == ("dispatch-x", "bench-candidate", "default")
    assert (project / spec.flow_file).read_text() == prefect_client.FLOW_SOURCE
    data = content_addressed(yaml.safe_load((project / "prefect.yaml").read_text()))
    (push,) = data["push"]
    assert push[PUSH_CODE]["folder"] == prefect_client.S3_CODE_FOLDER
    (pull,) = data["pull"]
    assert pull["prefect_aws.deployments.steps.pull_from_s3"]["folder"] == (
        "{{ push-code.folder }}"
    )
