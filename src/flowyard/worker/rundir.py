"""The worker's private scratch directory: zygote sockets and run manifests.

One per worker process, `$TMPDIR/flowyard-worker-<pid>` (Unix socket paths must stay short),
0700. A worker killed with SIGKILL cannot remove its own, so each worker removes those of
dead workers when it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "flowyard-worker-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(base: Path) -> None:
    for path in base.glob(PREFIX + "*"):
        pid = path.name.removeprefix(PREFIX)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def create() -> Path:
    base = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        remove_stale(base)
    path = base / f"{PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path
