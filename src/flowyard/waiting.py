"""One polling loop for "wait until this is true or the time is up"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.25) -> T | None:
    """Call `condition` until it returns something truthy (returned) or `timeout` seconds
    pass (None). It is called at least once, and once more at the deadline, so a slow
    check is never cut short by the clock alone."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(interval, remaining))
