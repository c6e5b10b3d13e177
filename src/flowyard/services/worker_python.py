"""A Python the local worker's unprivileged user can run, on a root install.

The worker (and every flow run, its children) runs as `worker.system_user`, which must run
Flowyard's interpreter. When that interpreter's installation is out of its reach (pyenv's
under /root, whose home is 0700), its runtime (the binary, libpython and the standard
library) is linked into `data/pydist` under FLOWYARD_HOME, which the user can traverse, and a
tiny venv there adds Flowyard's own site-packages. Hard links cost no space (a copy is made
where a link cannot be, e.g. across file systems); like PostgreSQL's `data/pgdist`, it is
made once per interpreter and refreshed when the interpreter changes.

The environment's site-packages (and an editable install's sources) must be reachable
themselves: `local_worker.prepare` checks, as that user, and says how to fix it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import sysconfig
import threading
from pathlib import Path

from flowyard.config.context import Context

# Parts of the standard library a worker never imports: the test suite alone is half of it.
_SKIPPED = {"test", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}


def _world_reachable(path: Path) -> bool:
    """Every directory on the way is o+x and the path itself o+r (o+x for a directory)."""
    try:
        for parent in path.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        mode = path.stat().st_mode
    except OSError:
        return False
    need = stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH
    return bool(mode & need)


def needed() -> bool:
    """True when the running interpreter's runtime is out of another user's reach."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return not (
        _world_reachable(Path(os.path.realpath(sys.executable)))
        and _world_reachable(stdlib / "os.py")
    )


def root(ctx: Context) -> Path:
    return ctx.paths.data / "pydist"


def python(ctx: Context) -> Path:
    """The interpreter the worker runs: the linked runtime's venv."""
    return root(ctx) / "venv" / "bin" / "python"


def env(ctx: Context) -> dict[str, str]:
    # A shared-library build finds libpython by an absolute RUNPATH into the original
    # installation; LD_LIBRARY_PATH takes precedence over RUNPATH.
    return {"LD_LIBRARY_PATH": str(root(ctx) / "lib")}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=True)
    except OSError:
        shutil.copy2(src, dst)


def _stamp() -> str:
    real = Path(os.path.realpath(sys.executable))
    return f"{real} {real.stat().st_mtime_ns} {sys.version}\n"


# `up` prepares services on threads of its own, and the worker and the Dask processes share
# this runtime: one copy at a time.
_ENSURING = threading.Lock()


def ensure(ctx: Context) -> None:
    """Link the runtime into `data/pydist` unless it is there for this interpreter."""
    with _ENSURING:
        _ensure(ctx)


def _ensure(ctx: Context) -> None:
    dist = root(ctx)
    stamp = dist / ".source"
    if stamp.exists() and stamp.read_text() == _stamp():
        return
    if dist.exists():
        shutil.rmtree(dist)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (dist / "bin").mkdir(parents=True)
    (dist / "lib").mkdir()
    binary = dist / "bin" / version
    _link_or_copy(os.path.realpath(sys.executable), str(binary))
    for lib in (base / "lib").glob(f"lib{version}*.so*"):
        _link_or_copy(str(lib.resolve()), str(dist / "lib" / lib.name))
    shutil.copytree(
        stdlib,
        dist / "lib" / version,
        ignore=lambda d, names: [n for n in names if n in _SKIPPED and Path(d) == stdlib],
        copy_function=_link_or_copy,
    )
    # The venv: this runtime, plus the site-packages Flowyard runs from (their .pth files,
    # e.g. an editable install's, processed as in the original environment).
    venv = dist / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(binary)
    (venv / "pyvenv.cfg").write_text(
        f"home = {dist / 'bin'}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}."
        f"{sys.version_info.micro}\n"
    )
    site = venv / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    sites = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    lines = [f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(sites)]
    (site / "_flowyard_environment.pth").write_text("\n".join(lines) + "\n")
    stamp.write_text(_stamp())
    # Readable and traversable by the worker's user (through its group), never writable by
    # it, and closed to every other user like the rest of the home. Only directories and the
    # files written here change: the linked files share their inodes with the originals.
    group = pwd.getpwnam(ctx.config.worker.system_user).pw_gid
    for path in [dist, *dist.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chown(path, 0, group)
            path.chmod(0o750)
    for path in (stamp, venv / "pyvenv.cfg", site / "_flowyard_environment.pth"):
        os.chown(path, 0, group)
        path.chmod(0o640)
