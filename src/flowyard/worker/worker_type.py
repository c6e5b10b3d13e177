"""The `flowyard` worker type: Prefect's worker with no poll wait and no cold start.

Everything Prefect's `BaseWorker` does is kept (queues and priorities, the worker and
pool/queue concurrency limits, Pending/Submitting proposals, heartbeats, cancellation of
pending runs, crash reporting), and a run's lifecycle is Prefect's own `FlowRunExecutor`.
What changes:

- polls go through a `Dispatcher` (`dispatch`), woken by BaseWorker's own poll loop (every
  `PREFECT_WORKER_QUERY_SECONDS`, as before), by scheduled-run events (`events`) and by our
  own runs finishing; it and the event listener start from `setup()`, not a copy of
  `BaseWorker.start`;
- a run's process is forked from a warm interpreter (`zygote_server`, kept by `zygote_pool`,
  asked by `starter`; the fork runs `forked_run`) instead of two fresh interpreters
  (workspace supervisor, then engine); a custom command, `warm_start: false`, or an
  environment that must be set before the interpreter starts gets Prefect's cold path,
  unchanged;
- one executor context is shared by all runs instead of one per run (`executors`), and the
  deployment/flow reads Prefect repeats per submission are cached briefly (`reads`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.events import Event
from prefect.exceptions import InfrastructureNotFound
from prefect.flows import load_flow_from_flow_run
from prefect.settings import PREFECT_WORKER_QUERY_SECONDS
from prefect.workers.base import BaseWorker, BaseWorkerResult

from flowyard.worker import code_cache, rundir
from flowyard.worker.config import FlowyardJobConfiguration, FlowyardVariables
from flowyard.worker.dispatch import Dispatcher
from flowyard.worker.events import listen_for_scheduled_runs
from flowyard.worker.executors import SharedExecutors
from flowyard.worker.prefect_private import (
    EngineCommandStarter,
    HookRunner,
    WorkspaceHookRunner,
    WorkspaceResolvingEngineCommandStarter,
)
from flowyard.worker.reads import cache_worker_reads
from flowyard.worker.starter import ZygoteStarter
from flowyard.worker.zygote_pool import ZygotePool, ZygoteUnavailable

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import WorkerFlowRunResponse

    from flowyard.worker.prefect_private import FlowRunHookRunner, ProcessHandle, ProcessStarter

WARM_START_SUPPORTED = sys.platform.startswith("linux")
# Read by the interpreter before any Python runs, so a fork cannot honour them.
_STARTUP_ENV_PREFIXES = ("PYTHON", "LD_")
_STARTUP_ENV_ALLOWED = {"PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def needs_cold_start(config: FlowyardJobConfiguration) -> str | None:
    """Why this run cannot be forked from a warm interpreter, or None if it can."""
    if not WARM_START_SUPPORTED:
        return "warm start needs Linux (fork, parent-death signal, pidfd)"
    if config._command_configured:
        return "a custom command is configured"
    if not config.warm_start:
        return "warm_start is off"
    for key, value in config.env.items():
        if (
            key.startswith(_STARTUP_ENV_PREFIXES)
            and key not in _STARTUP_ENV_ALLOWED
            and value != os.environ.get(key)
        ):
            return f"{key} must be set when the interpreter starts"
    return None


class FlowyardWorkerResult(BaseWorkerResult):
    """Exit status of a flow run's process."""


class FlowyardWorker(BaseWorker[FlowyardJobConfiguration, FlowyardVariables, FlowyardWorkerResult]):
    type = "flowyard"
    job_configuration = FlowyardJobConfiguration
    job_configuration_variables = FlowyardVariables
    _description = (
        "Flowyard's process worker: picks up triggered runs at once (event stream) and starts "
        "them from warm, pre-imported interpreters (fork server) in a fraction of the time "
        "and CPU of a new Python process."
    )
    _display_name = "Flowyard"
    _documentation_url = "https://docs.prefect.io/v3/concepts/workers"
    _logo_url = "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos/process.png"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zygotes: ZygotePool | None = None
        self._executors: SharedExecutors | None = None
        self._dispatcher: Dispatcher | None = None
        # Set by start(): False for a run-once worker, which polls the stock way.
        self._event_driven = True
        self._manifests = Path("/nonexistent")
        self._code_cache: Path | None = None
        # Runs a poll handed us that are not yet Pending on the server (see _poll).
        self._taking: set[UUID] = set()
        self._taken = anyio.Event()
        self._taken.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def setup(self) -> None:
        await super().setup()
        cache_worker_reads(self.client)
        scratch = rundir.create()
        self._exit_stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        self._manifests = scratch / "runs"
        self._manifests.mkdir()
        self._code_cache = code_cache.cache_dir(scratch)
        self._zygotes = ZygotePool(self._logger, scratch / "zygotes")
        # Exit stack is LIFO: runs are stopped (executors) before their zygotes go.
        self._exit_stack.push_async_callback(self._zygotes.close)
        if WARM_START_SUPPORTED:
            await self._zygotes.start()
        self._executors = await self._exit_stack.enter_async_context(SharedExecutors())
        if self._event_driven:
            # Entered last, so left first: no new poll while runs are being stopped.
            await self._start_event_driven_loops()

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[..., None] = print,
    ) -> None:
        # BaseWorker.start runs everything (healthcheck, setup, its poll and sync loops,
        # started/stopped events, metrics); our loops start from setup(). This override only
        # exists because setup() cannot see `run_once`: one poll needs nothing woken, and
        # must take one batch only, so a run-once worker stays the stock one.
        self._event_driven = not run_once
        await super().start(run_once=run_once, with_healthcheck=with_healthcheck, printer=printer)

    async def _start_event_driven_loops(self) -> None:
        """The dispatcher and the scheduled-run listener, for the worker's lifetime: started
        at the end of setup(), stopped first thing at teardown (the exit stack is LIFO)."""
        self._dispatcher = Dispatcher(
            self._poll,
            logger=self._logger,
            max_backoff=4 * PREFECT_WORKER_QUERY_SECONDS.value(),
        )
        loops = await self._exit_stack.enter_async_context(anyio.create_task_group())
        self._exit_stack.callback(loops.cancel_scope.cancel)
        loops.start_soon(self._dispatcher.run)
        loops.start_soon(self._listen_for_scheduled_runs)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Called by BaseWorker's poll loop every `PREFECT_WORKER_QUERY_SECONDS`: with the
        dispatcher running that is one more reason to poll, and the dispatcher polls (never
        two polls at once); without it (run once), the poll itself."""
        if self._dispatcher is None:
            return await self._poll()
        self._dispatcher.wake()
        return []

    async def _listen_for_scheduled_runs(self) -> None:
        # The filter needs the pool's id, known after the first sync with the API.
        while self._work_pool is None:
            await anyio.sleep(0.5)
        await listen_for_scheduled_runs(
            str(self._work_pool.id), self._on_scheduled_event, self._logger
        )

    def _on_scheduled_event(self, event: Event | None) -> None:
        if self._dispatcher is not None:
            self._dispatcher.wake()

    async def _poll(self) -> list[FlowRun]:
        """One scheduled-runs query, but never while runs from the previous one are still
        on their way to Pending: the server counts Pending and Running runs against queue
        and pool concurrency limits, so a query in that window would hand out the same
        slot twice. (A stock worker polls every 10 s and almost never hits the window;
        an event-driven one would, in every burst.)"""
        if not self._taken.is_set():
            started = anyio.current_time()
            with anyio.move_on_after(30):
                await self._taken.wait()
            self._logger.debug(
                "Poll waited %.3f s for %d run(s) to become Pending",
                anyio.current_time() - started,
                len(self._taking),
            )
        return await super().get_and_submit_flow_runs()

    async def _submit_scheduled_flow_runs(
        self, flow_run_response: list[WorkerFlowRunResponse]
    ) -> list[FlowRun]:
        already = set(self._submitting_flow_run_ids)
        submitted = await super()._submit_scheduled_flow_runs(flow_run_response)
        # The new ones' submission tasks have not run yet (started, not yet scheduled).
        self._taking.update(run.id for run in submitted if run.id not in already)
        if self._taking:
            self._taken = anyio.Event()
        return submitted

    def _taken_or_dropped(self, flow_run_id: UUID) -> None:
        self._taking.discard(flow_run_id)
        if not self._taking:
            self._taken.set()

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        try:
            return await super()._propose_pending_state(flow_run)
        finally:
            self._taken_or_dropped(flow_run.id)

    async def _submit_run(self, flow_run: FlowRun) -> None:
        try:
            await super()._submit_run(flow_run)
        finally:
            # Paths that return before proposing Pending (deployment deleted, errors).
            self._taken_or_dropped(flow_run.id)

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        super()._release_limit_slot(flow_run_id)
        # A free slot is a reason to look for waiting runs now, not at the next poll.
        if self._dispatcher is not None:
            self._dispatcher.wake()

    def get_status(self) -> dict[str, Any]:
        status = super().get_status()
        if self._dispatcher is not None:
            status["dispatch"] = {
                "polls": self._dispatcher.polls,
                "wakeups": self._dispatcher.wakeups,
            }
        return status

    # -- running a flow run --------------------------------------------------------------
    async def run(
        self,
        flow_run: FlowRun,
        configuration: FlowyardJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> FlowyardWorkerResult:
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        assert self._executors is not None and self._zygotes is not None
        working_dir = (
            tempfile.TemporaryDirectory(suffix="prefect")
            if not configuration.working_dir
            else contextlib.nullcontext(str(configuration.working_dir))
        )
        # Where the run records its prepared workspace, for hooks run after it is gone.
        manifest = self._manifests / f"{flow_run.id}.json"
        with working_dir as workdir:
            starter = self._starter(configuration, Path(workdir).resolve(), manifest)
            executor = self._executors.create(flow_run, starter, starter.hook_runner)
            execution = None

            async def execute(
                *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            try:
                async with anyio.create_task_group() as tg:
                    handle = await tg.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(handle.pid)
            finally:
                await self._executors.release(flow_run.id)
                starter.close()
                manifest.unlink(missing_ok=True)
                self._log_usage(flow_run, starter)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return FlowyardWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )

    def _log_usage(self, flow_run: FlowRun, starter: _RunStarter) -> None:
        warm = starter.warm
        if warm is None or warm.process is None or warm.process.cpu_seconds is None:
            return
        self._logger.info(
            "Flow run %s (%s) exited %s: %.2f CPU-s, peak RSS %d MiB, warm start%s",
            flow_run.name,
            flow_run.id,
            warm.process.returncode,
            warm.process.cpu_seconds,
            (warm.process.maxrss_kb or 0) // 1024,
            f" after {warm.wait_for_zygote_seconds:.1f} s waiting for a fresh interpreter"
            if warm.wait_for_zygote_seconds > 0.5
            else "",
        )

    def _starter(
        self, config: FlowyardJobConfiguration, workspace_root: Path, manifest_path: Path
    ) -> _RunStarter:
        assert self._executors is not None and self._zygotes is not None
        control = self._executors.control_channel
        if config._command_configured:
            # An explicit command is opaque (it may not even be Python): run it as is, as
            # the process worker does, with its own pull-step behaviour.
            return _RunStarter(
                EngineCommandStarter(
                    command=config.command,
                    cwd=workspace_root,
                    env=config.env,
                    stream_output=config.stream_output,
                    control_channel=control,
                ),
                HookRunner(resolve_flow=load_flow_from_flow_run),
            )
        reason = needs_cold_start(config)
        if reason is not None:
            self._logger.debug("Cold start: %s", reason)
            return _cold_starter(config, workspace_root, control)
        warm = ZygoteStarter(
            pool=self._zygotes,
            warm_imports=config.warm_imports,
            job_env=config.env,
            workspace_root=workspace_root,
            manifest_path=manifest_path,
            stream_output=config.stream_output,
            memory_limit_mb=config.memory_limit_mb,
            control_channel=control,
            deployment=config.deployment,
            code_cache=self._code_cache,
        )
        return _RunStarter(
            warm,
            WorkspaceHookRunner(manifest_path=manifest_path, stream_output=config.stream_output),
            fallback=partial(_cold_starter, config, workspace_root, control),
            logger=self._logger,
        )

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: FlowyardJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Stop a run of ours that is still being prepared (BaseWorker's pending-run cancel)."""
        assert self._executors is not None
        manager = self._executors.process_manager
        pid = int(str(infrastructure_pid).rsplit(":", 1)[-1])
        for flow_run_id in manager.flow_run_ids():
            handle = manager.get(flow_run_id)
            if handle is not None and handle.pid == pid:
                await manager.kill(flow_run_id, grace_seconds=grace_seconds)
                return
        raise InfrastructureNotFound(f"No flow run process {pid} on this worker.")


def _cold_starter(
    config: FlowyardJobConfiguration, workspace_root: Path, control: Any
) -> _RunStarter:
    """Prefect's process-worker path: a supervisor process runs the pull steps, then execs
    `python -m prefect.engine`."""
    starter = WorkspaceResolvingEngineCommandStarter(
        workspace_root=workspace_root,
        command=None,
        stream_output=config.stream_output,
        control_channel=control,
        source_cwd=workspace_root,
        environment=config.env,
    )
    return _RunStarter(starter, starter.hook_runner, close=starter.close)


class _RunStarter:
    """The starter a run uses, its hook runner, and a cold fallback when no warm
    interpreter can be had (the hooks then follow whichever path actually ran)."""

    def __init__(
        self,
        starter: ProcessStarter,
        hook_runner: FlowRunHookRunner,
        *,
        fallback: Callable[[], _RunStarter] | None = None,
        close: Callable[[], None] | None = None,
        logger: Any = None,
    ) -> None:
        self._starter = starter
        self._hooks = hook_runner
        self._fallback = fallback
        self._fallen_back: _RunStarter | None = None
        self._close = close
        self._logger = logger

    @property
    def hook_runner(self) -> FlowRunHookRunner:
        return self

    @property
    def warm(self) -> ZygoteStarter | None:
        """The warm starter, if this run was (or is being) forked from a zygote."""
        if self._fallen_back is None and isinstance(self._starter, ZygoteStarter):
            return self._starter
        return None

    async def run_cancellation_hooks(self, flow_run: FlowRun, state: Any) -> None:
        await self._hooks.run_cancellation_hooks(flow_run, state)

    async def run_crashed_hooks(self, flow_run: FlowRun, state: Any) -> None:
        await self._hooks.run_crashed_hooks(flow_run, state)

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._starter.start(flow_run, task_status=task_status)
        except ZygoteUnavailable as exc:
            if self._fallback is None:
                raise
            if self._logger is not None:
                self._logger.warning("No warm interpreter (%s): starting the run cold", exc)
            self._fallen_back = cold = self._fallback()
            self._starter, self._hooks = cold._starter, cold._hooks
            await self._starter.start(flow_run, task_status=task_status)

    def close(self) -> None:
        if self._close is not None:
            self._close()
        if self._fallen_back is not None:
            self._fallen_back.close()
