"""Optional experiment tracking through the platform's MLflow glue.

Flows must run unchanged on a machine without the platform package or without an
MLflow server, so tracking is a *soft* dependency: `tracking()` hands back the
platform's `flowyard.tracking.track_run` when it is importable and
MLFLOW_TRACKING_URI is set, and a do-nothing tracker otherwise.

Contract expected from the platform (keep in sync with `flowyard.tracking`):

    track_run(params: dict) -> ContextManager[Tracker]
        Starts a run, logs `params`, ends the run on exit (failed if an exception escapes).
    Tracker.log_metrics(metrics: dict[str, float], step: int | None = None) -> None
    Tracker.log_table(df: pandas.DataFrame, name: str) -> None  # name: file, e.g. "t.json"
    Tracker.log_artifact(path: str) -> None
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import pandas as pd

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_table(self, df: pd.DataFrame, name: str) -> None: ...
    def log_artifact(self, path: str) -> None: ...


class NullTracker:
    """Accepts every call and drops it, so flow code never branches on tracking."""

    active = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        pass

    def log_artifact(self, path: str) -> None:
        pass


def tracking(params: dict[str, Any]) -> AbstractContextManager[Tracker]:
    """Return a context manager yielding a Tracker; a no-op one when tracking is off."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return contextlib.nullcontext(NullTracker())
    try:
        from flowyard.tracking import track_run
    except ImportError:
        # URI set but platform glue missing (e.g. a worker image without `flowyard`):
        # say so, but do not fail a training run over bookkeeping.
        logger.warning("MLFLOW_TRACKING_URI is set but flowyard.tracking is unavailable")
        return contextlib.nullcontext(NullTracker())
    return track_run(params)
