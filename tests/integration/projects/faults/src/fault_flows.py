"""Flows the fault tests run: one that sleeps then persists a result of a chosen size, and
one that allows a retry, to show what Prefect retries (Failed) and what it does not (Crashed)."""

import time

from prefect import flow


@flow
def steady(seconds: float = 10, size: int = 1000) -> str:
    time.sleep(seconds)
    # Persisted to the results bucket (PREFECT_RESULTS_PERSIST_BY_DEFAULT) after the sleep.
    return "x" * size


@flow(retries=1, retry_delay_seconds=1)
def retried(seconds: float = 600) -> str:
    time.sleep(seconds)
    return "done"
