"""`python -m benchmarks --quick` end to end on a real platform; checks the output's shape.

Only the API benchmark (one platform start, a few hundred requests), so it finishes in
under three minutes even on a busy 2-CPU machine; no assertion is made on any figure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import report

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_quick_run_writes_valid_results(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "api", "--out", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The gate's cost (a second Caddy and gate, started and stopped) takes ~10 s of it.
        stdout, stderr = proc.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the benchmark then stops the platform it started.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=25)
        pytest.fail(f"quick benchmark did not finish in 170 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert report.validate(doc) == []
    assert doc["quick"] is True
    assert [b["name"] for b in doc["benchmarks"]] == ["api"]
    (bench,) = doc["benchmarks"]
    assert bench["status"] == "ok", bench["notes"]
    assert all(f["value"] is not None and f["reference"] is not None for f in bench["figures"])
    # The access gate's cost: with and without it on the same platform, against its goal.
    metrics = [f["metric"] for f in bench["figures"]]
    assert any("with vs without the gate, p50" in m for m in metrics), metrics
    assert any("goal (issue 14)" in n for n in bench["notes"]), bench["notes"]
    assert (tmp_path / "latest.md").read_text() in stdout
    assert "| Benchmark | Metric | Value | Reference | Ratio |" in stdout


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_quick_dask_row(tmp_path: Path) -> None:
    """The Dask row: a platform with its Dask cluster, tiny tasks four ways, each figure a
    pair of them (values real, not asserted: a busy machine moves them)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "dask", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert report.validate(doc) == []
    (bench,) = doc["benchmarks"]
    assert bench["name"] == "dask" and bench["status"] == "ok", bench["notes"]
    assert len(bench["figures"]) == 4
    assert all(f["value"] > 0 and f["reference"] > 0 for f in bench["figures"])
