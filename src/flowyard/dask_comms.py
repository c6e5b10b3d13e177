"""Two fixes to `distributed`'s websocket comms (`wss://`, every Dask hop of the platform,
services.dask), for every process that opens them: flow runs and clients (through
`flowyard.dask_cluster`), workers (their `--preload` is that module) and the scheduler (its
`--preload` is this module alone: it needs no Prefect).

A leaf: imports nothing of Flowyard, and nothing of Prefect.
"""

from __future__ import annotations

import functools
from typing import Any

# distributed's functions replaced here, by name: the tests check they still need it.
ORIGINALS: dict[str, Any] = {}


def install() -> None:
    """Both fixes; idempotent."""
    _bind_websocket_listeners_to_their_host()
    _connect_websockets_without_nagle()


def _bind_websocket_listeners_to_their_host() -> None:
    """Make Dask's `wss://` listener bind the host it is given.

    distributed 2026.8.0's `WSListener.start` calls `HTTPServer.listen(port)` with no
    address, so a worker told `--listen-address wss://127.0.0.1:PORT` listens on every
    interface (mutual TLS still guards it, but only the proxy may listen beyond loopback).
    This registers the same backend with a listener that passes its host. Preloads are
    imported before the worker listens, which is why this runs at import.
    """
    import weakref

    from distributed.comm.registry import backends
    from distributed.comm.ws import WSHandler, WSSBackend, WSSListener
    from tornado import web
    from tornado.httpserver import HTTPServer

    class BoundWSSListener(WSSListener):
        async def start(self) -> None:
            node = getattr(self.handler, "__self__", None)
            shared = getattr(node, "http_server", None)
            if shared is not None and shared.port == self.port:
                # The node's own HTTP server, already bound (the scheduler's case).
                await super().start()
                return
            handler_args = {
                "handler": self.handler,
                "deserialize": self.deserialize,
                "allow_offload": self.allow_offload,
                "listener": weakref.ref(self),
            }
            self.server = HTTPServer(
                web.Application([(r"/", WSHandler, handler_args)]), **self.server_args
            )
            self.server.listen(self.port, address=self.ip or None)

    class BoundWSSBackend(WSSBackend):
        _listener_class = BoundWSSListener

    backends["wss"] = BoundWSSBackend()


def _connect_websockets_without_nagle() -> None:
    """Send a `wss://` comm's messages at once from the side that connected, as the side
    that accepted already does.

    distributed 2026.8.0 writes each message as several websocket frames (a frame count, then
    the frames), and its accepting side turns Nagle's algorithm off (`WSHandler.open`), but
    its connecting side does not (`WSConnector.connect`): the second write of a message then
    waits for the peer's delayed ACK, about 40 ms, on every request-reply. Measured on the
    platform's cluster, a sequential `submit(...).result()` through the proxy: 101 ms with
    distributed as is, 59 ms with the client's side fixed, 14 ms with every side fixed
    (tests/unit/test_dask.py has the check that tells when upstream sets it itself). Every
    process that opens Dask comms imports this module: flow runs (`task_runner`), workers
    and the scheduler (`--preload`).
    """
    from distributed.comm.ws import WSConnector

    if getattr(WSConnector.connect, "_flowyard_nodelay", False):
        return
    connect = ORIGINALS.setdefault("WSConnector.connect", WSConnector.connect)

    @functools.wraps(connect)
    async def connect_without_nagle(self: Any, *args: Any, **kwargs: Any) -> Any:
        comm = await connect(self, *args, **kwargs)
        comm.sock.stream.set_nodelay(True)
        return comm

    connect_without_nagle._flowyard_nodelay = True  # type: ignore[attr-defined]
    WSConnector.connect = connect_without_nagle  # type: ignore[method-assign]


install()
