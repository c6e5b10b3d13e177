"""Bounded phases: a soft deadline loops check, and a hard timeout that interrupts anything.

Loops stop early at the soft deadline and report what they have (status "partial"). The
hard timeout (SIGALRM, main thread) is the backstop for a call that hangs; it raises a
BaseException so no `except Exception` inside Prefect or boto3 can swallow it, and every
`with` block on the way out still stops what it started.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class PhaseTimeout(BaseException):
    pass


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.remaining() <= 0


@contextmanager
def hard_timeout(seconds: float, what: str) -> Iterator[None]:
    def fire(signum: int, frame: FrameType | None) -> None:
        raise PhaseTimeout(f"{what} exceeded its hard limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def wait_until(check: object, timeout: float, interval: float = 0.25) -> bool:
    """Poll a zero-argument callable until it returns truthy or the timeout passes."""
    assert callable(check)
    end = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(interval)
