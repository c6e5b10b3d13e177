"""Cold start (`flowyard up` → every service ready) and idle memory, against stock Prefect.

Both run on a throw-away platform of their own, before the shared one starts, so nothing
else of ours is running. `flowyard up` is timed as users run it: the CLI in a subprocess
(its imports included), from a fresh home (initdb, migrations, CA, buckets, pools: what a
first start does) and again after `flowyard down` (warm restart). Readiness is the CLI's
own: every service's check passed, the worker registered with the API. The reference is
stock Prefect's server + process worker (stock.py) from a fresh PREFECT_HOME and again
after a stop. Memory is read after the warm start, once the platform has been idle for a
while.
"""

from __future__ import annotations

import re
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.harness import BenchEnv, say
from benchmarks.memory import MiB, platform_pss
from benchmarks.report import BenchResult, Figure
from benchmarks.stock import StockPrefect
from flowyard.platform import lifecycle
from flowyard.services.base import binary
from flowyard.testing import init_home, stop_platform

READY_LINE = re.compile(r"✓\s+(\S+)\s+(ready|already running)")


def mlflow_service_available() -> bool:
    return find_spec("flowyard.services.mlflow") is not None and find_spec("mlflow") is not None


def cli(home: Path, command: str, timeout: float) -> tuple[float, dict[str, float], str]:
    """Run `flowyard <command>`; (seconds, {service: seconds until it was ready}, output)."""
    env = {**procs.clean_env(), "FLOWYARD_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [binary("flowyard"), command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    ready: dict[str, float] = {}
    lines = []
    assert proc.stdout is not None
    # Lines are read as they come, so each service's "ready" line is timed.
    for line in proc.stdout:
        lines.append(line)
        if m := READY_LINE.search(line):
            ready[m.group(1)] = round(time.monotonic() - t0, 2)
    code = proc.wait(timeout=timeout)
    seconds = time.monotonic() - t0
    output = "".join(lines)
    if code != 0:
        raise RuntimeError(f"`flowyard {command}` failed ({code}):\n{output[-3000:]}")
    return seconds, ready, output


def _flowyard(env: BenchEnv, timed: bool, memory: bool, out: dict[str, Any]) -> None:
    home = env.workdir / "lifecycle"
    ctx = init_home(home, mlflow={"enabled": mlflow_service_available()})
    out["services"] = [s.name for s in lifecycle.build_services(ctx)]
    try:
        say("coldstart: `flowyard up` from a fresh home")
        out["fresh_s"], out["fresh_ready_at_s"], _ = cli(home, "up", timeout=600)
        if timed:
            say("coldstart: `flowyard down`, then `flowyard up` again (warm)")
            out["down_s"], _, _ = cli(home, "down", timeout=300)
            out["warm_s"], out["warm_ready_at_s"], _ = cli(home, "up", timeout=600)
        if memory:
            say(f"memory: idle for {env.plan.idle_settle_s:g} s, then PSS per service")
            time.sleep(env.plan.idle_settle_s)
            out["pss"] = platform_pss(ctx)
    finally:
        stop_platform(ctx)


def _stock(env: BenchEnv, timed: bool, memory: bool, out: dict[str, Any]) -> None:
    stock = StockPrefect(env.workdir / "stock")
    try:
        say("coldstart: stock `prefect server start` + process worker, fresh PREFECT_HOME")
        out["fresh"] = stock.start()
        if timed:
            t = time.monotonic()
            stock.stop()
            out["down_s"] = time.monotonic() - t
            out["warm"] = stock.start()
        if memory:
            time.sleep(env.plan.idle_settle_s)
            out["pss"] = stock.pss_bytes()
    finally:
        stock.stop()


def _cold_figures(res: BenchResult, fy: dict[str, Any], st: dict[str, Any]) -> None:
    res.add(
        Figure(
            "fresh home → all ready", "s", fy.get("fresh_s"), st.get("fresh", {}).get("ready_s")
        ),
        Figure(
            "warm restart → all ready", "s", fy.get("warm_s"), st.get("warm", {}).get("ready_s")
        ),
        Figure("stop (flowyard down)", "s", fy.get("down_s"), st.get("down_s")),
    )
    for when in ("fresh", "warm"):
        if fy.get(f"{when}_ready_at_s"):
            steps = ", ".join(f"{k} {v:.1f}" for k, v in fy[f"{when}_ready_at_s"].items())
            res.notes.append(f"{when}: each service ready at (s since `flowyard up`): {steps}")


def _memory_figures(res: BenchResult, fy: dict[str, Any], st: dict[str, Any]) -> None:
    pss = fy.get("pss", {})
    for name, v in pss.items():
        procs_note = f" ({v['processes']} processes)" if v["processes"] > 1 else ""
        res.add(Figure(f"{name}{procs_note}", "MiB", v["pss"] / MiB, None))
    stock_total = sum(st.get("pss", {}).values()) / MiB if st.get("pss") else None
    total = sum(v["pss"] for v in pss.values()) / MiB if pss else None
    res.add(Figure("total idle PSS", "MiB", total, stock_total))
    if st.get("pss"):
        parts = ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in st["pss"].items())
        res.notes.append(f"stock Prefect: {parts}")


def run(env: BenchEnv, cold: BenchResult | None, mem: BenchResult | None) -> None:
    """Fills whichever of the two results is asked for; both share the same starts."""
    fy: dict[str, Any] = {}
    st: dict[str, Any] = {}
    stock_label = (
        "stock Prefect: `prefect server start` (SQLite) + `prefect worker start --type process`"
    )
    for res in (cold, mem):
        if res is not None:
            res.reference = stock_label
            res.details["flowyard"], res.details["stock"] = fy, st
    if cold:
        cold.candidate = "`flowyard up` in a subprocess (all services ready, worker registered)"
    if mem:
        after = "a warm restart" if cold else "a fresh start"
        mem.candidate = f"Flowyard platform, idle {env.plan.idle_settle_s:g} s after {after}"
    try:
        _flowyard(env, timed=cold is not None, memory=mem is not None, out=fy)
        _stock(env, timed=cold is not None, memory=mem is not None, out=st)
    finally:
        if cold:
            _cold_figures(cold, fy, st)
            cold.notes.insert(0, "services: " + ", ".join(fy.get("services", [])))
        if mem:
            _memory_figures(mem, fy, st)
