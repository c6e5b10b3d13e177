"""Learn about new scheduled runs the moment the API records them, from Prefect's event stream.

The API publishes `prefect.flow-run.Scheduled` (and `Late`, `AwaitingRetry`) with the work
pool among the related resources; the webserver's event distributor forwards them over the
`/events/out` websocket the proxy already serves. An event only wakes the dispatcher: which
runs to take is still decided by the pool's ordinary scheduled-runs query, so queue
priorities and pool/queue concurrency limits stay the server's business. If the stream is
down, the dispatcher's polling carries on alone, and each reconnect triggers a poll for what
was missed. (The event does not carry the run's scheduled time: a run scheduled for later
is picked up by the regular poll, `prefetch_seconds` ahead, as with the stock worker.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from prefect.events import Event
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

SCHEDULED_EVENTS = [
    "prefect.flow-run.Scheduled",
    "prefect.flow-run.Late",
    "prefect.flow-run.AwaitingRetry",
]


async def listen_for_scheduled_runs(
    work_pool_id: str,
    on_event: Callable[[Event | None], None],
    logger: logging.Logger | logging.LoggerAdapter[Any],
    max_backoff: float = 30,
) -> None:
    """Call `on_event(event)` per scheduled run in the pool, `on_event(None)` on (re)connect.

    Runs until cancelled; connection failures are retried with backoff, never raised.
    """
    event_filter = EventFilter(
        event=EventNameFilter(name=SCHEDULED_EVENTS),
        any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{work_pool_id}"]),
    )
    backoff = 1.0
    while True:
        try:
            # reconnection_attempts=0: our own loop reconnects, so each reconnect is seen.
            async with get_events_subscriber(
                filter=event_filter, reconnection_attempts=0
            ) as subscriber:
                logger.debug("Listening for scheduled flow runs on the event stream")
                on_event(None)
                backoff = 1.0
                async for event in subscriber:
                    on_event(event)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            logger.debug("Event stream unavailable (%s); polling only until it returns", exc)
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
