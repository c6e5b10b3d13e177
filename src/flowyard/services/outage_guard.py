"""Prefect's background services (`prefect server services start`), with proactive
automations held while the API webserver is unreachable.

Differs from stock Prefect: a proactive trigger ("fewer than N events within T", such as the
zombie-run automation: no heartbeat for a flow run within the threshold -> Crashed) fires
when a window closes short of events. The background services evaluate it and reach
PostgreSQL in-process, so they keep evaluating while the API webserver is down; but every
event (a run's heartbeat) reaches Prefect through that webserver, so during an outage longer
than the threshold every window closes empty and every healthy run is marked Crashed.

Here a window that closes while the API is unreachable, or within one window length (the
threshold) after it is reachable again, is replaced by a fresh one ending one window length
after the API was last seen unreachable. A healthy run's heartbeats resume within that grace
and roll its window over as usual; a run whose process died still sends none, and is
Crashed at most one threshold after the API is back. Reachability is the API's own health
endpoint (not through the proxy), probed every `PROBE_SECONDS` from a thread; an unknown or
stale answer counts as unreachable. The patch itself is in `prefect_server_private`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from flowyard.files import write_private

PROBE_SECONDS = 2.0
PROBE_TIMEOUT = 3.0
# A last probe older than this (a stuck probe thread) is as good as an unreachable API.
STALE_SECONDS = 15.0


class ApiWatch:
    """What the services process last learnt of the API webserver's reachability."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_probe: float | None = None
        self.last_down: float | None = None
        self.reachable: bool | None = None

    def observe(self, ok: bool, at: float) -> bool:
        """Record one probe's answer at wall time `at`; True when reachability changed."""
        with self._lock:
            changed = ok != self.reachable
            self.last_probe = at
            self.reachable = ok
            if not ok:
                self.last_down = at
            return changed

    def held_until(self, grace: float, now: float) -> float | None:
        """Wall time until which a window closing at `now` proves nothing, because events
        could not reach Prefect: `grace` seconds after the API was last seen unreachable
        (or now, if nothing recent is known); None when the API has been reachable for at
        least `grace` seconds."""
        with self._lock:
            if self.last_probe is None or now - self.last_probe > STALE_SECONDS:
                return now + grace
            if self.last_down is None:
                return None
            until = self.last_down + grace
            return until if until > now else None


def guard(watch: ApiWatch, log: Any) -> Callable[[Any], Any]:
    """The wrapper `prefect_server_private.patch_evaluate` installs around Prefect's
    evaluation of one trigger window (both the timer's and an arriving event's)."""
    from flowyard.services.prefect_server_private import Posture, extend_bucket

    def wrap(original: Any) -> Any:
        async def evaluate(
            session: Any, trigger: Any, bucket: Any, now: dt.datetime, triggering_event: Any
        ) -> Any:
            # What Prefect would fire on: a proactive window closed short of its events.
            if (
                trigger.posture == Posture.Proactive
                and bucket.end <= now
                and trigger.meets_threshold(bucket.count)
            ):
                until = watch.held_until(trigger.within.total_seconds(), time.time())
                end = dt.datetime.fromtimestamp(until, dt.UTC) if until is not None else None
                if end is not None and end > now:
                    # A warning: the run would have been Crashed (the default level shows it).
                    log.warning(
                        "Automation %r: window for %r closed while the API was unreachable "
                        "or just back; held open until %s",
                        trigger.automation.name,
                        tuple(bucket.bucketing_key),
                        end.isoformat(timespec="seconds"),
                    )
                    bucket = await extend_bucket(session, trigger, bucket, end)
            return await original(session, trigger, bucket, now, triggering_event)

        return evaluate

    return wrap


def probe(url: str, uds: str | None) -> Callable[[], bool]:
    transport = httpx.HTTPTransport(uds=uds) if uds else None
    client = httpx.Client(transport=transport, timeout=PROBE_TIMEOUT)

    def check() -> bool:
        try:
            return client.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def watch_forever(watch: ApiWatch, check: Callable[[], bool], url: str, log: Any) -> None:
    while True:
        try:
            ok = check()
            if watch.observe(ok, time.time()):
                if ok:
                    log.warning("Prefect API reachable at %s", url)
                else:
                    log.warning(
                        "Prefect API unreachable at %s: proactive automations (the zombie-run "
                        "automation) hold their windows until one window after it is back",
                        url,
                    )
        except Exception:  # never let the watch die: a stale watch holds every window
            log.exception("Prefect API probe failed")
        time.sleep(PROBE_SECONDS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-health", required=True, help="the API's health URL")
    parser.add_argument("--uds", help="the API's Unix socket, when it listens on one")
    parser.add_argument(
        "--ready-file", help="written (this process's pid) when Prefect starts its services"
    )
    args = parser.parse_args(argv)

    from prefect.logging import get_logger

    from flowyard.services.prefect_server_private import on_services_starting, patch_evaluate

    log = get_logger("flowyard.outage_guard")
    watch = ApiWatch()
    check = probe(args.api_health, args.uds)
    # Known before the first evaluation.
    watch.observe(check(), time.time())
    if not watch.reachable:
        log.warning("Prefect API unreachable at %s: proactive automations held", args.api_health)
    threading.Thread(
        target=watch_forever, args=(watch, check, args.api_health, log), daemon=True
    ).start()
    patch_evaluate(guard(watch, log))
    if args.ready_file:
        ready_file = Path(args.ready_file)
        on_services_starting(lambda: write_private(ready_file, str(os.getpid())))

    # Prefect's own console script, as `prefect server services start` runs it.
    from prefect.cli import app

    sys.argv = ["prefect", "server", "services", "start"]
    app()


if __name__ == "__main__":
    main()
