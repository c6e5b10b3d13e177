"""The worker's poll loop, woken early instead of only sleeping out its interval.

Stock workers ask the API for scheduled runs every `PREFECT_WORKER_QUERY_SECONDS` (10 s): a
triggered run waits half that on average, and a run that finds every slot taken waits for
the next poll after one frees. Here the same query also runs as soon as something makes it
worth asking: a scheduled-run event for the pool, a run of ours finishing (a slot is free),
the event stream (re)connecting, or a known run coming due. Bursts are coalesced: one query
per `min_gap` at most, however many events arrive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio


class Dispatcher:
    def __init__(
        self,
        poll: Callable[[], Awaitable[object]],
        interval: float,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        min_gap: float = 0.05,
        prefetch_seconds: float = 10,
    ) -> None:
        self._poll = poll
        self._interval = interval
        self._logger = logger
        self._min_gap = min_gap
        self._prefetch = prefetch_seconds
        self._wake = anyio.Event()
        self._due: list[float] = []
        self.polls = 0
        self.wakeups = 0

    def wake(self) -> None:
        """Poll as soon as possible (call from the event loop's thread)."""
        self.wakeups += 1
        self._wake.set()

    def wake_at(self, when: datetime) -> None:
        """Poll when a run scheduled for `when` enters the prefetch window."""
        delay = (when - datetime.now(UTC)).total_seconds() - self._prefetch
        if delay <= 0:
            self.wake()
        else:
            self._due.append(anyio.current_time() + delay)

    def _next_timeout(self) -> float:
        now = anyio.current_time()
        self._due = [t for t in self._due if t > now]
        return min([self._interval, *(t - now for t in self._due)])

    async def run(self) -> None:
        failures = 0
        while True:
            with anyio.move_on_after(max(self._next_timeout(), 0)):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._poll()
                self.polls += 1
                failures = 0
            except Exception as exc:
                failures += 1
                backoff = min(self._interval * 4, 2 ** min(failures, 6))
                self._logger.warning("Polling for flow runs failed (%s); retrying", exc)
                await anyio.sleep(backoff if math.isfinite(backoff) else self._interval)
            await anyio.sleep(self._min_gap)
