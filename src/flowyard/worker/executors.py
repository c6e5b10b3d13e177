"""One Prefect `FlowRunExecutorContext` for the worker's lifetime, shared by all its runs.

Prefect's process worker opens a context per run: an API client, an events websocket, a
cancellation subscription and a control-channel listener, each time. Shared, those cost
nothing per run. The context's single hook runner becomes a per-run dispatcher, and each run
waits for an in-flight cancellation of itself to finish before its files are removed (what
leaving the per-run context did).
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio

from flowyard.worker.prefect_private import (
    FlowRunExecutor,
    FlowRunExecutorContext,
    patch_cancellation_manager,
    state_proposer,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, State

    from flowyard.worker.prefect_private import (
        CancelRun,
        ControlChannel,
        FlowRunHookRunner,
        ProcessManager,
        ProcessStarter,
    )


class _HookDispatcher:
    """Routes the context's hook calls to the runner of the run they are about."""

    def __init__(self) -> None:
        self.runners: dict[UUID, FlowRunHookRunner] = {}

    async def run_cancellation_hooks(self, flow_run: FlowRun, state: State) -> None:
        if runner := self.runners.get(flow_run.id):
            await runner.run_cancellation_hooks(flow_run, state)

    async def run_crashed_hooks(self, flow_run: FlowRun, state: State) -> None:
        if runner := self.runners.get(flow_run.id):
            await runner.run_crashed_hooks(flow_run, state)


class SharedExecutors:
    def __init__(self) -> None:
        self._ctx = FlowRunExecutorContext()
        self._hooks = _HookDispatcher()
        self._cancelling: dict[UUID, anyio.Event] = {}

    async def __aenter__(self) -> SharedExecutors:
        await self._ctx.__aenter__()
        patch_cancellation_manager(self._ctx, hook_runner=self._hooks, wrap_cancel=self._tracked)
        return self

    def _tracked(self, cancel: CancelRun) -> CancelRun:
        """`cancel`, recording that a cancellation of the run is in flight (see release)."""

        async def tracked_cancel(flow_run: FlowRun, state_msg: str | None = None) -> None:
            done = self._cancelling.setdefault(flow_run.id, anyio.Event())
            try:
                await cancel(flow_run, state_msg)
            finally:
                done.set()
                self._cancelling.pop(flow_run.id, None)

        return tracked_cancel

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        await self._terminate_all()
        return await self._ctx.__aexit__(exc_type, exc, tb)

    async def _terminate_all(self, grace: float = 10) -> None:
        """SIGTERM every run at once (each engine reports its run Crashed), then wait.

        Prefect's process manager stops runs one after another, polling each every 3 s:
        with a few runs that outlasts supervisor's stop timeout. After this it finds them
        gone (or SIGKILLs what ignored SIGTERM)."""
        manager = self._ctx.process_manager
        handles = [h for i in manager.flow_run_ids() if (h := manager.get(i)) is not None]
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.graceful_kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            while any(h.is_alive() for h in handles):
                await anyio.sleep(0.2)

    @property
    def control_channel(self) -> ControlChannel:
        return self._ctx.control_channel

    @property
    def process_manager(self) -> ProcessManager:
        return self._ctx.process_manager

    def create(
        self, flow_run: FlowRun, starter: ProcessStarter, hook_runner: FlowRunHookRunner
    ) -> FlowRunExecutor:
        self._hooks.runners[flow_run.id] = hook_runner
        return FlowRunExecutor(
            flow_run=flow_run,
            starter=starter,
            process_manager=self._ctx.process_manager,
            state_proposer=state_proposer(self._ctx),
            hook_runner=hook_runner,
            get_attempt_conclusion=self._ctx.control_channel.get_conclusion,
            # BaseWorker has already proposed Submitting.
            propose_submitting=False,
        )

    async def release(self, flow_run_id: UUID, timeout: float = 60) -> None:
        """After the run's process exited: let a cancellation of it finish its hooks."""
        if done := self._cancelling.get(flow_run_id):
            with anyio.move_on_after(timeout):
                await done.wait()
        self._hooks.runners.pop(flow_run_id, None)
