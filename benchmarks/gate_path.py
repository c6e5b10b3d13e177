"""The access gate on the worker's path: dispatch latency and short-run throughput with the
gate and without it (issue 14's goal: both within 5 % of the path without it).

The candidate worker runs the same deployments twice on one platform, A-B-A so a drift in
machine load weighs on both: once as deployed (its API calls through the platform's Caddy,
which asks the gate on every `/api/*` request, with the `platform-worker` login), once with
its `PREFECT_API_URL` pointed at the bench-only Caddy that the same renderer makes without
the gate (`gate_cost.caddy_without_gate`: today's path before the gate, Prefect checking the
credential itself, here the internal one). Its flow runs inherit the worker's settings, so
their calls take the same path. Everything else (the flow, the pool, the sizes, the jitter)
is the dispatch and throughput benchmarks' own, by their own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from statistics import mean
from typing import Any

from benchmarks import dispatch, throughput
from benchmarks.gate_cost import caddy_without_gate
from benchmarks.harness import BenchEnv, say
from benchmarks.prefect_client import deploy, platform_client, write_flow_dir
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import summarize
from benchmarks.workers import pool_name
from flowyard.client.api import internal_auth_string

GOAL = 0.05  # at most 5 % worse with the gate
ROLE = "candidate"  # the candidate worker's pool
WAYS = ("gate", "no gate")


@contextmanager
def worker_settings_without_gate(env: BenchEnv) -> Iterator[dict[str, str]]:
    """Prefect client settings that take a worker to the API through the bench-only Caddy,
    with the internal login: the credential Prefect itself checks (websockets in-band too)."""
    with caddy_without_gate(env.platform, env.workdir) as options:
        settings = {
            "PREFECT_API_URL": f"{options['base_url']}/api",
            "PREFECT_API_AUTH_STRING": internal_auth_string(env.platform),
        }
        if "verify" in options:
            settings["PREFECT_API_SSL_CERT_FILE"] = options["verify"]
        yield settings


async def _run(env: BenchEnv, res: BenchResult, api: dict[str, str]) -> None:
    plan, kind = env.plan, env.candidate
    ways: dict[str, dict[str, str] | None] = {"gate": None, "no gate": api}
    flow_dir = write_flow_dir(env.workdir)
    async with platform_client(env.platform) as client:
        await deploy(client, flow_dir, pool_name(ROLE), "gate-dispatch")
        batch_id = await deploy(client, flow_dir, pool_name(ROLE), "gate-throughput")
    samples: dict[str, dict[str, list[float]]] = {
        way: {p: [] for p in dispatch.PHASES} for way in WAYS
    }
    failures: dict[str, list[str]] = {way: [] for way in WAYS}
    batches: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    res.details.update(samples_s=samples, failures=failures, batches=batches)
    first = (plan.dispatch_runs + 1) // 2
    for way, count in (
        ("gate", first),
        ("no gate", plan.dispatch_runs),
        ("gate", plan.dispatch_runs - first),
    ):
        if count:
            say(f"gate path: dispatch, {count} runs, {way}")
            failures[way] += await dispatch.segment(
                env, kind, ROLE, count, samples[way], "gate-dispatch", ways[way]
            )
    for way in ("gate", "no gate", "gate"):
        say(f"gate path: {plan.throughput_runs} runs at once, {way}")
        batches[way].append(await throughput.batch(env, kind, ROLE, batch_id, ways[way]))


def _figures(res: BenchResult) -> None:
    samples, batches = res.details.get("samples_s", {}), res.details.get("batches", {})
    # (figure, how much worse with the gate, as a fraction)
    judged: list[tuple[str, float]] = []
    if samples:
        s = {way: {p: summarize(samples[way][p]) for p in dispatch.PHASES} for way in WAYS}
        for phase, q in (("RUNNING", "p50"), ("RUNNING", "p95"), ("COMPLETED", "p50")):
            fig = Figure(
                f"run_deployment → {phase.title()} {q}, with vs without the gate",
                "s",
                s["gate"][phase].get(q),
                s["no gate"][phase].get(q),
                "lower",
                n=int(s["gate"][phase]["n"]),
            )
            res.add(fig)
            if phase == "RUNNING" and q == "p50" and fig.ratio is not None:
                judged.append(("dispatch → Running p50", fig.ratio - 1))
    if batches.get("gate") and batches.get("no gate"):

        def avg(way: str, key: str) -> float | None:
            values = [b[key] for b in batches[way] if b.get(key) is not None]
            return mean(values) if values else None

        runs = batches["gate"][0]["runs"]
        rate = Figure(
            "short runs per minute, with vs without the gate",
            "runs/min",
            avg("gate", "runs_per_min"),
            avg("no gate", "runs_per_min"),
            "higher",
            n=runs,
        )
        res.add(
            rate,
            Figure(
                "platform services' CPU per run, with vs without the gate",
                "CPU-s",
                avg("gate", "platform_cpu_per_run_s"),
                avg("no gate", "platform_cpu_per_run_s"),
                "lower",
                n=runs,
            ),
        )
        if rate.ratio is not None:  # higher is better: worse by what it falls short
            judged.append(("runs/min", 1 - rate.ratio))
        if not all(b.get("all_completed") for way in WAYS for b in batches[way]):
            res.status = "partial"
            res.notes.append("not every run of the throughput batches completed")
    verdicts = [
        f"{what} {worse * 100:+.1f} % ({'met' if worse <= GOAL else 'NOT met'})"
        for what, worse in judged
    ]
    if verdicts:
        res.notes.append(
            f"goal (issue 14): with the gate within {GOAL:.0%} of without: " + "; ".join(verdicts)
        )
    if any(res.details.get("failures", {}).values()):
        res.status = "partial"
        res.notes.append(f"failures: {res.details['failures']}")


def run(env: BenchEnv, res: BenchResult) -> None:
    res.candidate = f"{env.candidate.describe(env.plan.worker_limit)}, through the gate"
    res.reference = "the same worker through a bench-only Caddy without the gate"
    res.notes.append(
        f"dispatch: {env.plan.dispatch_runs} sequential runs per way, split A-B-A; throughput: "
        f"{env.plan.throughput_runs} runs at once, gate / no gate / gate (gate figures averaged)"
    )
    try:
        with worker_settings_without_gate(env) as api:
            asyncio.run(_run(env, res, api))
    finally:
        _figures(res)
