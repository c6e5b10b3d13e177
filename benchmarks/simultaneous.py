"""Simultaneous runs: N runs started at once, each sleeping long enough to overlap; memory.

Both workers are allowed N runs at once (`--limit N`, whatever `--worker-limit` says: the
point is N runs alive together). Every second: how many runs the API reports Running, the
PSS of the worker's whole process tree (PSS, so pages a fork server shares copy-on-write
count once), the machine's available memory and its swap counters. Reported: the most runs
Running at once, how long until all N had started (from the runs' own Running timestamps),
the tree's peak PSS and what each run added to it, the lowest available memory, and pages
swapped in or out during the batch (the "without swapping" figure; on a machine without
swap it cannot be anything but 0, which the notes say).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psutil

from benchmarks import procs
from benchmarks.harness import BenchEnv
from benchmarks.pairs import Row, add_figures, run_both
from benchmarks.prefect_client import (
    TERMINAL,
    platform_client,
    read_runs,
    state_counts,
    state_times,
    state_type,
)
from benchmarks.report import BenchResult
from benchmarks.workers import WorkerKind, pool_name, running_worker

MiB = 2**20


def _swapped_pages() -> int:
    swap = psutil.swap_memory()
    return int(swap.sin + swap.sout)


async def _batch(env: BenchEnv, kind: WorkerKind, role: str, deployment_id: UUID) -> dict[str, Any]:
    plan = env.plan
    n, sleep_s = plan.simultaneous_runs, plan.simultaneous_sleep_s
    with running_worker(env.platform, kind, pool_name(role), n, env.workdir) as worker:
        await asyncio.sleep(3)  # past the worker's start-up work
        idle_pss, _ = procs.tree_pss_bytes(worker.pid)
        cpu0 = procs.tree_cpu_seconds(worker.pid)
        swapped0 = _swapped_pages()
        peak_pss, peak_running, min_available = idle_pss, 0, psutil.virtual_memory().available
        async with platform_client(env.platform) as client:
            t0 = datetime.now(UTC)
            ids = [
                (
                    await client.create_flow_run_from_deployment(
                        deployment_id, parameters={"x": i, "seconds": sleep_s}
                    )
                ).id
                for i in range(n)
            ]
            runs = []
            end = time.monotonic() + min(env.deadline.remaining() - 45, 3 * sleep_s + 240)
            while time.monotonic() < end:
                runs = await read_runs(client, ids)
                running = sum(1 for r in runs if state_type(r) == "RUNNING")
                peak_running = max(peak_running, running)
                pss, _ = procs.tree_pss_bytes(worker.pid)
                peak_pss = max(peak_pss, pss)
                min_available = min(min_available, psutil.virtual_memory().available)
                if len(runs) == n and all(state_type(r) in TERMINAL for r in runs):
                    break
                await asyncio.sleep(1)
            started = [
                t["RUNNING"] for t in [await state_times(client, i) for i in ids] if "RUNNING" in t
            ]
        cpu = procs.tree_cpu_seconds(worker.pid) - cpu0
    states = state_counts(runs)
    completed = states.get("COMPLETED", 0)
    return {
        "kind": kind.key,
        "runs": n,
        "sleep_s": sleep_s,
        "completed": completed,
        "states": states,
        "all_completed": completed == n,
        "peak_running": peak_running,
        "all_started_s": (max(started) - t0).total_seconds() if len(started) == n else None,
        "worker_idle_pss_mib": idle_pss / MiB,
        "worker_peak_pss_mib": peak_pss / MiB,
        "pss_per_run_mib": (peak_pss - idle_pss) / MiB / max(peak_running, 1),
        "min_available_mib": min_available / MiB,
        "swapped_pages": _swapped_pages() - swapped0,
        "worker_cpu_per_run_s": cpu / n,
    }


ROWS: list[Row] = [
    ("most runs Running at once", "runs", "peak_running", "higher"),
    ("all runs started after", "s", "all_started_s", "lower"),
    ("worker tree peak PSS", "MiB", "worker_peak_pss_mib", "lower"),
    ("PSS added per running run", "MiB", "pss_per_run_mib", "lower"),
    ("lowest available memory", "MiB", "min_available_mib", "higher"),
    ("pages swapped in/out", "pages", "swapped_pages", "lower"),
    ("worker CPU per run (process tree)", "CPU-s", "worker_cpu_per_run_s", "lower"),
]


def run(env: BenchEnv, res: BenchResult) -> None:
    plan = env.plan
    res.candidate = f"{env.candidate.label}, --limit {plan.simultaneous_runs}"
    res.reference = f"{env.reference.label}, --limit {plan.simultaneous_runs}"
    res.notes.append(
        f"{plan.simultaneous_runs} runs created at once, each sleeping "
        f"{plan.simultaneous_sleep_s:g} s; both workers allowed all of them at once"
    )
    if psutil.swap_memory().total == 0:
        res.notes.append("this machine has no swap: nothing can be swapped, read the memory rows")
    try:
        what = f"{plan.simultaneous_runs} runs at once"
        asyncio.run(run_both(env, res, "simultaneous", what, _batch))
    finally:
        add_figures(res, ROWS)
