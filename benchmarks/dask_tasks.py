"""Dask: per-task overhead of tiny tasks on the platform's Dask cluster, through the proxy.

Four ways to run the same N tiny tasks (`x + 1`), each in a fresh client process with the
platform's client environment (`flowyard env`: the proxy's wss:// address, the client
certificate): a Prefect flow with `flowyard.dask_cluster.task_runner()` (prefect-dask's
`DaskTaskRunner` for the platform's cluster, with the per-task context caches that module
installs: the candidate); the same flow with a plain `DaskTaskRunner` (the flow's process
without those caches; the platform's Dask workers preload them either way); the same flow
with Prefect's default `ThreadPoolTaskRunner`; and raw `distributed.Client.map` on the same
cluster (the reference). Each process warms up first
(connection, first task), and only the fan-out of N tasks and the gathering of their results
are timed. The goal (issue 15): Prefect on the platform's Dask adds no more than 2x raw
Dask's per-task overhead.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time

from benchmarks import procs
from benchmarks.harness import BenchEnv, say
from benchmarks.report import BenchResult, Figure
from flowyard.client.env import child_env

PREFECT = textwrap.dedent(
    """
    import json, os, sys, time
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    n, kind = int(sys.argv[1]), sys.argv[2]

    @task(persist_result=False, cache_policy=NO_CACHE)
    def tiny(x):
        return x + 1

    if kind == "dask":
        # The documented way: prefect-dask's runner for the platform's address, with the
        # per-task context caches importing it installs.
        from flowyard.dask_cluster import task_runner
        runner = task_runner()
    elif kind == "dask-plain":
        runner = DaskTaskRunner(address=os.environ["DASK_SCHEDULER_ADDRESS"])
    else:
        runner = ThreadPoolTaskRunner()

    @flow(task_runner=runner, persist_result=False)
    def fan(n: int) -> float:
        tiny.submit(0).result()  # the connection and a first task, untimed
        t = time.perf_counter()
        values = [f.result() for f in tiny.map(range(n))]
        seconds = time.perf_counter() - t
        assert values == [x + 1 for x in range(n)], "wrong results"
        return seconds

    print(json.dumps({"seconds": fan(n)}))
    """
)

RAW = textwrap.dedent(
    """
    import json, sys, time
    import distributed

    n = int(sys.argv[1])

    def tiny(x):
        return x + 1

    with distributed.Client(timeout=60) as client:
        client.submit(tiny, -1, pure=False).result()  # untimed warm-up
        t = time.perf_counter()
        values = client.gather(client.map(tiny, range(n), pure=False))
        seconds = time.perf_counter() - t
    assert values == [x + 1 for x in range(n)], "wrong results"
    print(json.dumps({"seconds": seconds}))
    """
)


# What each way is called in the notes.
WAYS = {
    "raw": "raw Client.map",
    "dask": "Prefect + task_runner()",
    "plain": "Prefect + a plain DaskTaskRunner",
    "threads": "Prefect + ThreadPoolTaskRunner",
}

# Tasks for the plain DaskTaskRunner (at most): its per-task cost is the point, not its total.
PLAIN_TASKS = 200
# The platform has settled when its services spent less than this in a second (an idle
# platform with Dask spends about 0.1; one still recording task runs, a core or more), at
# most this many seconds.
SETTLED_CPU_S = 0.3
SETTLE_POLLS = 30


def _settled_cpu(env: BenchEnv) -> dict[str, float]:
    """Each service's CPU-seconds once the platform is done with what it was sent: Prefect's
    services record task runs from their events a little after the flow's process exits."""
    before = procs.service_cpu_seconds(env.platform)
    for _ in range(SETTLE_POLLS):
        time.sleep(1.0)
        now = procs.service_cpu_seconds(env.platform)
        if sum(now.values()) - sum(before.values()) < SETTLED_CPU_S:
            return now
        before = now
    return before


def _measure(env: BenchEnv, script: str, *args: str) -> tuple[float, dict[str, float]]:
    """Seconds the fan-out took, and the CPU-seconds each process spent on it: the client's
    and each platform service's, to when the platform settled."""
    services0 = _settled_cpu(env)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env(env.platform, PREFECT_LOGGING_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=max(60.0, env.deadline.remaining()),
    )
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{args}: {result.stderr.strip()[-1500:]}")
    cpu = {name: seconds - services0.get(name, 0.0) for name, seconds in _settled_cpu(env).items()}
    cpu["client"] = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"]), cpu


def run(env: BenchEnv, res: BenchResult) -> None:
    if not env.platform.config.dask.enabled:
        res.status = "skipped"
        res.notes.append("the platform's Dask cluster is off (dask.enabled)")
        return
    n = env.plan.dask_tasks
    address = child_env(env.platform)["DASK_SCHEDULER_ADDRESS"]
    res.candidate = f"Prefect flow, flowyard.dask_cluster.task_runner() ({address})"
    res.reference = "raw distributed.Client.map on the same cluster, through the proxy"
    ways: dict[str, tuple[str, ...]] = {
        "raw": (RAW, str(n)),
        "dask": (PREFECT, str(n), "dask"),
        # Half a second a task without the caches: fewer tasks keep the row within its time.
        "plain": (PREFECT, str(min(n, PLAIN_TASKS)), "dask-plain"),
        "threads": (PREFECT, str(n), "threads"),
    }
    seconds: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    for way, (script, *args) in ways.items():
        say(f"dask: {args[0]} tiny tasks, {WAYS[way]}")
        seconds[way], cpu[way] = _measure(env, script, *args)
    tasks = {way: int(args[1]) for way, args in ways.items()}
    n_plain = tasks["plain"]
    ms = {k: v / tasks[k] * 1000 for k, v in seconds.items()}
    cpu_ms = {
        way: {name: s / tasks[way] * 1000 for name, s in by_process.items() if s > 0}
        for way, by_process in cpu.items()
    }
    res.details.update(tasks=tasks, seconds=seconds, cpu_ms_per_task=cpu_ms)
    workers = env.platform.config.dask
    res.notes.append(
        f"{workers.workers} local Dask worker(s) x {workers.effective_threads} thread(s); "
        f"goal: task_runner() per task <= 2x raw Dask's ({ms['dask'] / ms['raw']:.1f}x here)"
    )
    for way in ("dask", "raw", "threads"):
        split = sorted(cpu_ms[way].items(), key=lambda item: -item[1])
        res.notes.append(
            f"CPU per task, {WAYS[way]}: {sum(cpu_ms[way].values()):.1f} ms on "
            f"{os.cpu_count()} cores ("
            + ", ".join(f"{name} {value:.2f}" for name, value in split if value >= 0.05)
            + "; the flow's or client's own process is `client`)"
        )
    res.add(
        Figure("per task: task_runner() vs raw Client.map", "ms", ms["dask"], ms["raw"], n=n),
        Figure(
            "per task: task_runner() vs a plain DaskTaskRunner",
            "ms",
            ms["dask"],
            ms["plain"],
            n=n_plain,
        ),
        Figure(
            "per task: ThreadPoolTaskRunner vs raw Client.map", "ms", ms["threads"], ms["raw"], n=n
        ),
        Figure(
            "per task: task_runner() vs ThreadPoolTaskRunner", "ms", ms["dask"], ms["threads"], n=n
        ),
    )
