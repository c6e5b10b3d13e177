"""The frame the worker benchmarks share: one deployment per pool, the candidate worker's
batch then the reference's, and a row per figure with the candidate beside the reference."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from benchmarks.harness import BenchEnv, say
from benchmarks.prefect_client import deploy, platform_client, write_flow_dir
from benchmarks.report import BenchResult, Better, Figure
from benchmarks.workers import WorkerKind, pool_name

Batch = Callable[[BenchEnv, WorkerKind, str, UUID], Awaitable[dict[str, Any]]]
# (metric, unit, key in a batch's result, which way is better)
Row = tuple[str, str, str, Better]


async def run_both(env: BenchEnv, res: BenchResult, name: str, what: str, batch: Batch) -> None:
    flow_dir = write_flow_dir(env.workdir)
    ids = {}
    async with platform_client(env.platform) as client:
        for role in ("candidate", "reference"):
            ids[role] = await deploy(client, flow_dir, pool_name(role), f"{name}-{role}")
    for role, kind in (("candidate", env.candidate), ("reference", env.reference)):
        say(f"{name}: {what}, {role} worker ({kind.key})")
        res.details[role] = await batch(env, kind, role, ids[role])


def add_figures(res: BenchResult, rows: list[Row]) -> None:
    """One figure per row; `partial` unless every run of both batches completed."""
    cand, ref = res.details.get("candidate", {}), res.details.get("reference", {})
    for metric, unit, key, better in rows:
        res.add(Figure(metric, unit, cand.get(key), ref.get(key), better, n=cand.get("runs")))
    if not (cand.get("all_completed") and ref.get("all_completed")):
        res.status = "partial"
        res.notes.append(
            "not every run completed: "
            f"candidate {cand.get('states')}, reference {ref.get('states')}"
        )
