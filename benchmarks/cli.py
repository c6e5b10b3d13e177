"""`python -m benchmarks`: run the selected benchmarks, write JSON + markdown, print the table."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import report
from benchmarks.guard import Deadline, PhaseTimeout, hard_timeout
from benchmarks.machine import REPO, loadavg, machine_info
from benchmarks.plan import ALL, make_plan
from benchmarks.report import BenchResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TITLES = {
    "coldstart": "Cold start",
    "memory": "Idle memory (PSS)",
    "api": "API via Caddy",
    "s3": "S3 via Caddy",
    "tracking": "MLflow tracking",
    "dispatch": "Dispatch latency",
    "throughput": "Short-run throughput",
    "gate": "The access gate on the worker's path",
    "simultaneous": "Simultaneous runs",
    "dask": "Dask tasks via the proxy",
}
LIFECYCLE = ("coldstart", "memory")
# Beyond its soft deadline, a benchmark gets this long to wrap up before it is interrupted.
HARD_GRACE_S = 60


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = set(names) - set(ALL)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {sorted(unknown)}; known: {ALL}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.workers import KINDS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Flowyard's benchmarks, each against a reference in the same run.",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (a few minutes)")
    p.add_argument("--only", type=_names, default=None, help=f"comma list of {','.join(ALL)}")
    p.add_argument("--skip", type=_names, default=[], help="comma list of benchmarks to leave out")
    p.add_argument(
        "--candidate",
        choices=KINDS,
        default="auto",
        help="worker measured (auto: the flowyard worker type if registered, else the "
        "platform's own worker)",
    )
    p.add_argument("--reference", choices=KINDS, default="process", help="worker compared to")
    p.add_argument(
        "--worker-limit",
        type=int,
        default=None,
        help="force this --limit on both workers (0 = none); default: each kind's own "
        "(stock: none; platform/flowyard: one run per CPU)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument(
        "--update-doc",
        nargs="?",
        type=Path,
        const=REPO / "BENCHMARKS.md",
        default=None,
        help="also replace the generated block of BENCHMARKS.md (or the given file)",
    )
    p.add_argument("--render", type=Path, help="re-render a results JSON; runs nothing")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--seed", type=int, default=6, help="seed for the dispatch trigger jitter")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    return p.parse_args(argv)


def isolate_environment(root: Path) -> None:
    """The shell's Prefect/AWS/MLflow settings must not steer the benchmark's own clients;
    Prefect reads its settings on first import, so this runs before anything imports it."""
    for key in list(os.environ):
        if key.startswith(("PREFECT_", "AWS_", "MLFLOW_", "FLOWYARD_")):
            del os.environ[key]
    os.environ["PREFECT_HOME"] = str(root / "client-prefect")
    os.environ["PREFECT_PROFILES_PATH"] = str(root / "client-profiles.toml")


def guarded(results: list[BenchResult], seconds: float, fn: Callable[[], None], env: Any) -> None:
    """Run one phase under its deadline; a failure is recorded, never fatal to the run."""
    from benchmarks.harness import say

    env.deadline = Deadline(seconds)
    names = "+".join(r.name for r in results)
    say(f"{names}: start (limit {seconds:.0f} s)")
    t0 = time.monotonic()
    try:
        with hard_timeout(seconds + HARD_GRACE_S, names):
            fn()
    except PhaseTimeout as exc:
        for r in results:
            r.status = "partial"
            r.notes.append(str(exc))
    except Exception as exc:
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        for r in results:
            r.status = "partial" if r.figures else "error"
            r.notes.append(f"{type(exc).__name__}: {first}"[:500])
    finally:
        for r in results:
            r.duration_s = round(time.monotonic() - t0, 1)
        say(f"{names}: {', '.join(r.status for r in results)} in {time.monotonic() - t0:.0f} s")


def main_platform_overrides(env: Any, with_mlflow: bool, with_dask: bool = False) -> dict[str, Any]:
    from benchmarks.coldstart import mlflow_service_available
    from benchmarks.workers import platform_pool_type, pool_name

    return {
        # We start each worker ourselves, one at a time, to account for its CPU.
        "worker": {"enabled": False},
        "pools": [
            {"name": "default", "type": platform_pool_type()},
            {"name": pool_name("candidate"), "type": env.candidate.pool_type},
            {"name": pool_name("reference"), "type": env.reference.pool_type},
        ],
        "mlflow": {"enabled": with_mlflow and mlflow_service_available()},
        # The platform's Dask cluster only for its benchmark: it idles at ~180 MB.
        "dask": {"enabled": with_dask},
    }


def run_all(env: Any, selected: list[str], results: list[BenchResult]) -> None:
    from benchmarks import (
        api,
        coldstart,
        dask_tasks,
        dispatch,
        gate_path,
        s3,
        simultaneous,
        throughput,
        tracking,
    )
    from flowyard.testing import running_platform

    runners: dict[str, Callable[[Any, BenchResult], None]] = {
        "api": api.run,
        "s3": s3.run,
        "tracking": tracking.run,
        "dispatch": dispatch.run,
        "throughput": throughput.run,
        "gate": gate_path.run,
        "simultaneous": simultaneous.run,
        "dask": dask_tasks.run,
    }
    plan = env.plan
    life = {n: BenchResult(n, TITLES[n]) for n in LIFECYCLE if n in selected}
    if life:
        results += life.values()
        seconds = sum(plan.timeouts_s[n] for n in life)
        guarded(
            list(life.values()),
            seconds,
            lambda: coldstart.run(env, life.get("coldstart"), life.get("memory")),
            env,
        )
    rest = [n for n in selected if n not in LIFECYCLE]
    if not rest:
        return
    pending = [BenchResult(n, TITLES[n]) for n in rest]
    try:
        overrides = main_platform_overrides(env, "tracking" in rest, "dask" in rest)
        with running_platform(env.workdir / "main", **overrides) as ctx:
            env.ctx = ctx
            while pending:
                res = pending.pop(0)
                results.append(res)
                guarded([res], plan.timeouts_s[res.name], partial(runners[res.name], env, res), env)
    except Exception as exc:
        traceback.print_exc()
        for res in pending:
            res.status = "error"
            res.notes.append(f"the platform failed: {type(exc).__name__}: {exc}"[:500])
            results.append(res)


def render_only(args: argparse.Namespace) -> int:
    doc = json.loads(args.render.read_text())
    markdown = report.render_markdown(doc, report.results_from_document(doc))
    print(markdown)
    if args.update_doc:
        report.update_doc(args.update_doc, markdown)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args)
    selected = [n for n in ALL if (args.only is None or n in args.only) and n not in args.skip]
    root = Path(tempfile.mkdtemp(prefix="flowyard-bench-"))
    isolate_environment(root)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # SystemExit unwinds every `with`, so platforms and workers are stopped.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    from benchmarks.harness import BenchEnv, say
    from benchmarks.workers import resolve

    plan = make_plan(args.quick, args.worker_limit)
    started = datetime.now(UTC)
    machine = machine_info()
    env = BenchEnv(
        plan=plan,
        workdir=root,
        candidate=resolve(args.candidate),
        reference=resolve(args.reference),
        selected=tuple(selected),
        rng=random.Random(args.seed),
    )
    say(f"scratch directory {root}; benchmarks: {', '.join(selected)}")
    results: list[BenchResult] = []
    try:
        run_all(env, selected, results)
    except KeyboardInterrupt:
        say("interrupted: writing what was measured so far")
    finally:
        machine["loadavg_end"] = loadavg()
        settings = {
            "candidate_worker": env.candidate.key,
            "reference_worker": env.reference.key,
            "selected": ",".join(selected),
            **{k: v for k, v in plan.as_dict().items() if k != "quick"},
        }
        doc = report.document(
            results,
            machine=machine,
            settings=settings,
            started_at=started.isoformat(timespec="seconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            quick=plan.quick,
            note=args.note,
        )
        markdown = report.render_markdown(doc, results)
        stem = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if plan.quick else "")
        written = report.write_outputs(doc, markdown, args.out, stem)
        print(markdown)
        say("wrote " + ", ".join(str(p) for p in written[:2]))
        if args.update_doc:
            report.update_doc(args.update_doc, markdown)
            say(f"updated {args.update_doc}")
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
