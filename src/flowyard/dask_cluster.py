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

Importing it also removes two costs Prefect 3.9 pays for every task it sends to Dask, each
for an answer that does not change from one task to the next (`_cache_prefect_context_costs`),
and `task_runner()` sends each task to Dask without the per-task closure and tokenized key
prefect-dask makes for it (`prefect_task_call` says why): on Dask, Prefect's per-task costs
are paid by every process on the way (the flow's, the proxy, the scheduler, the worker).

`dask_setup` is the `--preload` of the platform's Dask workers (local and joined): it loads
Prefect's integrations (a task's context needs the results block type) and closes
the worker's diagnostics HTTP server, which Dask always starts on a port of its own after
the comm listener, in plain HTTP and without a credential. The worker's only port is then
its mutual-TLS comm port (services.dask says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import distributed
from dask.utils import funcname
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from flowyard import dask_comms

if TYPE_CHECKING:
    from distributed import Worker
    from prefect.tasks import Task

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

    def submit(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectDaskFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectDaskFuture[Any]:
        """prefect-dask's submit, sent the cheap way (`prefect_task_call` says why)."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        call = prefect_task_call(
            task,
            self._optimize_futures(parameters),
            self._optimize_futures(wait_for) if wait_for else None,
            dependencies,
        )
        key = f"{funcname(task.fn)}-{call['task_run_id'].hex}"
        # distributed's own submit: prefect-dask's PrefectDaskClient.submit would wrap the
        # task in a new closure again.
        future = distributed.Client.submit(
            self.client, run_prefect_task, key=key, pure=False, **call
        )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=call["task_run_id"])


def prefect_task_call(
    task: Task[Any, Any],
    parameters: dict[str, Any],
    wait_for: Any,
    dependencies: dict[str, set[Any]] | None,
) -> dict[str, Any]:
    """The keyword arguments prefect-dask 0.3's `PrefectDaskClient.submit` gives Prefect's
    task engine for a task (test_dask.py compares the two), to be sent with
    `run_prefect_task` under a key made from the task run's id.

    prefect-dask sends each task as a new closure under a key dask derives by tokenizing
    the closure and every argument, the task's serialized context included: the flow's
    process pickles all of it twice, and the scheduler pickles the closure again to pass
    it on (py-spy, 1,000 tiny tasks: tokenizing alone was 60 % of the flow process's submit
    time). The task run's id is a fresh uuid4, so the tokenized key could never be shared
    with another task anyway: a key made from that id names the same task exactly, and a
    module-level function is pickled as its name."""
    from prefect.context import serialize_context
    from prefect.utilities.engine import collect_task_run_inputs_sync

    task_run_id = uuid4()
    inputs = {
        name: collect_task_run_inputs_sync(value, future_cls=distributed.Future)
        for name, value in parameters.items()
    }
    if dependencies:
        inputs = {name: deps.union(dependencies.get(name, set())) for name, deps in inputs.items()}
    context = serialize_context(
        asset_ctx_kwargs={
            "task": task,
            "task_run_id": task_run_id,
            "task_inputs": inputs,
            "copy_to_child_ctx": True,
        }
    )
    return {
        "task": task,
        "task_run_id": task_run_id,
        "wait_for": wait_for,
        "return_type": "state",
        "parameters": parameters,
        "dependencies": inputs,
        "context": context,
    }


def run_prefect_task(**call: Any) -> Any:
    """Run a task sent by `PlatformDaskTaskRunner.submit` on a Dask worker, as
    prefect-dask's per-task closure does. The platform's Dask workers preload this module,
    so it travels as its name."""
    from prefect.task_engine import run_task_async, run_task_sync

    if call["task"].isasync:
        return asyncio.run(run_task_async(**call))
    return run_task_sync(**call)


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


# What every Dask process of the platform needs from its comms (flowyard.dask_comms): on
# import, like this module's own changes below.
dask_comms.install()


# Prefect's own functions this module replaces, by name: tests compare their answers.
PREFECT_ORIGINALS: dict[str, Any] = {}

# How many distinct settings a Dask worker keeps built: one per flow run's settings, and a
# worker serves few flow runs at a time.
SETTINGS_CACHE_SIZE = 16


def _cache_prefect_context_costs() -> None:
    """Cache what Prefect 3.9 rebuilds for every task a flow sends to Dask. Measured with
    py-spy on the platform's cluster, 100 tiny tasks: 483 ms a task, against 7 ms with
    Prefect's thread-pool runner and 9 ms with raw `Client.map`.

    - The flow's process serializes its context for each task (`serialize_context`). The
      results-storage block in it (the platform's S3 bucket, with nested credentials) is
      serialized with secrets, and Prefect's `Block._field_has_secrets` regenerates the
      block's whole JSON schema for every field it checks: about 300 ms a task. Which fields
      hold secrets depends on the block's class alone, so it is computed once per class.
      The settings part (`SettingsContext.serialize`) is the same for every task of a run:
      it is kept per settings context, as long as that context lives.
    - Each task on a Dask worker rebuilds Prefect's settings from that serialized dict
      (`hydrated_context`: pydantic-settings reads every source again): about 100 ms a task.
      The settings built from the same dict, in the same worker process, are the same; the
      worker keeps the last few and hands the same instance to each task of a run.
    Each cached answer is compared with Prefect's own (`PREFECT_ORIGINALS`) in
    tests/unit/test_dask.py, so a Prefect upgrade that changes these names fails there.
    """
    from prefect import context as prefect_context
    from prefect import task_engine
    from prefect.blocks.core import Block

    PREFECT_ORIGINALS.update(
        {
            "Block._field_has_secrets": Block._field_has_secrets,
            "SettingsContext.serialize": prefect_context.SettingsContext.serialize,
            "hydrated_context": prefect_context.hydrated_context,
        }
    )

    @functools.cache
    def secret_fields(cls: type[Block]) -> tuple[str, ...]:
        return tuple(cls.model_json_schema().get("secret_fields", []))

    def field_has_secrets(self: Block, field_name: str) -> bool:
        # Prefect's own test, over the cached list.
        return any(
            secret == field_name
            or secret.startswith(f"{field_name}.")
            or (secret.endswith(".*") and secret[:-2] == field_name)
            for secret in secret_fields(type(self))
        )

    Block._field_has_secrets = field_has_secrets  # type: ignore[method-assign]

    settings_context = prefect_context.SettingsContext
    serialize = settings_context.serialize
    serialized: dict[tuple[int, bool], tuple[weakref.ref[Any], dict[str, Any]]] = {}

    def cached_serialize(self: Any, include_secrets: bool = True) -> dict[str, Any]:
        key = (id(self), include_secrets)
        hit = serialized.get(key)
        if hit is not None and hit[0]() is self:
            return hit[1]
        result = serialize(self, include_secrets=include_secrets)
        serialized[key] = (weakref.ref(self, lambda _: serialized.pop(key, None)), result)
        return result

    settings_context.serialize = cached_serialize  # type: ignore[method-assign]

    hydrate = prefect_context.hydrated_context
    built: dict[str, Any] = {}

    @contextlib.contextmanager
    def hydrated_context(
        serialized_context: dict[str, Any] | None = None, client: Any = None
    ) -> Iterator[None]:
        given = (serialized_context or {}).get("settings_context") or {}
        if isinstance(given.get("settings"), dict):
            key = json.dumps(given, sort_keys=True, default=str)
            settings = built.get(key)
            if settings is None:
                # Built exactly as Prefect builds it, once.
                settings = settings_context(**given).settings
                while len(built) >= SETTINGS_CACHE_SIZE:
                    built.pop(next(iter(built)))
                built[key] = settings
            assert serialized_context is not None
            serialized_context = {
                **serialized_context,
                "settings_context": {**given, "settings": settings},
            }
        with hydrate(serialized_context, client):
            yield

    task_engine.hydrated_context = hydrated_context
    _share_the_api_clients_tls_context()


def _share_the_api_clients_tls_context() -> None:
    """Each task on a Dask worker makes two new sync Prefect clients (its flow-run context's
    and its client context's), and each builds a new `ssl.SSLContext` from the CA file:
    about 12 % of a tiny task's time on the worker (py-spy). The context is the same for the
    same CA file, and an SSLContext is safe to share between clients and threads, so the
    clients get one per CA file (and its modification time); verification stays on, as
    Prefect would set it up (`test_dask.py` compares the two)."""
    import ssl

    import certifi
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    init = PREFECT_ORIGINALS.setdefault("SyncPrefectClient.__init__", SyncPrefectClient.__init__)

    @functools.lru_cache(maxsize=8)
    def verified(cafile: str, mtime_ns: int) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=cafile)  # Prefect's own call

    def shared_context() -> ssl.SSLContext | None:
        if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
            return None  # Prefect's own unverified context, as the user asked
        cafile = PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
        try:
            return verified(cafile, os.stat(cafile).st_mtime_ns)
        except OSError:
            return None  # Prefect's own path, and its own error

    @functools.wraps(init)
    def client_init(
        self: SyncPrefectClient, api: Any, *args: Any, httpx_settings: Any = None, **kw: Any
    ) -> None:
        settings = dict(httpx_settings or {})
        if isinstance(api, str) and not settings.get("verify"):
            context = shared_context()
            if context is not None:
                settings["verify"] = context
        init(self, api, *args, httpx_settings=settings or None, **kw)

    SyncPrefectClient.__init__ = client_init  # type: ignore[method-assign]


_cache_prefect_context_costs()
