"""Flows' door to the platform's Dask cluster, and the preload its workers run.

`task_runner()` is prefect-dask's `DaskTaskRunner` for the platform's scheduler: the address
and Dask's TLS settings come from the environment every flow run already has (the worker's
client profile: `DASK_SCHEDULER_ADDRESS`, the client certificate, the CA), so a flow needs
no plumbing of its own:

    from flowyard.dask_cluster import task_runner

    @flow(task_runner=task_runner())
    def my_flow(): ...

It is a leaf like `flowyard.tracking` (flows import it on machines that have only the
client), so it reads nothing of the platform's config.

`dask_setup` is the `--preload` of the platform's Dask workers (local and joined): it loads
Prefect's integrations (a task's context needs the results block type) and closes
the worker's diagnostics HTTP server, which Dask always starts on a port of its own after
the comm listener, in plain HTTP and without a credential. The worker's only port is then
its mutual-TLS comm port (services.dask says why).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prefect_dask import DaskTaskRunner

if TYPE_CHECKING:
    from distributed import Worker

ADDRESS_VAR = "DASK_SCHEDULER_ADDRESS"


class NoClusterError(RuntimeError):
    """The flow asked for the platform's Dask cluster where there is none."""


def scheduler_address() -> str:
    address = os.environ.get(ADDRESS_VAR, "")
    if not address:
        raise NoClusterError(
            f"{ADDRESS_VAR} is not set: this process has no Dask client profile. Set "
            "dask.enabled = true on the platform (then `flowyard up`), and run the flow on a "
            'platform worker or after `eval "$(flowyard env)"`.'
        )
    return address


class PlatformDaskTaskRunner(DaskTaskRunner):
    """DaskTaskRunner whose address, when not given, is the platform's, read when the
    runner starts (a flow run), not at import: a module declaring
    `@flow(task_runner=task_runner())` still imports where there is no cluster (tests,
    deploys). Without this, DaskTaskRunner would start a private LocalCluster instead."""

    def __enter__(self) -> PlatformDaskTaskRunner:
        if self.address is None:
            address = os.environ.get(ADDRESS_VAR)
            if address:
                self.address = address
            elif not _in_dask_worker():
                # On a Dask worker Prefect re-enters the flow's runner around each task;
                # DaskTaskRunner then finds the worker's own client, as it should.
                scheduler_address()
        super().__enter__()
        return self


def _in_dask_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def task_runner(**client_kwargs: Any) -> PlatformDaskTaskRunner:
    """prefect-dask's DaskTaskRunner for the platform's cluster; `client_kwargs` go to
    `distributed.Client`."""
    return PlatformDaskTaskRunner(client_kwargs=client_kwargs or None)


def dask_setup(worker: Worker) -> None:
    """Dask's preload hook: stop the worker's plain-HTTP diagnostics server, and load
    Prefect's integrations as a flow run's process does, so a task's context finds the
    platform's result-storage block type (`s3-bucket`, from prefect-aws) whatever the flow
    happened to import."""
    server = getattr(worker, "http_server", None)
    if server is not None:
        server.stop()
    from prefect.plugins import load_prefect_collections

    load_prefect_collections()


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


_bind_websocket_listeners_to_their_host()
