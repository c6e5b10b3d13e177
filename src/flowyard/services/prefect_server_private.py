"""Every private Prefect server name the background-services process relies on, and its
patches of Prefect: the API-outage guard of proactive automations (`outage_guard`), and a
call when Prefect starts its services (the process's readiness for `flowyard up`).

Prefect evaluates an automation's trigger in `prefect.server.events.triggers.evaluate`, for
one "bucket" (a trigger's open window for one resource: for the zombie automation, one flow
run's heartbeat window), both when an event arrives (`reactive_evaluation`) and on a timer
(`proactive_evaluation`); both look `evaluate` up in that module's globals at each call, so
replacing the module attribute reaches both. A proactive trigger fires when its window has
closed with too few events; `start_new_bucket` replaces a window (it is what Prefect itself
calls when it rolls a heartbeat window over). `prefect server services start` runs
`_run_all_services`, which connects the docket to Redis and then calls
`Service.run_services`, which creates each enabled service's task. None of this is public API.

Written against Prefect 3.9.1. On a Prefect upgrade, run
`pytest tests/unit/test_prefect_server_private.py`: it checks every name below, the
parameters we pass and the attributes we read, and that both evaluation paths still call
`evaluate` through the module; then `tests/integration/test_faults_more.py
::test_api_outage_longer_than_the_zombie_threshold`, which checks the behaviour.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from prefect.server.events import triggers
from prefect.server.events.schemas.automations import EventTrigger, Posture
from prefect.server.services.base import Service as PrefectService

__all__ = [
    "Evaluate",
    "EventTrigger",
    "Posture",
    "PrefectService",
    "extend_bucket",
    "on_services_starting",
    "patch_evaluate",
    "triggers",
]

# triggers.evaluate(session, trigger, bucket, now, triggering_event) -> bucket | None
Evaluate = Callable[[Any, EventTrigger, Any, dt.datetime, Any], Awaitable[Any]]
# The module, untyped: Prefect's own annotations of what we call and replace are narrower
# (its ORM and datetime types) than what this module passes through.
_triggers: Any = triggers


async def extend_bucket(session: Any, trigger: EventTrigger, bucket: Any, end: dt.datetime) -> Any:
    """Replace a closed window by a fresh one from its end to `end`, with no event counted
    yet (only the `expect` events Prefect holds for that span, as when it rolls a window),
    keeping its last event as the firing context; returns the new bucket."""
    return await _triggers.start_new_bucket(
        session,
        trigger,
        bucketing_key=tuple(bucket.bucketing_key),
        start=bucket.end,
        end=end,
        count=0,
        last_event=bucket.last_event,
    )


def patch_evaluate(wrap: Callable[[Evaluate], Evaluate]) -> None:
    """Replace Prefect's trigger evaluation by `wrap(original)`; once per process."""
    original: Evaluate = _triggers.evaluate
    if getattr(original, "__flowyard_wrapped__", False):
        raise RuntimeError("Prefect's trigger evaluation is already patched")
    wrapped = wrap(original)
    wrapped.__flowyard_wrapped__ = True  # type: ignore[attr-defined]
    _triggers.evaluate = wrapped


def on_services_starting(callback: Callable[[], None]) -> None:
    """Call `callback` when Prefect starts its services: its imports done, the docket
    connected to Redis, just before each enabled service's task is created; once per process."""
    original = PrefectService.run_services
    if getattr(original, "__flowyard_wrapped__", False):
        raise RuntimeError("Prefect's run_services is already patched")

    async def run_services(cls: type[PrefectService]) -> None:
        callback()
        await original()

    run_services.__flowyard_wrapped__ = True  # type: ignore[attr-defined]
    PrefectService.run_services = classmethod(run_services)  # type: ignore[assignment, method-assign]
