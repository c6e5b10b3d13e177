"""Dispatch latency: `run_deployment` → the run is Pending, Running, Completed.

One run at a time, each triggered a random moment (0..jitter) after the previous one
ended, so a polling worker is met at every point of its poll cycle. The candidate worker's
runs are split around the reference's (A, B, A) so a drift in machine load over the phase
weighs on both alike. Latencies are read from the runs' own state timestamps, not from
our polling, and every process is on this machine, so the clocks agree.

Then the candidate worker alone runs the same flow deployed as the platform's deployments
are (`flowyard deploy`'s own code): its code uploaded by content to the platform's code
bucket, and a pull_from_s3 step in every run, which the `flowyard` worker serves from its own
copy of the content folder after the first run (`flowyard.worker.code_cache`); a stock
worker fetches it every time. Those rows compare it with the same worker's local-code runs
above: what code from S3 adds to each run, on the path users take.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from benchmarks.harness import BenchEnv, say
from benchmarks.prefect_client import (
    FLOW_NAME,
    TERMINAL,
    deploy,
    deploy_from_s3,
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
# The samples of the candidate's runs of the deployment whose code comes from S3.
S3 = "candidate, code from S3"
S3_DEPLOYMENT = "dispatch-candidate-s3"


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
        role: {p: [] for p in PHASES} for role in ("candidate", "reference", S3)
    }
    failures: dict[str, list[str]] = {"candidate": [], "reference": [], S3: []}
    res.details["samples_s"] = samples
    res.details["failures"] = failures
    for role, kind, count in segments:
        if count:
            say(f"dispatch: {count} runs through the {role} worker ({kind.key})")
            failures[role] += await segment(env, kind, role, count, samples[role])
    # Code from S3: the candidate only, after the A-B-A, as many runs as each worker had.
    pool = pool_name("candidate")
    async with platform_client(env.platform) as client:
        say("dispatch: deploying the flow with its code in the code bucket (flowyard deploy)")
        res.details["s3_code"] = await deploy_from_s3(
            env.platform, client, env.workdir, pool, S3_DEPLOYMENT
        )
    say(f"dispatch: {plan.dispatch_runs} runs through the candidate worker, code from S3")
    failures[S3] += await segment(
        env, env.candidate, "candidate", plan.dispatch_runs, samples[S3], S3_DEPLOYMENT
    )
    if any(failures.values()):
        res.status = "partial"
        res.notes.append(f"failures: {failures}")


def _figures(res: BenchResult, samples: dict[str, dict[str, list[float]]]) -> None:
    cand = {p: summarize(samples["candidate"][p]) for p in PHASES}
    ref = {p: summarize(samples["reference"][p]) for p in PHASES}
    s3 = {p: summarize(samples.get(S3, {}).get(p, [])) for p in PHASES}
    res.details["summary_s"] = {"candidate": cand, "reference": ref, S3: s3}
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
    # The candidate's runs with their code from S3, against its own local-code runs.
    for q in ("p50", "p95"):
        res.add(
            Figure(
                f"run_deployment → Running {q}, code from S3 vs local code",
                "s",
                s3["RUNNING"].get(q),
                cand["RUNNING"].get(q),
                "lower",
                n=int(s3["RUNNING"]["n"]),
            )
        )


def run(env: BenchEnv, res: BenchResult) -> None:
    res.candidate = env.candidate.describe(env.plan.worker_limit)
    res.reference = env.reference.describe(env.plan.worker_limit)
    res.notes.append(
        "sequential runs of a no-op flow from a local directory; trigger jitter "
        f"0-{env.plan.dispatch_jitter_s:g} s; worker runs split A-B-A"
    )
    res.notes.append(
        "code from S3 rows: the candidate worker only, in a segment of its own after the "
        f"A-B-A ({env.plan.dispatch_runs} runs, same jitter), the flow deployed by `flowyard "
        "deploy`'s own code (uploaded by content to the code bucket; its pull_from_s3 step "
        "fetches it on the first run, then the worker's copy serves it); reference = the "
        "same worker's local-code runs"
    )
    try:
        asyncio.run(_run(env, res))
    finally:
        # Also after a timeout: the runs measured so far are still worth reporting.
        if "samples_s" in res.details:
            _figures(res, res.details["samples_s"])
