"""The private Prefect server names the background-services process relies on still exist,
as `flowyard.services.outage_guard` uses them (through `prefect_server_private`, the one place
it takes them from), and the guard's own decisions."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from flowyard.services import outage_guard
from flowyard.services import prefect_server_private as p
from flowyard.services.outage_guard import STALE_SECONDS, ApiWatch


def _parameters(obj: Any) -> list[str]:
    return list(inspect.signature(obj).parameters)


def test_evaluate_is_called_as_the_guard_calls_it() -> None:
    # The guard passes these five positionally, in this order.
    assert _parameters(p.triggers.evaluate)[:5] == [
        "session",
        "trigger",
        "bucket",
        "now",
        "triggering_event",
    ], "Prefect changed triggers.evaluate's parameters"


def test_both_evaluation_paths_look_evaluate_up_in_the_module() -> None:
    """Replacing the module attribute reaches them only while they call it by global name."""
    for path in (p.triggers.proactive_evaluation, p.triggers.reactive_evaluation):
        assert "evaluate" in path.__code__.co_names, (
            f"Prefect changed triggers.{path.__name__}: it no longer calls evaluate"
        )


def test_start_new_bucket_takes_what_extend_bucket_passes() -> None:
    missing = {"session", "trigger", "bucketing_key", "start", "end", "count", "last_event"} - set(
        _parameters(p.triggers.start_new_bucket)
    )
    assert not missing, f"Prefect changed triggers.start_new_bucket: no {sorted(missing)}"


def test_the_bucket_and_trigger_have_what_the_guard_reads() -> None:
    from prefect.server.database.orm_models import AutomationBucket

    for column in ("bucketing_key", "start", "end", "count", "last_event"):
        assert hasattr(AutomationBucket, column), f"Prefect changed AutomationBucket: {column}"
    for field in ("posture", "within", "threshold"):
        assert field in p.EventTrigger.model_fields, f"Prefect changed EventTrigger: {field}"
    trigger = p.EventTrigger(
        posture=p.Posture.Proactive, threshold=1, within=dt.timedelta(seconds=120)
    )
    # "fire" for a proactive window means: fewer events than the threshold.
    assert trigger.meets_threshold(0) and not trigger.meets_threshold(1)


def test_patching_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p.triggers, "evaluate", p.triggers.evaluate)  # restored after

    def wrap(original: p.Evaluate) -> p.Evaluate:
        async def evaluate(*args: Any) -> Any:
            return await original(*args)

        return evaluate

    p.patch_evaluate(wrap)
    assert p.triggers.evaluate is not p.triggers.start_new_bucket
    with pytest.raises(RuntimeError):
        p.patch_evaluate(wrap)


def test_the_watch_holds_windows_during_an_outage_and_one_grace_after() -> None:
    watch = ApiWatch()
    assert watch.held_until(120, 1000.0) == 1120.0  # nothing known yet: held
    watch.observe(True, 1000.0)
    assert watch.held_until(120, 1001.0) is None  # reachable, never down
    watch.observe(False, 1010.0)
    assert watch.held_until(120, 1011.0) == 1130.0  # down
    watch.observe(True, 1100.0)
    assert watch.held_until(120, 1101.0) == 1130.0  # back, within the grace
    watch.observe(True, 1129.0)
    assert watch.held_until(120, 1130.0) is None  # a full window after it was last down
    # A stuck probe (no answer for long) counts as unreachable.
    assert watch.held_until(120, 1100.0 + STALE_SECONDS + 1) is not None


def _window(end: dt.datetime, count: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        bucketing_key=["prefect.flow-run.x"], end=end, count=count, last_event=None
    )


def test_the_guard_extends_only_a_proactive_window_that_would_fire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which windows the guard replaces (the replacement itself is Prefect's start_new_bucket,
    exercised against PostgreSQL by the API-outage integration test)."""
    extended: list[dt.datetime] = []

    async def extend(session: Any, trigger: Any, bucket: Any, end: dt.datetime) -> Any:
        extended.append(end)
        return _window(end)

    from prefect.server.events.actions import DoNothing
    from prefect.server.events.schemas.automations import Automation

    monkeypatch.setattr(p, "extend_bucket", extend)
    seen: list[Any] = []

    async def original(session: Any, trigger: Any, bucket: Any, now: Any, event: Any) -> Any:
        seen.append(bucket)
        return bucket

    watch = ApiWatch()
    log = SimpleNamespace(warning=lambda *a: None)
    evaluate = outage_guard.guard(watch, log)(original)
    now = dt.datetime.now(dt.UTC)
    closed = _window(now - dt.timedelta(seconds=1))
    proactive = p.EventTrigger(
        posture=p.Posture.Proactive, threshold=1, within=dt.timedelta(seconds=120)
    )
    owner = Automation(name="zombies", trigger=proactive, actions=[DoNothing()])  # weakly held
    reactive = p.EventTrigger(posture=p.Posture.Reactive, threshold=1)

    def run(trigger: Any, bucket: Any) -> Any:
        return asyncio.run(evaluate(None, trigger, bucket, now, None))

    watch.observe(False, now.timestamp())  # the API is down
    assert run(proactive, closed).end > now and len(extended) == 1
    assert extended[0] == dt.datetime.fromtimestamp(now.timestamp() + 120, dt.UTC)
    assert run(proactive, _window(now + dt.timedelta(seconds=5))).end < extended[0]  # still open
    assert run(proactive, _window(closed.end, count=1)) is not None and len(extended) == 1
    run(reactive, closed)
    assert len(extended) == 1  # neither a met expectation nor a reactive trigger
    watch.observe(True, now.timestamp())
    watch.last_down = now.timestamp() - 121  # back for longer than a window
    assert run(proactive, closed) is closed and len(extended) == 1  # Prefect fires as usual
    assert owner.trigger is proactive


def test_prefect_redis_reads_its_settings_once_not_for_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PrefectHQ/prefect#22951: prefect-redis built its messaging settings for every event it
    published (about 80 % of the publish path's CPU). The fix (PR #22950, cache the URL) is
    in the prefect-redis Flowyard pins (0.3.0), so Flowyard carries no patch of its own; this
    fails if a version without the fix is ever pinned. The issue's own reproduction."""
    import prefect_redis.client as client

    built = 0
    real = client.RedisMessagingSettings

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal built
            built += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(client, "RedisMessagingSettings", Counting)
    asyncio.run(client.clear_cached_clients())  # forget what other tests cached
    try:
        for _ in range(100):
            client.cluster_key_prefix("message:events")
    finally:
        asyncio.run(client.clear_cached_clients())
    assert built <= 1, f"prefect-redis built its settings {built} times for 100 events"


def test_services_start_through_run_services_by_name() -> None:
    """The readiness mark is written from `Service.run_services`, which Prefect's
    `services start` reaches through `_run_all_services`."""
    from prefect.cli import _server_utils

    assert "run_services" in _server_utils._run_all_services.__code__.co_names, (
        "Prefect changed _run_all_services: it no longer calls Service.run_services"
    )


def test_the_start_callback_runs_before_prefects_services_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def prefects(cls: Any) -> None:
        calls.append(f"run_services of {cls.__name__}")

    monkeypatch.setattr(p.PrefectService, "run_services", classmethod(prefects))
    p.on_services_starting(lambda: calls.append("callback"))
    asyncio.run(p.PrefectService.run_services())
    assert calls == ["callback", "run_services of Service"]
    with pytest.raises(RuntimeError, match="already patched"):
        p.on_services_starting(lambda: None)
