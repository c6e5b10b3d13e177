"""Digits classification experiment: a small but real ML workload for the platform.

The scikit-learn logic lives in plain functions so it can be unit-tested without a
Prefect server; the flow only orchestrates them as tasks, publishes an artifact and
returns JSON-friendly metrics (persisted by the platform's result storage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from sklearn.base import ClassifierMixin
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

try:
    from flowyard_flows._tracking import tracking
except ImportError:  # pragma: no cover
    # Workers load the entrypoint as a script from the S3-pulled tree; if this package
    # is not installed there, the sibling file is still importable from the script dir.
    from _tracking import tracking  # type: ignore[no-redef]

MODELS = ("logreg", "rf", "svc")
ARTIFACT_KEY = "digits-results"


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def validate_params(
    model: str, C: float, max_depth: int | None, n_estimators: int, test_size: float
) -> None:
    """Fail fast with a readable message instead of a deep scikit-learn traceback."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be strictly between 0 and 1, got {test_size}")
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    if n_estimators < 1:
        raise ValueError(f"n_estimators must be >= 1, got {n_estimators}")
    if max_depth is not None and max_depth < 1:
        raise ValueError(f"max_depth must be >= 1 or None, got {max_depth}")


def load_split(test_size: float, seed: int) -> Split:
    # load_digits ships inside scikit-learn: no network access needed on workers.
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test)


def build_model(
    model: str, C: float, max_depth: int | None, n_estimators: int, seed: int
) -> ClassifierMixin:
    # Linear and kernel models converge badly on raw 0..16 pixel values; trees don't care.
    if model == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    if model == "svc":
        return make_pipeline(StandardScaler(), SVC(C=C, random_state=seed))
    if model == "rf":
        return RandomForestClassifier(
            n_estimators=n_estimators, max_depth=max_depth, random_state=seed
        )
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def fit_model(estimator: ClassifierMixin, split: Split) -> tuple[ClassifierMixin, float]:
    start = time.perf_counter()
    estimator.fit(split.x_train, split.y_train)
    return estimator, time.perf_counter() - start


def evaluate_model(
    estimator: ClassifierMixin, split: Split
) -> tuple[dict[str, float], pd.DataFrame]:
    """Return headline metrics and a per-class table (one row per digit)."""
    pred = estimator.predict(split.x_test)
    precision, recall, f1, support = precision_recall_fscore_support(
        split.y_test, pred, zero_division=0
    )
    per_class = pd.DataFrame(
        {
            "digit": np.unique(split.y_test).astype(int),
            "precision": precision.round(4),
            "recall": recall.round(4),
            "f1": f1.round(4),
            "support": support.astype(int),
        }
    )
    # float() because numpy scalars are not JSON-serialisable result values.
    metrics = {
        "accuracy": float(accuracy_score(split.y_test, pred)),
        "f1_macro": float(f1_score(split.y_test, pred, average="macro")),
    }
    return metrics, per_class


P = ParamSpec("P")
R = TypeVar("R")


# Intermediates (arrays, fitted models) stay in memory: persisting or hashing them for a
# cache would only cost S3 writes. Training is deterministic, so retries would not help.
def _intermediate(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    return task(name=name, retries=0, persist_result=False, cache_policy=NO_CACHE)


load_task = _intermediate("load-digits")(load_split)
train_task = _intermediate("train-model")(fit_model)
evaluate_task = _intermediate("evaluate-model")(evaluate_model)


# JSON rather than pickle: the stored result is readable by any tool and any Python.
@flow(name="train-digits", persist_result=True, result_serializer="json")
def train_digits(
    model: str = "logreg",
    C: float = 1.0,
    max_depth: int | None = None,
    n_estimators: int = 100,
    test_size: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Train one classifier on scikit-learn's digits and report its test metrics."""
    validate_params(model, C, max_depth, n_estimators, test_size)
    params: dict[str, Any] = {
        "model": model,
        "C": C,
        "max_depth": max_depth,
        "n_estimators": n_estimators,
        "test_size": test_size,
        "seed": seed,
    }
    with tracking(params) as tracker:
        split = load_task(test_size, seed)
        estimator = build_model(model, C, max_depth, n_estimators, seed)
        fitted, train_seconds = train_task(estimator, split)
        metrics, per_class = evaluate_task(fitted, split)
        metrics |= {
            "train_seconds": round(train_seconds, 4),
            "n_train": len(split.y_train),
            "n_test": len(split.y_test),
        }
        tracker.log_metrics(metrics)
        tracker.log_table(per_class, "per_class_metrics.json")

    create_table_artifact(
        table=per_class.to_dict(orient="records"),
        key=ARTIFACT_KEY,
        description=(
            f"**{model}** {params} — accuracy {metrics['accuracy']:.4f}, "
            f"macro-F1 {metrics['f1_macro']:.4f}, trained in {train_seconds:.2f}s"
        ),
    )
    get_run_logger().info("train-digits %s -> %s", params, metrics)
    return {"params": params, "metrics": metrics}


if __name__ == "__main__":
    print(train_digits())
