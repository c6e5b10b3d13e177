"""Where a flow's Dask tasks run: the platform's cluster when this process has its client
profile, else a small in-process cluster (a laptop, the unit tests).

Like `_tracking`, a soft dependency on the platform: `flowyard.dask_cluster.task_runner()`
when `flowyard` is installed and DASK_SCHEDULER_ADDRESS is set (the worker's client profile
sets it on platforms with dask.enabled), prefect-dask's own runner otherwise.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner


def cluster_runner() -> TaskRunner[Any]:
    if os.environ.get("DASK_SCHEDULER_ADDRESS"):
        try:
            from flowyard.dask_cluster import task_runner
        except ImportError:
            # Dask reads the same variable, and its TLS settings, by itself.
            return DaskTaskRunner(address=os.environ["DASK_SCHEDULER_ADDRESS"])
        return task_runner()
    # Threads in this process: no ports, nothing left behind.
    return DaskTaskRunner(
        cluster_kwargs={
            "processes": False,
            "n_workers": 1,
            "threads_per_worker": 2,
            "dashboard_address": "127.0.0.1:0",
        }
    )
