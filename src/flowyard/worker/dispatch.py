"""The worker's poll loop, woken early instead of only sleeping out its interval.

Stock workers ask the API for scheduled runs every `PREFECT_WORKER_QUERY_SECONDS` (10 s): a
triggered run waits half that on average, and a run that finds every slot taken waits for
the next poll after one frees. Here the same query also runs as soon as something makes it
worth asking: a scheduled-run event for the pool, a run of ours finishing (a slot is free),
or the event stream (re)connecting. Bursts are coalesced: one query
per `min_gap` at most, however many events arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


class Dispatcher:
    def __init__(
        self,
        poll: Callable[[], Awaitable[object]],
        interval: float,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        min_gap: float = 0.05,
    ) -> None:
        self._poll = poll
        self._interval = interval
        self._logger = logger
        self._min_gap = min_gap
        self._wake = anyio.Event()
        self.polls = 0
        self.wakeups = 0

    def wake(self) -> None:
        """Poll as soon as possible (call from the event loop's thread)."""
        self.wakeups += 1
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        self._wake.set()  # first poll at once, as the stock loop does
        while True:
            with anyio.move_on_after(self._interval):
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
                await anyio.sleep(backoff)
            await anyio.sleep(self._min_gap)
