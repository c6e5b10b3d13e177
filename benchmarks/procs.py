"""CPU and memory of process trees, and stopping the processes we started.

A process worker's flow-run children exit when their run ends, so their CPU is gone from
any live-process sum. The kernel adds a reaped child's CPU to its parent's cutime/cstime,
so (own + children's) time of the root, plus that of every descendant still alive, is the
whole tree's CPU since the root started, with each second counted once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from flowyard.config.context import Context
from flowyard.platform.supervisor import Supervisor

# Variables of the shell running the benchmark that must not reach what it starts.
_CLIENT_PREFIXES = ("PREFECT_", "AWS_", "MLFLOW_", "FLOWYARD_")


def clean_env() -> dict[str, str]:
    """This process's environment without Prefect/AWS/MLflow/Flowyard client settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_PREFIXES)}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [root]


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def service_cpu_seconds(ctx: Context) -> dict[str, float]:
    """CPU-seconds so far of each platform service's process tree (supervisord's programs;
    a service restarted meanwhile would read low, which no benchmark here does)."""
    return {
        info["name"]: tree_cpu_seconds(info["pid"])
        for info in Supervisor(ctx.paths).all_info()
        if info.get("pid")
    }


def tree_pss_bytes(pid: int) -> tuple[int, int]:
    """(PSS of the tree in bytes, number of processes counted)."""
    total = counted = 0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
            counted += 1
    return total, counted


def descendants(pid: int) -> set[int]:
    return {p.pid for p in _tree(pid)[1:]}


def stop_tree(pid: int, sig: int = signal.SIGINT, grace: float = 20) -> None:
    """Ask `pid` to stop, then kill it, its process group and any descendant left over.

    Descendants are collected first: Prefect may start flow runs in their own session,
    out of reach of a group kill, and once their parent dies they are re-parented.
    """
    family = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout=grace)
    # Our processes are started as session leaders, so their pid is their group's id: this
    # kills the root if it ignored `sig`, and any group member it left behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(child).kill()
    deadline = time.monotonic() + 10
    for child in family | {pid}:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(child).wait(timeout=max(0.1, deadline - time.monotonic()))
