"""Stock `process` worker vs the `flowyard` worker, on one real platform, in one run.

    .venv/bin/python tests/perf/measure_worker.py [--latency-runs 10] [--burst 30]
        [--limit 8] [--concurrent 0] [--workers process,flowyard]

Starts the platform on free ports (flowyard.testing), one work pool per worker type, the
same short flow deployed to each, and each worker as `prefect worker start` with the local
worker's environment. Per worker type, one after the other:

- latency: runs triggered one at a time; time from the trigger to the server's Running
  timestamp (p50/p95);
- throughput: a burst of runs created at once; runs/min from the first trigger to the last
  final state, and CPU seconds per run of the worker's process tree (worker, zygotes, runs,
  reaped ones included) and of the platform's server processes;
- memory (--concurrent N): N runs that each sleep, all running at once; summed PSS of the
  worker tree.

Not the benchmark suite (benchmarks/ is): a quick, bounded check for the worker's author.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil

from flowyard.services.base import Context, binary
from flowyard.services.worker import env as worker_env
from flowyard.testing import platform_pids, running_platform

FLOW = textwrap.dedent(
    """
    import time
    from prefect import flow

    @flow
    def short(x: int = 0, sleep: float = 0.0):
        if sleep:
            time.sleep(sleep)
        return {"x": x}
    """
)


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its descendants, reaped ones included."""
    total = 0.0
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_pss_mb(root: int) -> float:
    total = 0
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total / 2**20


def server_cpu(ctx: Context, exclude: set[int]) -> float:
    total = 0.0
    for pid in platform_pids(ctx) - exclude:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@contextmanager
def worker(ctx: Context, pool: str, limit: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    home = workdir / f"worker-{pool}"
    home.mkdir(exist_ok=True)
    env = {**os.environ, **worker_env(ctx), "PREFECT_HOME": str(home)}
    log = (workdir / f"worker-{pool}.log").open("wb")
    proc = subprocess.Popen(
        [
            *(binary("prefect"), "worker", "start", "--pool", pool),
            *("--name", f"measure-{pool}", "--limit", str(limit)),
        ],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def final(client: Any, ids: list[UUID], timeout: float) -> dict[UUID, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.time() + timeout
    done: dict[UUID, Any] = {}
    while len(done) < len(ids) and time.time() < deadline:
        pending = [i for i in ids if i not in done]
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending)), limit=200
        ):
            if run.state and run.state.is_final():
                done[run.id] = run
        time.sleep(0.2)
    return done


def running_at(client: Any, run_id: UUID) -> float | None:
    for state in client.read_flow_run_states(run_id):
        if state.type.value == "RUNNING":
            return state.timestamp.timestamp()
    return None


def measure(
    ctx: Context, client: Any, pool: str, deployment_id: UUID, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"pool": pool}
    with worker(ctx, pool, args.limit, tmp) as proc:
        # Warm-up run: worker registered, zygote ready, caches filled.
        warm = client.create_flow_run_from_deployment(deployment_id)
        got = final(client, [warm.id], 180)
        if warm.id not in got:
            raise SystemExit(f"{pool}: warm-up run did not finish; see {tmp}/worker-{pool}.log")

        latencies = []
        for i in range(args.latency_runs):
            t0 = time.time()
            run = client.create_flow_run_from_deployment(deployment_id, parameters={"x": i})
            final(client, [run.id], 120)
            if (ts := running_at(client, run.id)) is not None:
                latencies.append(ts - t0)
        if latencies:
            q = (
                statistics.quantiles(latencies, n=20, method="inclusive")
                if len(latencies) > 1
                else latencies * 19
            )
            result["latency_s"] = {
                "n": len(latencies),
                "p50": round(statistics.median(latencies), 3),
                "p95": round(q[18], 3),
                "max": round(max(latencies), 3),
            }

        if args.burst:
            cpu0, srv0 = tree_cpu(proc.pid), server_cpu(ctx, {proc.pid})
            t0 = time.time()
            ids = [
                client.create_flow_run_from_deployment(deployment_id, parameters={"x": i}).id
                for i in range(args.burst)
            ]
            done = final(client, ids, 600)
            elapsed = max(r.state.timestamp.timestamp() for r in done.values()) - t0
            cpu = tree_cpu(proc.pid) - cpu0
            srv = server_cpu(ctx, {proc.pid}) - srv0
            result["burst"] = {
                "runs": args.burst,
                "completed": sum(1 for r in done.values() if r.state.is_completed()),
                "seconds": round(elapsed, 1),
                "runs_per_min": round(len(done) / elapsed * 60, 1),
                "worker_cpu_s_per_run": round(cpu / args.burst, 3),
                "server_cpu_s_per_run": round(srv / args.burst, 3),
            }

    if args.concurrent:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        # A worker allowed that many runs at once (the throughput worker is not).
        with worker(ctx, pool, args.concurrent, tmp) as proc:
            ids = [
                client.create_flow_run_from_deployment(
                    deployment_id, parameters={"x": i, "sleep": args.sleep}
                ).id
                for i in range(args.concurrent)
            ]
            peak_pss, peak_running, t0 = 0.0, 0, time.time()
            while time.time() - t0 < 300:
                running = sum(
                    1
                    for r in client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200
                    )
                    if r.state and r.state.is_running()
                )
                pss = tree_pss_mb(proc.pid)
                if running >= peak_running:
                    peak_running, peak_pss = running, max(peak_pss, pss)
                if len(final(client, ids, 0.1)) == len(ids):
                    break
                time.sleep(1)
            done = final(client, ids, 300)
            result["concurrent"] = {
                "runs": args.concurrent,
                "peak_running_at_once": peak_running,
                "worker_tree_pss_mb_at_peak": round(peak_pss),
                "completed": sum(1 for r in done.values() if r.state.is_completed()),
                "swap_used_mb": round(psutil.swap_memory().used / 2**20),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--limit", type=int, default=8, help="worker --limit (both types)")
    parser.add_argument("--concurrent", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds per --concurrent run")
    parser.add_argument("--workers", default="process,flowyard")
    args = parser.parse_args()
    types = args.workers.split(",")

    with tempfile.TemporaryDirectory(prefix="fy-measure-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "flows").mkdir()
        (tmp / "flows" / "short.py").write_text(FLOW)
        pools = [{"name": f"m-{t}", "type": t} for t in types]
        with running_platform(tmp / "home", pools=pools, worker={"enabled": False}) as ctx:
            from flowyard.platform.client_env import client_env

            os.environ.update(client_env(ctx))
            import prefect.context

            # Prefect may have been imported already: read the platform's settings now.
            prefect.context.refresh_global_settings_context()
            from prefect import Flow, flow
            from prefect.client.orchestration import get_client

            results = []
            with get_client(sync_client=True) as client:
                for t in types:
                    source = flow.from_source(
                        source=str(tmp / "flows"), entrypoint="short.py:short"
                    )
                    assert isinstance(source, Flow)  # a coroutine only from async code
                    dep = source.deploy(
                        name=f"short-{t}", work_pool_name=f"m-{t}", print_next_steps=False
                    )
                    results.append(measure(ctx, client, f"m-{t}", UUID(str(dep)), args, tmp))
                    print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"machine": {"cpus": os.cpu_count()}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
