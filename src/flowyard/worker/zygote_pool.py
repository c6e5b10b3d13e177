"""The worker's side of the fork servers: start them, route forks, replace stale ones.

One base zygote (Prefect pre-imported) is started with the worker. A deployment that lists
`warm_imports` gets a child zygote forked from the base one, which imports those modules on
top, so Prefect's pages stay shared; at most `max_zygotes` of those are kept (least recently
used is retired). A zygote that reports stale code, or dies, is replaced; a retired one
finishes its running children and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowyard.worker import wire
from flowyard.worker.config import RUN_SETTINGS

# Installed with the platform and used by its own deployments' pull step (boto3 alone is
# ~0.3 CPU-s to import): worth keeping warm for every run.
DEFAULT_EXTRA_IMPORTS = ("prefect_aws.deployments.steps",)


class ZygoteUnavailable(Exception):
    """No warm interpreter could take the run; the caller starts it cold."""


@dataclass(frozen=True)
class WarmKey:
    """What distinguishes one warm interpreter from another."""

    imports: tuple[str, ...] = ()
    pythonpath: tuple[str, ...] = ()

    @classmethod
    def for_run(cls, warm_imports: list[str], env: dict[str, str]) -> WarmKey:
        if not warm_imports:
            # PYTHONPATH is applied after the fork; only modules imported *before* it need
            # the path at import time.
            return cls()
        path = tuple(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
        return cls(tuple(sorted(set(warm_imports))), path)


@dataclass
class Zygote:
    key: WarmKey
    socket_path: Path
    pid: int
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False

    async def request(
        self, message: dict[str, Any], timeout: float = 120
    ) -> tuple[dict[str, Any], ForkConnection]:
        """Send one request; the first answer. The timeout covers a zygote still importing
        (seconds) but not one that hangs: that one is retired, and the run starts cold."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as exc:
            raise ZygoteUnavailable(f"zygote {self.pid}: {exc}") from exc
        conn = ForkConnection(reader, writer)
        try:
            writer.write(wire.encode(message))
            await writer.drain()
            reply = await asyncio.wait_for(wire.arecv(reader), timeout)
        except (OSError, EOFError, TimeoutError) as exc:
            conn.close()
            if isinstance(exc, TimeoutError):
                self.retired = True
            raise ZygoteUnavailable(f"zygote {self.pid} did not answer: {exc!r}") from exc
        return reply, conn


@dataclass
class ForkConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class ZygotePool:
    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        socket_dir: Path,
        extra_imports: tuple[str, ...] = DEFAULT_EXTRA_IMPORTS,
        max_zygotes: int = 4,
    ) -> None:
        self._logger = logger
        self._extra_imports = extra_imports
        self._max_children = max_zygotes
        # Unix socket paths are limited to ~100 bytes: a short private dir (see rundir).
        self._dir = socket_dir
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._serial = 0
        self._base: Zygote | None = None
        # Every base zygote still alive: a replaced one drains its runs before exiting.
        self._bases: dict[int, asyncio.subprocess.Process] = {}
        self._children: OrderedDict[WarmKey, Zygote] = OrderedDict()
        # Import sets whose zygote had threads after importing: always started cold.
        self._unsafe: dict[WarmKey, str] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        async with self._lock:
            await self._ensure_base()

    async def close(self) -> None:
        """Stop every zygote. Their runs were stopped by the worker before this."""
        for zygote in [*self._children.values(), *([self._base] if self._base else [])]:
            zygote.retired = True
        # Child zygotes (and any run still alive) die with their base: parent-death signal.
        for pid, process in list(self._bases.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)
        for task in list(self._tasks):
            task.cancel()

    def _socket_path(self) -> Path:
        self._serial += 1
        return self._dir / f"z{self._serial}.sock"

    async def _ensure_base(self) -> Zygote:
        if self._base is not None and not self._base.retired and not self._base.exited.is_set():
            return self._base
        # Child zygotes share the old base's code: they go with it.
        for child in list(self._children.values()):
            await self._retire(child)
        self._children.clear()
        path = self._socket_path()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(128)
        imports = [arg for name in self._extra_imports for arg in ("--import", name)]
        try:
            # Started from the event loop's thread: the zygote's parent-death signal is tied
            # to the thread that forked it, which lives as long as the worker.
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flowyard.worker.zygote_server",
                "--fd",
                str(listener.fileno()),
                "--parent",
                str(os.getpid()),
                *imports,
                pass_fds=(listener.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, **RUN_SETTINGS},
            )
        finally:
            listener.close()
        zygote = Zygote(WarmKey(), path, process.pid)
        self._base = zygote
        self._bases[process.pid] = process
        self._watch(self._wait_process(zygote, process))
        self._logger.info("Started warm interpreter (zygote) pid %s", process.pid)
        return zygote

    async def _wait_process(self, zygote: Zygote, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._bases.pop(process.pid, None)
        zygote.exited.set()
        if not zygote.retired:
            self._logger.warning("Zygote %s exited unexpectedly (%s)", zygote.pid, code)
        if zygote is self._base:
            # Children of a dead base die with it (parent-death signal).
            for child in list(self._children.values()):
                child.retired = True
        zygote.socket_path.unlink(missing_ok=True)

    def _watch(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- routing -------------------------------------------------------------------------
    async def _zygote_for(self, key: WarmKey) -> Zygote:
        if key in self._unsafe:
            raise ZygoteUnavailable(self._unsafe[key])
        async with self._lock:
            base = await self._ensure_base()
            if key == WarmKey():
                return base
            child = self._children.get(key)
            if child is not None and not child.retired and not child.exited.is_set():
                self._children.move_to_end(key)
                return child
            child = await self._spawn_child(base, key)
            self._children[key] = child
            while len(self._children) > self._max_children:
                _, oldest = self._children.popitem(last=False)
                await self._retire(oldest)
            return child

    async def _spawn_child(self, base: Zygote, key: WarmKey) -> Zygote:
        path = self._socket_path()
        reply, conn = await base.request(
            {
                "op": "zygote",
                "socket": str(path),
                "imports": list(key.imports),
                "pythonpath": list(key.pythonpath),
            }
        )
        if "pid" not in reply:
            conn.close()
            self._on_refusal(base, reply)
            raise _Retry(reply.get("error", "refused"))
        child = Zygote(key, path, reply["pid"])
        self._watch(self._wait_child(child, conn))
        self._logger.info("Started warm interpreter pid %s for %s", child.pid, key.imports)
        return child

    async def _wait_child(self, zygote: Zygote, conn: ForkConnection) -> None:
        with contextlib.suppress(EOFError, OSError, wire.ProtocolError):
            await wire.arecv(conn.reader)
        conn.close()
        zygote.exited.set()
        zygote.retired = True
        if self._children.get(zygote.key) is zygote:
            del self._children[zygote.key]
        zygote.socket_path.unlink(missing_ok=True)

    async def _retire(self, zygote: Zygote) -> None:
        zygote.retired = True
        with contextlib.suppress(ZygoteUnavailable):
            _, conn = await zygote.request({"op": "retire"})
            conn.close()

    def _on_refusal(self, zygote: Zygote, reply: dict[str, Any]) -> None:
        zygote.retired = True
        if reply.get("error") == "stale":
            self._logger.info(
                "Warm interpreter %s retired: imported code changed on disk (%s)",
                zygote.pid,
                ", ".join(reply.get("files", [])[:3]),
            )

    async def fork(
        self, key: WarmKey, request: dict[str, Any]
    ) -> tuple[int, ForkConnection, float]:
        """Fork a run; returns its pid, the connection its exit status arrives on, and the
        seconds spent waiting for a warm interpreter (non-zero after a replacement)."""
        started = time.monotonic()
        last_error = "no zygote"
        for _ in range(3):
            try:
                zygote = await self._zygote_for(key)
                reply, conn = await zygote.request({"op": "fork", **request})
            except _Retry as exc:
                last_error = str(exc)
                continue
            except ZygoteUnavailable as exc:
                last_error = str(exc)
                await asyncio.sleep(0.05)
                continue
            if "pid" in reply:
                return int(reply["pid"]), conn, time.monotonic() - started
            conn.close()
            last_error = reply.get("error", "refused")
            if last_error == "unsafe":
                reason = f"warm imports {list(key.imports)} start threads ({reply.get('reason')})"
                self._unsafe[key] = reason
                await self._retire(zygote)
                raise ZygoteUnavailable(reason)
            self._on_refusal(zygote, reply)
            if zygote is not self._base and reply.get("error") == "stale":
                # The changed file may be one the base zygote imported too: check it.
                await self._check_base()
        raise ZygoteUnavailable(last_error)

    async def _check_base(self) -> None:
        base = self._base
        if base is None:
            return
        try:
            status, conn = await base.request({"op": "ping"})
            conn.close()
        except ZygoteUnavailable:
            return
        if status.get("stale"):
            await self._retire(base)

    async def ping(self) -> dict[str, Any]:
        """Status of every zygote (for diagnostics and tests)."""
        result: dict[str, Any] = {}
        for zygote in [*([self._base] if self._base else []), *self._children.values()]:
            try:
                status, conn = await zygote.request({"op": "ping"})
                conn.close()
            except ZygoteUnavailable as exc:
                status = {"error": str(exc)}
            result[str(zygote.pid)] = {"imports": list(zygote.key.imports), **status}
        return result


class _Retry(Exception):
    pass
