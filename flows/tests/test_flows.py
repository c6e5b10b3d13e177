"""Unit tests for the flows package; no Prefect server or network needed.

Most tests call the plain functions behind the flows. The `harness` tests run the
real flows against Prefect's throwaway local SQLite API (prefect_test_harness).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flowyard_flows import _tracking
from flowyard_flows.experiment import (
    MODELS,
    build_model,
    evaluate_model,
    fit_model,
    load_split,
    train_digits,
    validate_params,
)
from flowyard_flows.greeting import greeting_flow, say_hello
from flowyard_flows.sweep import DEFAULT_GRID, expand_grid, summarise


@pytest.fixture(autouse=True)
def _no_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer shell may have MLFLOW_TRACKING_URI exported; tests must not log there.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# Module scope: the harness overrides PREFECT_API_URL while it is open, which must not
# outlive these tests when they share a pytest session with the platform's.
@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Keep persisted results out of ~/.prefect.
    storage = tmp_path_factory.mktemp("results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness():
        yield


# --- experiment: plain functions -------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_each_model_learns_digits(model: str) -> None:
    split = load_split(test_size=0.25, seed=0)
    estimator = build_model(model, C=1.0, max_depth=None, n_estimators=50, seed=0)
    fitted, seconds = fit_model(estimator, split)
    metrics, per_class = evaluate_model(fitted, split)

    assert seconds > 0
    # Digits is easy: every model here scores well above 0.9; anything lower is a bug.
    assert metrics["accuracy"] > 0.9
    assert 0.9 < metrics["f1_macro"] <= 1.0
    assert list(per_class["digit"]) == list(range(10))
    assert per_class["support"].sum() == len(split.y_test)
    assert {type(v) for v in metrics.values()} == {float}


def test_split_is_stratified_and_reproducible() -> None:
    a, b = load_split(0.2, seed=7), load_split(0.2, seed=7)
    assert (a.y_test == b.y_test).all()
    assert len(a.y_test) == 360  # 20% of 1797, rounded up by scikit-learn
    assert set(a.y_test) == set(range(10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "xgboost"}, "unknown model 'xgboost'"),
        ({"test_size": 0.0}, "test_size must be strictly between 0 and 1"),
        ({"test_size": 1.0}, "test_size must be strictly between 0 and 1"),
        ({"C": 0.0}, "C must be > 0"),
        ({"n_estimators": 0}, "n_estimators must be >= 1"),
        ({"max_depth": 0}, "max_depth must be >= 1"),
    ],
)
def test_validate_params_rejects_bad_input(kwargs: dict[str, Any], message: str) -> None:
    params: dict[str, Any] = {
        "model": "logreg",
        "C": 1.0,
        "max_depth": None,
        "n_estimators": 10,
        "test_size": 0.25,
    }
    with pytest.raises(ValueError, match=message):
        validate_params(**(params | kwargs))


def test_validation_runs_before_any_work() -> None:
    # .fn bypasses the Prefect engine: validation must fire before tasks or artifacts.
    with pytest.raises(ValueError, match="unknown model"):
        train_digits.fn(model="nope")


# --- tracking --------------------------------------------------------------------


def test_tracking_is_noop_without_uri() -> None:
    with _tracking.tracking({"a": 1}) as tracker:
        assert isinstance(tracker, _tracking.NullTracker)
        tracker.log_metrics({"x": 1.0})


def test_tracking_is_noop_when_platform_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid")
    monkeypatch.setitem(sys.modules, "flowyard", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "flowyard.tracking", None)
    with _tracking.tracking({"a": 1}) as tracker:
        assert isinstance(tracker, _tracking.NullTracker)


class FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(("metrics", metrics))

    def log_table(self, df: Any, name: str) -> None:
        self.calls.append(("table", name))

    def log_artifact(self, path: str) -> None:
        self.calls.append(("artifact", path))


@pytest.fixture
def fake_platform(monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], FakeTracker]:
    """Install a stand-in `flowyard.tracking` that records what the flow sends it."""
    started: list[dict[str, Any]] = []
    tracker = FakeTracker()

    @contextlib.contextmanager
    def track_run(params: dict[str, Any]) -> Iterator[FakeTracker]:
        started.append(params)
        yield tracker

    pkg, mod = types.ModuleType("flowyard"), types.ModuleType("flowyard.tracking")
    mod.track_run = track_run  # type: ignore[attr-defined]
    pkg.tracking = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flowyard", pkg)
    monkeypatch.setitem(sys.modules, "flowyard.tracking", mod)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid")
    return started, tracker


# --- sweep: plain functions ------------------------------------------------------


def test_default_grid_is_four_runs() -> None:
    combos = expand_grid(DEFAULT_GRID)
    assert len(combos) == 4
    assert combos[0] == {"model": "logreg", "C": 0.1}
    assert len({tuple(c.items()) for c in combos}) == 4


def test_expand_grid_order_and_edge_cases() -> None:
    assert expand_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert expand_grid({}) == [{}]  # one run with the deployment's defaults
    with pytest.raises(ValueError, match="non-empty list"):
        expand_grid({"a": []})
    with pytest.raises(ValueError, match="non-empty list"):
        expand_grid({"a": 3})  # type: ignore[dict-item]


def test_summarise_flattens_params_and_metrics() -> None:
    runs: list[dict[str, Any]] = [
        {
            "parameters": {"model": "svc", "C": 1.0},
            "state": "COMPLETED",
            "flow_run_id": "id-1",
            "result": {"params": {}, "metrics": {"accuracy": 0.98}},
        },
        {"parameters": {"model": "rf"}, "state": "FAILED", "flow_run_id": "id-2", "result": None},
    ]
    assert summarise(runs) == [
        {"model": "svc", "C": 1.0, "state": "COMPLETED", "accuracy": 0.98, "flow_run_id": "id-1"},
        {"model": "rf", "state": "FAILED", "flow_run_id": "id-2"},
    ]


# --- real flow runs against the ephemeral API ------------------------------------


def test_say_hello_plain() -> None:
    assert say_hello.fn("Ada") == "Hello, Ada!"


def test_flows_run_in_harness(
    harness: None, fake_platform: tuple[list[dict[str, Any]], FakeTracker]
) -> None:
    assert greeting_flow("Alice") == "Hello, Alice!"

    started, tracker = fake_platform
    result = train_digits(model="logreg")

    assert result["params"]["model"] == "logreg"
    assert result["metrics"]["accuracy"] > 0.9
    assert set(result["metrics"]) == {"accuracy", "f1_macro", "train_seconds", "n_train", "n_test"}
    # Tracking received the run's params, then its metrics and per-class table.
    assert started == [result["params"]]
    assert tracker.calls == [("metrics", result["metrics"]), ("table", "per_class_metrics.json")]


def test_cv_folds_score_and_rank() -> None:
    from flowyard_flows.cv_sweep import fold_score, rank

    scores = [
        fold_score({"model": "logreg", "C": c}, fold, 3, 0) for c in (0.5, 2.0) for fold in range(3)
    ]
    assert {s["fold"] for s in scores} == {0, 1, 2}
    assert all(0.85 < s["accuracy"] <= 1.0 for s in scores)
    ranking = rank(scores)
    assert [r["folds"] for r in ranking] == [3, 3]
    assert ranking[0]["mean_accuracy"] >= ranking[1]["mean_accuracy"]
    assert {r["C"] for r in ranking} == {0.5, 2.0}
