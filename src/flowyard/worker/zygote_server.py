"""The fork server ("zygote"): an interpreter that imports Prefect once, then forks flow runs.

Started by the worker (`zygote_pool`) as `python -m flowyard.worker.zygote_server --fd N`,
on a listening Unix socket the worker bound and passed in (so the worker can send requests
before the imports finish: they simply wait in the backlog). It never starts a thread or an
event loop: a fork copies only the calling thread, so any thread or loop alive at fork time
would be half-copied into every run. It never imports flow code either; each run pulls and
imports its own code after the fork (`forked_run`), so runs cannot see each other's
modules, globals or environment, and the memory pages of the imported libraries stay
shared copy-on-write between all runs.

Requests (see `wire`): `fork` a flow run, `zygote` (fork a child zygote that additionally
imports a deployment's `warm_imports`, sharing Prefect's pages with this one), `ping`,
`retire`. Before each fork the files of every imported module are checked against their
state at import time; if any changed (an upgraded library, edited code on PYTHONPATH), the
zygote refuses (`stale`), retires, and exits once its running children are done, and the
worker starts a fresh one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from flowyard.worker import wire
from flowyard.worker.prefect_private import RUN_MODULES

# Everything a run needs before it reaches user code: the engine, workspace preparation
# (pull steps), the API client, settings, logging and the events client.
BASE_IMPORTS = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.flows",
    "prefect.client.orchestration",
    "prefect.events.clients",
    "prefect.logging.handlers",
    "prefect.deployments.steps",
    "prefect.deployments.steps.core",
    "prefect.deployments.steps.pull",
    *RUN_MODULES,
    # Imported lazily by every run (found by profiling runs): flow decoration checks for
    # pydantic v1 models, the engine's async pieces load anyio's asyncio backend.
    "pydantic.v1",
    "anyio._backends._asyncio",
    "anyio.streams.tls",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "rich._emoji_codes",
    "flowyard.worker.forked_run",
)
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def import_modules(names: list[str]) -> dict[str, str]:
    """Import what can be imported; a module that fails is reported, not fatal."""
    failed: dict[str, str] = {}
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # a broken library must not kill the zygote
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def module_files() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of the source or extension file behind every imported module."""
    files: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or path in files:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(path)
            files[path] = (st.st_mtime_ns, st.st_size)
    return files


def changed_files(snapshot: dict[str, tuple[int, int]]) -> list[str]:
    changed = []
    for path, (mtime, size) in snapshot.items():
        try:
            st = os.stat(path)
        except OSError:
            changed.append(path)
            continue
        if st.st_mtime_ns != mtime or st.st_size != size:
            changed.append(path)
    return changed


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


class Zygote:
    def __init__(self, listener: socket.socket, parent_pid: int, failed: dict[str, str]):
        self.listener = listener
        self.parent_pid = parent_pid
        self.failed_imports = failed
        # A module that starts a thread on import makes forking unsafe (the fork would
        # hold a copy of a thread that does not run, and of any lock it held).
        threads = thread_count()
        self.unsafe = f"{threads} threads after imports" if threads > 1 else None
        self.snapshot = module_files()
        self.children: dict[int, socket.socket] = {}
        self.retired = False
        self.forks = 0
        self.selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()

    # -- setup ---------------------------------------------------------------------------
    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        # SIGCHLD wakes the select loop through the wakeup fd; the handler itself does nothing.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wakeup_w)
        # Ctrl-C / supervisor's group-wide INT is for the worker; it stops us itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _close_in_child(self, keep: socket.socket | None = None) -> None:
        """In a forked child: drop every descriptor and handler that belongs to the server."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        self.listener.close()
        for conn in self.children.values():
            if conn is not keep:
                conn.close()
        self.children.clear()

    # -- serving -------------------------------------------------------------------------
    def serve(self) -> NoReturn:
        self._install_signals()
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, "wakeup")
        # Objects alive now live as long as the zygote: keep the collector from touching
        # them in the children (each touch would copy a shared page).
        gc.freeze()
        while True:
            if self.retired and not self.children:
                os._exit(0)
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wakeup":
                    self._drain_wakeup()
                else:
                    # A run's connection became readable: the worker closed it (it is gone
                    # or lost interest); the child keeps running and is still reaped.
                    self._forget_connection(key.fileobj)  # type: ignore[arg-type]
            self._reap()
            if os.getppid() != self.parent_pid:
                # Parent gone without the death signal firing (it was not our parent's
                # thread that forked us): nothing will ever ask us for work again.
                self.retired = True

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # Whatever the run left behind in its process group goes with it.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.setblocking(True)
                wire.send(
                    conn,
                    {
                        "exit": os.waitstatus_to_exitcode(status),
                        "cpu": usage.ru_utime + usage.ru_stime,
                        "maxrss_kb": usage.ru_maxrss,
                    },
                )
            conn.close()

    def _forget_connection(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.selector.unregister(conn)
        for pid, c in list(self.children.items()):
            if c is conn:
                # Keep reaping the pid, with a placeholder connection that is never written.
                self.children[pid] = _Closed()  # type: ignore[assignment]
        conn.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(10)
        try:
            request = wire.recv(conn)
            op = request.get("op")
            if op == "ping":
                wire.send(conn, self.status())
            elif op == "retire":
                self.retired = True
                wire.send(conn, {"ok": True})
            elif op in ("fork", "zygote"):
                self._fork(conn, request)
                return  # the connection now belongs to the child's lifetime
            else:
                wire.send(conn, {"error": f"unknown op {op!r}"})
        except (OSError, EOFError, ValueError, wire.ProtocolError):
            pass
        conn.close()

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "children": len(self.children),
            "forks": self.forks,
            "retired": self.retired,
            "unsafe": self.unsafe,
            "failed_imports": self.failed_imports,
            "stale": changed_files(self.snapshot)[:20],
        }

    def _fork(self, conn: socket.socket, request: dict[str, Any]) -> None:
        if self.retired or self.unsafe:
            wire.send(
                conn,
                {"error": "unsafe", "reason": self.unsafe} if self.unsafe else {"error": "retired"},
            )
            conn.close()
            return
        stale = changed_files(self.snapshot)
        if stale:
            self.retired = True
            wire.send(conn, {"error": "stale", "files": stale[:20]})
            conn.close()
            return
        new_listener = _bind(request["socket"]) if request["op"] == "zygote" else None
        pid = os.fork()
        if pid == 0:
            self._close_in_child(keep=conn)
            if new_listener is not None:
                conn.close()
                child_zygote(new_listener, request)
            conn.close()
            from flowyard.worker.forked_run import run_child

            run_child(request, os.getppid())
        if new_listener is not None:
            new_listener.close()
        self.forks += 1
        self.children[pid] = conn
        try:
            wire.send(conn, {"pid": pid})
        except OSError:
            self._forget_connection(conn)
            return
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, "run")


class _Closed:
    """Stands in for the connection of a child whose worker stopped listening."""

    def setblocking(self, flag: bool) -> None:
        raise OSError("closed")

    def close(self) -> None:
        pass


def _bind(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def child_zygote(listener: socket.socket, request: dict[str, Any]) -> NoReturn:
    """In a fork of a zygote: become a zygote with more modules imported."""
    code = 0
    try:
        parent = os.getppid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        for entry in reversed(request.get("pythonpath") or []):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        failed = import_modules(list(request.get("imports") or []))
        Zygote(listener, parent, failed).serve()
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="listening Unix socket")
    parser.add_argument("--parent", type=int, required=True, help="the worker's pid")
    parser.add_argument("--import", dest="imports", action="append", default=[])
    args = parser.parse_args(argv)
    # If the worker dies (even by SIGKILL) the zygote follows at once; its runs then get
    # their own death signal and report themselves Crashed.
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != args.parent:
        sys.exit("flowyard zygote: the worker is already gone")
    started = time.perf_counter()
    listener = socket.socket(fileno=args.fd)
    failed = import_modules([*BASE_IMPORTS, *args.imports])
    from flowyard.worker.forked_run import capture_zygote_settings
    from flowyard.worker.warmup import warm_up

    report = warm_up()
    capture_zygote_settings()
    for name, error in failed.items():
        print(f"flowyard zygote: cannot pre-import {name}: {error}", file=sys.stderr)
    print(
        f"flowyard zygote {os.getpid()}: ready in {time.perf_counter() - started:.2f} s "
        f"({len(sys.modules)} modules; warm-up {report})",
        file=sys.stderr,
        flush=True,
    )
    Zygote(listener, args.parent, failed).serve()


if __name__ == "__main__":
    main()
