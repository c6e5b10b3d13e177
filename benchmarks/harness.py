"""What every benchmark gets: the platform, the plan, a scratch directory, the worker kinds."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.guard import Deadline
from benchmarks.plan import Plan
from benchmarks.workers import WorkerKind
from flowyard.config.context import Context

_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the final table."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class BenchEnv:
    plan: Plan
    workdir: Path
    candidate: WorkerKind
    reference: WorkerKind
    # The shared platform; None for benchmarks that start their own (coldstart, memory).
    ctx: Context | None = None
    selected: tuple[str, ...] = ()
    rng: random.Random = field(default_factory=lambda: random.Random(6))
    deadline: Deadline = field(default_factory=lambda: Deadline(3600))

    @property
    def platform(self) -> Context:
        assert self.ctx is not None, "this benchmark needs the shared platform"
        return self.ctx
