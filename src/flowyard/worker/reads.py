"""Short-lived caches for the two reads Prefect's worker repeats for every run.

`BaseWorker._submit_run` reads the run's deployment (to check it still exists), then
`resolve_for_flow_run` reads it again a few milliseconds later, and reads the flow too.
Caching the deployment for a couple of seconds turns the second read into a hit while the
first stays fresh (a deleted deployment is still noticed); a flow's name and labels are
all that is used, so it can be cached longer. Fewer API round trips before the fork, and
less work for the API server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient

from flowyard.worker.prefect_private import replace_client_reads

T = TypeVar("T")


def ttl_cached(
    read: Callable[[UUID], Awaitable[T]], ttl: float, max_entries: int = 256
) -> Callable[[UUID], Awaitable[T]]:
    entries: dict[UUID, tuple[float, T]] = {}

    async def cached(object_id: UUID) -> T:
        now = time.monotonic()
        hit = entries.get(object_id)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
        value = await read(object_id)
        if len(entries) >= max_entries:
            entries.clear()
        entries[object_id] = (now, value)
        return value

    return cached


def cache_worker_reads(client: PrefectClient) -> None:
    """Patch this worker's own client (runs and other processes are unaffected)."""
    replace_client_reads(
        client,
        read_deployment=ttl_cached(client.read_deployment, ttl=2.0),
        read_flow=ttl_cached(client.read_flow, ttl=60.0),
    )
