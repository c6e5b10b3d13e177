"""Every private Prefect name the `flowyard` worker relies on, and its patches of Prefect.

The worker reuses Prefect's own machinery for a run's lifecycle (`prefect.runner._*`: the
flow-run executor, process manager, control channel, workspace preparation, hook runners)
and extends `BaseWorker` through a few of its underscore methods. None of that is public
API: a Prefect release may rename, move or re-sign any of it. So the rest of
`flowyard.worker` imports private Prefect names only from here, overrides and reads only
the underscore members listed here, and patches Prefect only through the functions here.

Written against Prefect 3.9.1. On a Prefect upgrade:

1. run `pytest tests/unit/test_prefect_private.py`: it imports every name below, checks the
   parameters we pass or override, and the attributes we read, and names what is missing;
2. fix what it names here (a moved module, a renamed parameter), or in the one worker
   module that uses it (each name below says who);
3. then run `tests/integration/test_fast_worker.py`: behaviour (e.g. what a patch relies on
   Prefect doing) is only checked there.

Stdlib private names (`threading._shutdown` in `forked_run`) and those of other libraries
(`warmup`: pydantic, botocore) are not Prefect's and stay where they are used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

# -- private modules' names -------------------------------------------------------------
# config: a job variable's working_dir, validated as the process worker validates it.
from prefect._internal.schemas.validators import validate_working_dir

# forked_run: the engine's entry point for a prepared workspace (what `python -m
# prefect.engine` calls), run in the forked process itself.
from prefect.flow_engine import _run_flow_from_runtime_entrypoint

# starter, executors: the control channel a run is registered with (cancel before SIGTERM).
from prefect.runner._control_channel import ControlChannel

# executors: one executor context for all runs; worker_type/executors: the starter protocol.
from prefect.runner._flow_run_executor import (
    FlowRunExecutor,
    FlowRunExecutorContext,
    ProcessStarter,
)

# worker_type: Prefect's hook runner for an explicit command; the hook-runner protocol.
from prefect.runner._hook_runner import FlowRunHookRunner, HookRunner

# starter: what a started run hands the executor (pid, termination of its group).
from prefect.runner._process_manager import ProcessHandle, ProcessManager

# worker_type: the cold path with an explicit command, as the process worker runs it.
from prefect.runner._starter_engine import EngineCommandStarter

# executors: what the shared context proposes run states with.
from prefect.runner._state_proposer import StateProposer

# worker_type: hooks of a warm run, from the manifest the forked run wrote.
from prefect.runner._workspace_hook_runner import WorkspaceHookRunner

# forked_run: the deployment's pull steps, run in the forked process before the flow.
from prefect.runner._workspace_resolver import prepare_workspace, prepare_workspace_for_flow_run

# forked_run: the manifest the workspace hook runner reads after the run.
from prefect.runner._workspace_runtime import PreparedWorkspaceManifest, write_private_model

# worker_type: the cold path (supervisor, then engine); forked_run: the same workspace
# environment and command selection the supervisor makes.
from prefect.runner._workspace_starter import (
    WorkspaceResolvingEngineCommandStarter,
    _workspace_command,
    workspace_environment,
)

# forked_run: the supervisor's handling of the runner's own environment and hook command.
from prefect.runner._workspace_supervisor import (
    _hook_command,
    _restore_runner_environment,
    _runner_owns_environment_key,
)

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "BASE_WORKER_ATTRIBUTES",
    "BASE_WORKER_OVERRIDES",
    "JOB_CONFIGURATION_ATTRIBUTES",
    "JOB_CONFIGURATION_OVERRIDES",
    "RUN_MODULES",
    "WORKER_CLASS_ATTRIBUTES",
    "ControlChannel",
    "EngineCommandStarter",
    "FlowRunExecutor",
    "FlowRunExecutorContext",
    "FlowRunHookRunner",
    "HookRunner",
    "PreparedWorkspaceManifest",
    "ProcessHandle",
    "ProcessManager",
    "ProcessStarter",
    "StateProposer",
    "WorkspaceHookRunner",
    "WorkspaceResolvingEngineCommandStarter",
    "_hook_command",
    "_restore_runner_environment",
    "_run_flow_from_runtime_entrypoint",
    "_runner_owns_environment_key",
    "_workspace_command",
    "patch_cancellation_manager",
    "prepare_workspace",
    "prepare_workspace_for_flow_run",
    "replace_client_reads",
    "skip_heartbeat_thread_join",
    "state_proposer",
    "validate_working_dir",
    "workspace_environment",
    "write_private_model",
]

# -- private modules a forked run needs: pre-imported by the zygote (zygote_server) ------
RUN_MODULES = (
    "prefect.runner._workspace_resolver",
    "prefect.runner._workspace_starter",
    "prefect.runner._workspace_supervisor",
    # The engine's control-channel client (cancel before SIGTERM), imported lazily by it.
    "prefect._internal.control_listener",
)

# -- underscore members of Prefect's classes we override or read ------------------------
# worker_type.FlowyardWorker overrides these (calling super()); a renamed one would silently
# stop being called. Parameter names matter: BaseWorker passes some by keyword.
BASE_WORKER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_submit_scheduled_flow_runs": ("flow_run_response",),
    "_propose_pending_state": ("flow_run",),
    "_submit_run": ("flow_run",),
    "_release_limit_slot": ("flow_run_id",),
}
# Instance attributes of BaseWorker that FlowyardWorker reads or uses.
BASE_WORKER_ATTRIBUTES = ("_exit_stack", "_logger", "_work_pool", "_submitting_flow_run_ids")
# Class attributes Prefect reads for the worker type's listing (get_description etc.).
WORKER_CLASS_ATTRIBUTES = ("_description", "_documentation_url", "_logo_url")
# config.FlowyardJobConfiguration overrides these BaseJobConfiguration hooks (no parameters).
JOB_CONFIGURATION_OVERRIDES = ("_base_environment", "_base_flow_run_command")
# ... and reads this one (the objects prepare_for_flow_run was given, "deployment" among them).
JOB_CONFIGURATION_ATTRIBUTES = ("_related_objects",)


# -- reads of private attributes --------------------------------------------------------
def state_proposer(ctx: FlowRunExecutorContext) -> StateProposer:
    """executors: the context's state proposer, shared by every run's executor."""
    return ctx._state_proposer


# -- patches ----------------------------------------------------------------------------
# Each is applied explicitly by the module named in its docstring, never at import.

CancelRun = Callable[["FlowRun", "str | None"], Awaitable[None]]


def patch_cancellation_manager(
    ctx: FlowRunExecutorContext,
    *,
    hook_runner: FlowRunHookRunner,
    wrap_cancel: Callable[[CancelRun], CancelRun],
) -> None:
    """executors: make one entered executor context serve every run of the worker.

    Why: the context builds its `CancellationManager` with the context's single hook runner
    (meant for one run), so cancellation hooks would run against the wrong flow; ours routes
    each call to the run's own hook runner. And its `cancel` is wrapped so the worker can
    wait for an in-flight cancellation (kill, hooks, Cancelled state) before removing the
    run's files, which leaving a per-run context used to guarantee.
    """
    manager = ctx._cancellation_manager
    manager._hook_runner = hook_runner
    manager.cancel = wrap_cancel(manager.cancel)  # type: ignore[method-assign,assignment]


def skip_heartbeat_thread_join() -> None:
    """forked_run: don't hold the run's slot while the heartbeat thread finishes a 1 s sleep.

    Why: the sync engine joins its heartbeat thread at the end of the run, and the thread only
    notices the stop request between `time.sleep(1)` calls: +0.5 s per run on average. The
    async engine already skips the join (`join_on_exit=False`); the thread is a daemon that
    returns at its next check without sending another heartbeat. Applied in the forked run's
    process only, just before the engine starts.
    """
    import prefect.flow_engine as engine

    original = engine._send_heartbeats

    @contextmanager
    def send_heartbeats(run_engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(run_engine, join_on_exit=False):
            yield

    engine._send_heartbeats = send_heartbeats  # type: ignore[assignment]


def replace_client_reads(
    client: PrefectClient,
    *,
    read_deployment: Callable[..., Awaitable[Any]],
    read_flow: Callable[..., Awaitable[Any]],
) -> None:
    """reads: replace two read methods on the worker's own API client (that instance only).

    Why: `BaseWorker._submit_run` reads a run's deployment, then
    `BaseJobConfiguration.resolve_for_flow_run` reads it again (and the flow) moments later,
    both through `self.client`; a short cache on this client saves those round trips.
    Relies on Prefect making those reads through the worker's client, which only the
    integration tests can see.
    """
    patched: Any = client
    patched.read_deployment = read_deployment
    patched.read_flow = read_flow


# -- the integrations' import cache (warmup) ------------------------------------------------
# prefect._internal.plugins.collections: `safe_load_entrypoints` imports entry points;
# `_collections` caches what `load_prefect_collections()` loaded, which later calls return.
COLLECTIONS_MODULE = "prefect._internal.plugins.collections"


def load_collections_except(skipped: frozenset[str]) -> list[str]:
    """`load_prefect_collections()` without the named `prefect.collections` entry points,
    cached as Prefect caches its own load (so a run's later call returns it and imports
    nothing more). A skipped integration is imported by the flows that use it, after the
    fork. Returns the names skipped."""
    import importlib
    from importlib.metadata import EntryPoints, entry_points

    collections = importlib.import_module(COLLECTIONS_MODULE)
    found = list(entry_points(group="prefect.collections"))
    kept = [ep for ep in found if (ep.name or ep.value) not in skipped]
    loaded = collections.safe_load_entrypoints(EntryPoints(kept))
    setattr(collections, "_collections", loaded)  # noqa: B010 - Prefect's module-level cache
    return [ep.name for ep in found if ep not in kept]
