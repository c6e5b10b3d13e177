"""Idle memory: PSS of each platform service's process tree, and in total.

PSS (proportional set size) divides each shared page among the processes sharing it, so
per-service figures add up to what the platform really holds (RSS would count Python's
shared libraries and PostgreSQL's shared buffers once per process).
"""

from __future__ import annotations

import contextlib

import psutil

from benchmarks import procs
from flowyard.config.context import Context
from flowyard.platform.supervisor import Supervisor

MiB = 2**20


def platform_pss(ctx: Context) -> dict[str, dict[str, int]]:
    """{service: {"pss": bytes, "processes": n}}, plus supervisord itself."""
    sup = Supervisor(ctx.paths)
    out: dict[str, dict[str, int]] = {}
    for info in sup.all_info():
        if info["statename"] == "RUNNING" and info["pid"]:
            pss, count = procs.tree_pss_bytes(info["pid"])
            out[info["name"]] = {"pss": pss, "processes": count}
    pid = sup.pid()
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            out["supervisord"] = {"pss": psutil.Process(pid).memory_full_info().pss, "processes": 1}
    return out
