"""Owner-only files: the one way Flowyard writes anything that may hold a secret.

Every rendered config that carries a password, every join file and every secrets file goes
through `write_private`, so none is ever readable by another local user, not even for the
instant between create and chmod, and an existing file's wider mode is never kept.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` as mode 0600, atomically (readers see the old or the new file).

    The content goes to a temporary file created 0600 in the same directory, then replaces
    `path`: a new inode, so a 0644 file already at `path` does not lend it its mode.
    """
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            # On disk before it replaces anything: a power cut leaves the old or the new file.
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
