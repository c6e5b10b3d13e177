"""Starting the services as a dependency graph, not one after another.

Each `Service` names what must be ready before its process starts (`after`) and before its
prepare step runs (`prepare_after`, the same unless it says otherwise). One thread per
service waits for its own dependencies only: PostgreSQL, Redis and SeaweedFS start
together, MLflow migrates and starts while Prefect's API does, and the worker's preflight
check (a Python start as the flows user) runs while everything else starts. Threads, not
processes: every step waits on a subprocess, a socket or supervisord, so the GIL is not what
limits it.

The first failure stops the rest: threads still waiting give up at once, the error raised is
the first one (naming its service and the end of its log), and `started` tells the caller
what to stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from flowyard.services.base import Service


class Aborted(Exception):
    """Another service failed: this one stopped waiting."""


class Graph:
    """One `up`: the services to start, the ones already done, and the first failure."""

    def __init__(self, targets: Sequence[Service], done: Collection[str]) -> None:
        known = {s.name for s in targets}
        unknown = {d for s in targets for d in _deps(s) if d not in known and d not in done}
        # A dependency that is neither started here nor running: it is not part of this
        # `up` (`only=`), so nothing here waits for it.
        self.ready = {name: threading.Event() for name in known | unknown | set(done)}
        for name in unknown | set(done):
            self.ready[name].set()
        self.targets = list(targets)
        self.abort = threading.Event()
        self.started: list[str] = []
        self._lock = threading.Lock()

    def wait_for(self, names: Collection[str]) -> None:
        for name in names:
            while not self.ready[name].wait(0.1):
                if self.abort.is_set():
                    raise Aborted
        if self.abort.is_set():
            raise Aborted

    def check(self) -> None:
        """For long waits inside a step (readiness): give up once another has failed."""
        if self.abort.is_set():
            raise Aborted

    def mark_started(self, name: str) -> None:
        with self._lock:
            self.started.append(name)

    def run(self, step: Callable[[Service], None]) -> None:
        """`step(service)` for every target, each once its dependencies are ready; raises
        the first failure after every thread has stopped."""
        errors: list[BaseException] = []

        def one(service: Service) -> None:
            try:
                step(service)
                self.ready[service.name].set()
            except BaseException as exc:
                with self._lock:
                    if not isinstance(exc, Aborted):
                        errors.append(exc)
                self.abort.set()

        if not self.targets:
            return
        with ThreadPoolExecutor(len(self.targets), thread_name_prefix="up") as pool:
            futures = [pool.submit(one, s) for s in self.targets]
            try:
                wait(futures)
            except BaseException:
                # Ctrl-C: the threads finish the step they are in (each is bounded), then stop.
                self.abort.set()
                raise
        if errors:
            raise errors[0]


def _deps(service: Service) -> set[str]:
    return set(service.after) | set(service.prepare_after or ())


def check_order(services: Sequence[Service]) -> None:
    """Every dependency names a service listed before it: the catalog's order stays a valid
    start order (compose and `down`, which stops in reverse, rely on it)."""
    seen: set[str] = set()
    names = {s.name for s in services}
    for service in services:
        late = {d for d in _deps(service) if d in names and d not in seen}
        if late:
            raise ValueError(f"{service.name} depends on {sorted(late)}, listed after it")
        seen.add(service.name)
