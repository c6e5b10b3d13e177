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
import subprocess
import sys
import textwrap

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


# Tasks for the plain DaskTaskRunner (at most): its per-task cost is the point, not its total.
PLAIN_TASKS = 200


def _measure(env: BenchEnv, script: str, *args: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env(env.platform, PREFECT_LOGGING_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=max(60.0, env.deadline.remaining()),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args}: {result.stderr.strip()[-1500:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def run(env: BenchEnv, res: BenchResult) -> None:
    if not env.platform.config.dask.enabled:
        res.status = "skipped"
        res.notes.append("the platform's Dask cluster is off (dask.enabled)")
        return
    n = env.plan.dask_tasks
    address = child_env(env.platform)["DASK_SCHEDULER_ADDRESS"]
    res.candidate = f"Prefect flow, flowyard.dask_cluster.task_runner() ({address})"
    res.reference = "raw distributed.Client.map on the same cluster, through the proxy"
    say(f"dask: {n} tiny tasks, raw Client.map")
    raw = _measure(env, RAW, str(n))
    say(f"dask: {n} tiny tasks, Prefect + DaskTaskRunner")
    dask = _measure(env, PREFECT, str(n), "dask")
    # Half a second a task without the caches: fewer tasks keep the row within its time.
    n_plain = min(n, PLAIN_TASKS)
    say(f"dask: {n_plain} tiny tasks, Prefect + a plain DaskTaskRunner")
    plain = _measure(env, PREFECT, str(n_plain), "dask-plain")
    say(f"dask: {n} tiny tasks, Prefect + ThreadPoolTaskRunner")
    threads = _measure(env, PREFECT, str(n), "threads")
    seconds = {"raw": raw, "dask": dask, "plain": plain, "threads": threads}
    tasks = {"raw": n, "dask": n, "plain": n_plain, "threads": n}
    ms = {k: v / tasks[k] * 1000 for k, v in seconds.items()}
    res.details.update(tasks=tasks, seconds=seconds)
    workers = env.platform.config.dask
    res.notes.append(
        f"{workers.workers} local Dask worker(s) x {workers.effective_threads} thread(s); "
        f"goal: task_runner() per task <= 2x raw Dask's ({ms['dask'] / ms['raw']:.1f}x here)"
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
