"""How much of everything to do: the full sizes, and the `--quick` smoke-test sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Benchmarks in the order they run. coldstart and memory share one throw-away platform
# and run first, with nothing else of ours up; the rest share the main platform.
ALL = (
    "coldstart",
    "memory",
    "api",
    "s3",
    "tracking",
    "dispatch",
    "throughput",
    "gate",
    "simultaneous",
    "dask",
)


@dataclass(frozen=True)
class Plan:
    quick: bool
    dispatch_runs: int
    # Runs are triggered at a random moment up to this long after the previous one ended,
    # so a polling worker is caught at every phase of its poll cycle, as users catch it.
    dispatch_jitter_s: float
    throughput_runs: int
    # Runs started at once, each sleeping this long, with both workers allowed that many.
    simultaneous_runs: int
    simultaneous_sleep_s: float
    api_requests: int
    api_concurrency: int
    api_concurrent_requests: int
    api_concurrent_seconds: float
    s3_small_count: int
    s3_large_count: int
    tracking_points: int
    # Tiny tasks per way of running them (benchmarks/dask_tasks.py).
    dask_tasks: int
    idle_settle_s: float
    # --limit forced on both workers (0 = none); None: each kind's default (workers.py).
    worker_limit: int | None
    # Hard limit per benchmark; a benchmark past it is stopped and reported as partial.
    timeouts_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(quick: bool, worker_limit: int | None = None) -> Plan:
    limit = worker_limit
    if quick:
        return Plan(
            quick=True,
            dispatch_runs=3,
            dispatch_jitter_s=1.0,
            throughput_runs=10,
            simultaneous_runs=5,
            simultaneous_sleep_s=10,
            api_requests=30,
            api_concurrency=4,
            api_concurrent_requests=200,
            api_concurrent_seconds=5,
            s3_small_count=3,
            s3_large_count=1,
            tracking_points=100,
            dask_tasks=50,
            idle_settle_s=3,
            worker_limit=limit,
            timeouts_s={
                "coldstart": 420,
                "memory": 120,
                "api": 120,
                "s3": 120,
                "tracking": 120,
                "dispatch": 300,
                "throughput": 300,
                "gate": 420,
                "simultaneous": 300,
                "dask": 240,
            },
        )
    return Plan(
        quick=False,
        dispatch_runs=20,
        dispatch_jitter_s=10.0,
        throughput_runs=50,
        simultaneous_runs=30,
        simultaneous_sleep_s=60,
        api_requests=300,
        api_concurrency=8,
        api_concurrent_requests=3000,
        api_concurrent_seconds=20,
        s3_small_count=20,
        s3_large_count=3,
        tracking_points=1000,
        dask_tasks=1000,
        idle_settle_s=15,
        worker_limit=limit,
        timeouts_s={
            "coldstart": 900,
            "memory": 300,
            "api": 300,
            "s3": 600,
            "tracking": 600,
            "dispatch": 1800,
            "throughput": 1800,
            "gate": 1500,
            "simultaneous": 900,
            "dask": 900,
        },
    )
