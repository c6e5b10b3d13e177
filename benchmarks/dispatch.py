"""Dispatch latency: `run_deployment` → the run is Pending, Running, Completed.

One run at a time, each triggered a random moment (0..jitter) after the previous one
ended, so a polling worker is met at every point of its poll cycle. The candidate worker's
runs are split around the reference's (A, B, A) so a drift in machine load over the phase
weighs on both alike. Latencies are read from the runs' own state timestamps, not from
our polling, and every process is on this machine, so the clocks agree.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from benchmarks.harness import BenchEnv, say
from benchmarks.prefect_client import (
    FLOW_NAME,
    TERMINAL,
    deploy,
    platform_client,
    state_times,
    state_type,
    wait_terminal,
    write_flow_dir,
)
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import summarize
from benchmarks.workers import WorkerKind, pool_name, running_worker

RUN_TIMEOUT_S = 180
PHASES = ("PENDING", "RUNNING", "COMPLETED")


async def segment(
    env: BenchEnv,
    kind: WorkerKind,
    role: str,
    count: int,
    samples: dict[str, list[float]],
    deployment: str = "",
    api: dict[str, str] | None = None,
) -> list[str]:
    """`count` runs of `deployment` (default: the role's) through one worker on the role's
    pool, its Prefect client settings replaced by `api` if given; appends seconds per phase;
    returns failures."""
    from prefect.deployments import arun_deployment

    ctx, plan = env.platform, env.plan
    failures: list[str] = []
    deployment = deployment or f"dispatch-{role}"
    with running_worker(
        ctx, kind, pool_name(role), kind.limit(plan.worker_limit), env.workdir, api=api
    ) as worker:
        async with platform_client(ctx) as client:
            for _ in range(count):
                if env.deadline.remaining() < 30:
                    failures.append("phase deadline reached")
                    break
                await asyncio.sleep(env.rng.uniform(0, plan.dispatch_jitter_s))
                t0 = datetime.now(UTC)
                run = await arun_deployment(
                    f"{FLOW_NAME}/{deployment}", client=client, timeout=0, as_subflow=False
                )
                timeout = min(RUN_TIMEOUT_S, env.deadline.remaining() - 10)
                (final,) = await wait_terminal(client, [run.id], timeout=timeout, interval=0.25)
                if state_type(final) != "COMPLETED":
                    failures.append(f"run {run.id} ended {state_type(final)}")
                    if state_type(final) not in TERMINAL or worker.process.poll() is not None:
                        break
                    continue
                times = await state_times(client, run.id)
                for phase in PHASES:
                    if phase in times:
                        samples[phase].append((times[phase] - t0).total_seconds())
    return failures


async def _run(env: BenchEnv, res: BenchResult) -> None:
    plan = env.plan
    flow_dir = write_flow_dir(env.workdir)
    async with platform_client(env.platform) as client:
        for role in ("candidate", "reference"):
            await deploy(client, flow_dir, pool_name(role), f"dispatch-{role}")
    first = (plan.dispatch_runs + 1) // 2
    segments = [
        ("candidate", env.candidate, first),
        ("reference", env.reference, plan.dispatch_runs),
        ("candidate", env.candidate, plan.dispatch_runs - first),
    ]
    samples: dict[str, dict[str, list[float]]] = {
        role: {p: [] for p in PHASES} for role in ("candidate", "reference")
    }
    failures: dict[str, list[str]] = {"candidate": [], "reference": []}
    res.details["samples_s"] = samples
    res.details["failures"] = failures
    for role, kind, count in segments:
        if count:
            say(f"dispatch: {count} runs through the {role} worker ({kind.key})")
            failures[role] += await segment(env, kind, role, count, samples[role])
    if any(failures.values()):
        res.status = "partial"
        res.notes.append(f"failures: {failures}")


def _figures(res: BenchResult, samples: dict[str, dict[str, list[float]]]) -> None:
    cand = {p: summarize(samples["candidate"][p]) for p in PHASES}
    ref = {p: summarize(samples["reference"][p]) for p in PHASES}
    res.details["summary_s"] = {"candidate": cand, "reference": ref}
    labels = {"PENDING": "Pending (picked up)", "RUNNING": "Running", "COMPLETED": "Completed"}
    for phase in ("RUNNING", "COMPLETED", "PENDING"):
        for q in ("p50", "p95"):
            if phase == "PENDING" and q == "p95":
                continue
            res.add(
                Figure(
                    f"run_deployment → {labels[phase]} {q}",
                    "s",
                    cand[phase].get(q),
                    ref[phase].get(q),
                    "lower",
                    n=int(cand[phase]["n"]),
                )
            )


def run(env: BenchEnv, res: BenchResult) -> None:
    res.candidate = env.candidate.describe(env.plan.worker_limit)
    res.reference = env.reference.describe(env.plan.worker_limit)
    res.notes.append(
        "sequential runs of a no-op flow from a local directory; trigger jitter "
        f"0-{env.plan.dispatch_jitter_s:g} s; worker runs split A-B-A"
    )
    try:
        asyncio.run(_run(env, res))
    finally:
        # Also after a timeout: the runs measured so far are still worth reporting.
        if "samples_s" in res.details:
            _figures(res, res.details["samples_s"])
