"""The worker's polls, run as soon as something makes one worth it, one at a time.

Stock workers ask the API for scheduled runs every `PREFECT_WORKER_QUERY_SECONDS` (10 s): a
triggered run waits half that on average, and a run that finds every slot taken waits for
the next poll after one frees. Here the same query runs whenever the dispatcher is woken:
by `BaseWorker`'s own poll loop (still every `PREFECT_WORKER_QUERY_SECONDS`), a scheduled-run
event for the pool, a run of ours finishing (a slot is free), or the event stream
(re)connecting. Polls never overlap, and bursts are coalesced: one query per `min_gap` at
most, however many wake-ups arrive.
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
        logger: logging.Logger | logging.LoggerAdapter[Any],
        max_backoff: float,
        min_gap: float = 0.05,
    ) -> None:
        self._poll = poll
        self._max_backoff = max_backoff
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
        while True:
            # No timer of our own: BaseWorker's poll loop wakes us every interval (and at once
            # when the worker starts).
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._poll()
                self.polls += 1
                failures = 0
            except Exception as exc:
                failures += 1
                backoff = min(self._max_backoff, 2 ** min(failures, 6))
                self._logger.warning("Polling for flow runs failed (%s); retrying", exc)
                await anyio.sleep(backoff)
            await anyio.sleep(self._min_gap)
