"""One state-changing `flowyard` command at a time per FLOWYARD_HOME.

`up`, `down`, `apply`, `deploy`, `backup`, `restore`, `upgrade` and `init` take an exclusive
`flock` on `$FLOWYARD_HOME/.flowyard.lock` for as long as they run. The kernel drops the lock
when the process ends, however it ends, so a crashed command never leaves a stale lock. The
holder writes its PID and command into the file so a second command can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from flowyard.errors import FlowyardError

LOCK_NAME = ".flowyard.lock"


def lock_path(home: Path) -> Path:
    return home / LOCK_NAME


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another flowyard command"
    pid, _, command = text.partition(" ")
    return f"`flowyard {command}` (pid {pid})" if pid.isdigit() else "another flowyard command"


@contextlib.contextmanager
def home_lock(home: Path, command: str) -> Iterator[None]:
    """Hold the home's lock while the block runs; refuse at once when another command has it."""
    path = lock_path(home)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise FlowyardError(
            f"Cannot open the lock file {path}: {exc.strerror}.",
            fix="Check that FLOWYARD_HOME exists and is writable by this user.",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            raise FlowyardError(
                f"{home} is busy: {holder} is changing it, and two commands at once could "
                "leave it half-changed.",
                fix=f"Wait for {holder} to finish, then run `flowyard {command}` again "
                "(if it hangs, stop that PID).",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        try:
            yield
        finally:
            # Clear the holder before the kernel releases the lock with the descriptor.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
