"""`up`'s dependency graph (`platform.startup`): what waits for what, and how a failure
stops the rest. Real threads and real timings; the services are plain callables."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.platform.registry import build_services
from flowyard.platform.startup import Graph, check_order
from flowyard.services.base import Service


def svc(name: str, *after: str, prepare_after: tuple[str, ...] | None = None) -> Service:
    return Service(
        name=name, command=["true"], description=name, after=after, prepare_after=prepare_after
    )


def test_the_catalog_lists_every_service_after_what_it_needs(tmp_path: Path) -> None:
    ctx = Context(config=load_config(tmp_path, require_file=False), secrets=Secrets.generate())
    services = build_services(ctx)
    check_order(services)
    # The graph is not a chain: the point of it.
    assert [s.name for s in services if not s.after][:3] == ["postgres", "redis", "seaweedfs"]


def test_check_order_refuses_a_dependency_listed_later() -> None:
    with pytest.raises(ValueError, match="a depends on \\['b'\\]"):
        check_order([svc("a", "b"), svc("b")])


def test_independent_services_start_together_and_dependents_wait() -> None:
    started: dict[str, float] = {}
    finished: dict[str, float] = {}

    def step(service: Service) -> None:
        graph.wait_for(service.after)
        started[service.name] = time.monotonic()
        time.sleep(0.3)
        finished[service.name] = time.monotonic()

    graph = Graph([svc("db"), svc("cache"), svc("api", "db", "cache")], done=())
    t0 = time.monotonic()
    graph.run(step)
    # db and cache overlap; api starts only after both finished.
    assert abs(started["db"] - started["cache"]) < 0.2
    assert started["api"] >= max(finished["db"], finished["cache"])
    assert time.monotonic() - t0 < 0.9  # 2 x 0.3 s, not 3 x 0.3 s


def test_done_and_absent_dependencies_are_not_waited_for() -> None:
    ran = []
    graph = Graph([svc("worker", "caddy", "mlflow")], done={"caddy"})  # mlflow: disabled

    def step(service: Service) -> None:
        graph.wait_for(service.after)
        ran.append(service.name)

    graph.run(step)
    assert ran == ["worker"]


def test_the_first_failure_is_raised_and_waiting_services_give_up() -> None:
    waited = threading.Event()

    def step(service: Service) -> None:
        if service.name == "db":
            time.sleep(0.2)
            raise RuntimeError("db did not start")
        graph.mark_started(service.name)
        waited.set()
        graph.wait_for(service.after)  # raises Aborted once db has failed
        raise AssertionError("api started without its database")

    graph = Graph([svc("db"), svc("api", "db")], done=())
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="db did not start"):
        graph.run(step)
    assert waited.is_set() and time.monotonic() - t0 < 2
    assert graph.started == ["api"]


class StatesOf:
    """supervisord's view of one program, a state per call (the last one repeats)."""

    def __init__(self, *states: str) -> None:
        self.states = list(states)
        self.calls = 0

    def info(self, name: str) -> dict[str, str]:
        self.calls += 1
        return {"statename": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


def test_a_probe_is_trusted_before_supervisord_counts_the_service_started(
    tmp_path: Path,
) -> None:
    """`up` starts programs without waiting out supervisord's start_secs: a service whose
    probe answers is ready while supervisord still says STARTING; one with no probe is
    ready only at RUNNING; one that exits is a failure, not a wait."""
    from flowyard.errors import FlowyardError
    from flowyard.platform.lifecycle import _wait_ready

    ctx = Context(config=load_config(tmp_path, require_file=False), secrets=Secrets.generate())
    probed = Service(name="p", command=["true"], description="p", ready=lambda: True)
    sup = StatesOf("STARTING")
    _wait_ready(sup, probed, ctx, lambda: None)  # type: ignore[arg-type]
    assert sup.calls == 1

    no_probe = Service(name="n", command=["true"], description="n")
    sup = StatesOf("STARTING", "STARTING", "RUNNING")
    _wait_ready(sup, no_probe, ctx, lambda: None)  # type: ignore[arg-type]
    assert sup.calls == 3

    silent = Service(name="s", command=["true"], description="s", ready=lambda: False)
    with pytest.raises(FlowyardError, match=r"exited \(BACKOFF\)"):
        _wait_ready(StatesOf("STARTING", "BACKOFF"), silent, ctx, lambda: None)  # type: ignore[arg-type]
