"""Throughput: N short runs submitted at once → all Completed, with one worker; and CPU.

Runs/minute is N over the time from the first submission to the last run's Completed
timestamp. CPU per run is the worker's whole process tree (flow-run children included, see
procs.py) over the batch, divided by N; the platform's own services' CPU over the same
window is reported beside it, since a worker can move cost onto the server. Peak PSS of the
worker tree is sampled during the batch (PSS, not RSS, so pages a fork server shares
copy-on-write are not counted once per run).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from benchmarks import procs
from benchmarks.guard import wait_until
from benchmarks.harness import BenchEnv
from benchmarks.pairs import Row, add_figures, run_both
from benchmarks.prefect_client import (
    platform_client,
    state_counts,
    state_type,
    wait_terminal,
)
from benchmarks.report import BenchResult
from benchmarks.stats import rate
from benchmarks.workers import WorkerKind, pool_name, running_worker
from flowyard.platform.supervisor import Supervisor

MiB = 2**20
SUBMIT_CONCURRENCY = 10


async def _sample_peak_pss(pid: int, peak: dict[str, float], interval: float = 2.0) -> None:
    while True:
        pss, _ = procs.tree_pss_bytes(pid)
        peak["pss"] = max(peak.get("pss", 0), pss)
        await asyncio.sleep(interval)


async def batch(
    env: BenchEnv,
    kind: WorkerKind,
    role: str,
    deployment_id: UUID,
    api: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One batch of runs of `deployment_id` through one worker on the role's pool, its
    Prefect client settings replaced by `api` if given."""
    ctx, plan = env.platform, env.plan
    server_pid = Supervisor(ctx.paths).pid()
    assert server_pid is not None
    n = plan.throughput_runs
    with running_worker(
        ctx, kind, pool_name(role), kind.limit(plan.worker_limit), env.workdir, api=api
    ) as worker:
        await asyncio.sleep(3)  # past the worker's start-up work
        idle_pss, _ = procs.tree_pss_bytes(worker.pid)
        baseline = procs.descendants(worker.pid)
        cpu0, server0 = procs.tree_cpu_seconds(worker.pid), procs.tree_cpu_seconds(server_pid)
        services0 = procs.service_cpu_seconds(ctx)
        peak: dict[str, float] = {}
        sampler = asyncio.create_task(_sample_peak_pss(worker.pid, peak))
        try:
            async with platform_client(ctx) as client:
                sem = asyncio.Semaphore(SUBMIT_CONCURRENCY)

                async def submit() -> UUID:
                    async with sem:
                        return (await client.create_flow_run_from_deployment(deployment_id)).id

                t0, m0 = datetime.now(UTC), time.monotonic()
                ids = await asyncio.gather(*(submit() for _ in range(n)))
                submit_s = time.monotonic() - m0
                runs = await wait_terminal(
                    client, ids, timeout=env.deadline.remaining() - 45, interval=1.0
                )
                gave_up = datetime.now(UTC)
        finally:
            sampler.cancel()
        ends = [r.end_time for r in runs if state_type(r) == "COMPLETED" and r.end_time]
        all_done = len(ends) == n
        end = max(ends) if all_done else gave_up
        wall = (end - t0).total_seconds()
        # Run processes outlive their Completed state by a moment; their CPU reaches the
        # worker's cutime only once they exit and are reaped.
        wait_until(lambda: not (procs.descendants(worker.pid) - baseline), timeout=30)
        cpu = procs.tree_cpu_seconds(worker.pid) - cpu0
        server_cpu = procs.tree_cpu_seconds(server_pid) - server0
        by_service = {
            name: (seconds - services0.get(name, 0.0)) / n
            for name, seconds in procs.service_cpu_seconds(ctx).items()
        }
    return {
        "kind": kind.key,
        "runs": n,
        "completed": len(ends),
        "states": state_counts(runs),
        "submit_s": submit_s,
        "wall_s": wall,
        "runs_per_min": rate(len(ends), wall, per=60),
        "worker_cpu_s": cpu,
        "worker_cpu_per_run_s": cpu / n,
        "platform_cpu_per_run_s": server_cpu / n,
        "platform_cpu_per_run_by_service_s": by_service,
        "worker_idle_pss_mib": idle_pss / MiB,
        "worker_peak_pss_mib": peak.get("pss", 0) / MiB,
        "all_completed": all_done,
    }


ROWS: list[Row] = [
    ("runs per minute", "runs/min", "runs_per_min", "higher"),
    ("worker CPU per run (process tree)", "CPU-s", "worker_cpu_per_run_s", "lower"),
    ("platform services' CPU per run", "CPU-s", "platform_cpu_per_run_s", "lower"),
    ("worker idle PSS", "MiB", "worker_idle_pss_mib", "lower"),
    ("worker peak PSS during the batch", "MiB", "worker_peak_pss_mib", "lower"),
]


def run(env: BenchEnv, res: BenchResult) -> None:
    res.candidate = env.candidate.describe(env.plan.worker_limit)
    res.reference = env.reference.describe(env.plan.worker_limit)
    res.notes.append(
        f"{env.plan.throughput_runs} no-op runs created at once, one worker; "
        "CPU = worker process tree incl. reaped children"
    )
    try:
        what = f"{env.plan.throughput_runs} runs at once"
        asyncio.run(run_both(env, res, "throughput", what, batch))
    finally:
        add_figures(res, ROWS)
        split = res.details.get("candidate", {}).get("platform_cpu_per_run_by_service_s")
        if split:
            shares = sorted(split.items(), key=lambda kv: -kv[1])
            res.notes.append(
                "platform CPU per run of the candidate's batch, by service: "
                + ", ".join(f"{name} {sec:.3f}" for name, sec in shares if sec >= 0.0005)
                + " CPU-s (the rest of the platform's total is supervisord itself)"
            )
