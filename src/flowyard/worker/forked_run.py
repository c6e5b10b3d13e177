"""What a forked flow-run process does: become the run's own process, then run it.

Mirrors Prefect's cold path (`prefect.runner._workspace_supervisor` preparing the workspace
with the deployment's pull steps, then exec'ing `python -m prefect.engine`), except that
the engine runs in this same, already-warm process instead of a fresh interpreter. When the
prepared workspace asks for another interpreter (`uv run` auto-install), it execs it, as
the supervisor does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from uuid import UUID

from flowyard.worker import code_cache
from flowyard.worker.zygote_server import set_parent_death_signal

# The interpreter's own sys.path, minus the zygote's script directory (sys.path[0]).
_BASE_SYS_PATH = list(sys.path[1:])


# Set in a deployment's env to a directory: each run writes a cProfile of itself there.
PROFILE_ENV = "FLOWYARD_WORKER_PROFILE_DIR"


class Terminated(BaseException):
    """SIGTERM outside Prefect's own handler (e.g. during pull steps)."""


# Set once the flow engine runs: its SIGTERM bridge owns crash reporting from then on.
_engine_started = False
_zygote_pid = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _engine_started:
        # The engine's bridge has reported the crash and re-delivers the signal to the
        # previous handler (this one) expecting the process to die, as with SIG_DFL.
        _finish(1, True, _zygote_pid)
    raise Terminated()


def run_child(request: dict[str, Any], zygote_pid: int) -> NoReturn:
    """Never returns: the process ends here, whatever the run does."""
    global _zygote_pid
    _zygote_pid = zygote_pid
    code = 1
    terminated = False
    try:
        # Own session and process group: cancellation signals the whole group (the run
        # and anything it started) and nothing else; the worker's group is not ours.
        os.setsid()
        # The zygote dies only when the worker does; then SIGTERM makes Prefect's engine
        # report the run Crashed before exiting.
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != zygote_pid:
            raise Terminated()
        signal.signal(signal.SIGTERM, _on_sigterm)
        _prepare_process(request)
        code = _profiled(request) if os.environ.get(PROFILE_ENV) else _run(request)
    except SystemExit as exc:
        code = _exit_code(exc)
    except Terminated:
        terminated = True
    except BaseException:
        traceback.print_exc()
    _finish(code, terminated, zygote_pid)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _prepare_process(request: dict[str, Any]) -> None:
    if not request.get("stream_output", True):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    limit = request.get("memory_limit_mb")
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit * 2**20, limit * 2**20))
    os.chdir(request["cwd"])
    set_environment(request["env"])
    sys.argv = ["prefect.engine"]


def settings_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables Prefect's settings (and logging) are built from."""
    return {
        k: v for k, v in env.items() if k.startswith("PREFECT_") and not k.startswith("PREFECT__")
    }


def baseline_settings_environment() -> dict[str, str]:
    """What the zygote's settings were built from, computed as the worker computes a run's
    environment (its env plus its explicitly set settings), so equal means unchanged."""
    from prefect.settings import get_current_settings

    return settings_environment(
        {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    )


# Captured once in the zygote (this module is pre-imported there).
_ZYGOTE_SETTINGS_ENV: dict[str, str] | None = None


def set_environment(env: dict[str, str]) -> None:
    """Replace os.environ, sys.path and Prefect's settings as a fresh process would have them."""
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = _dedupe([os.getcwd(), *pythonpath, *_BASE_SYS_PATH])
    if settings_environment(env) == _ZYGOTE_SETTINGS_ENV:
        # Same settings as the zygote built at import: rebuilding them and the logging
        # config would cost ~0.2 CPU-s for the same result.
        return
    import prefect.context
    from prefect.logging.configuration import setup_logging

    prefect.context.refresh_global_settings_context()
    setup_logging(incremental=False)


def capture_zygote_settings() -> None:
    """Called by the zygote after its imports."""
    global _ZYGOTE_SETTINGS_ENV
    _ZYGOTE_SETTINGS_ENV = baseline_settings_environment()


def _dedupe(entries: list[str]) -> list[str]:
    seen: set[str] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]  # type: ignore[func-returns-value]


def _run(request: dict[str, Any]) -> int:
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.logging.handlers import APILogHandler
    from prefect.utilities.processutils import command_from_string, sanitize_subprocess_env

    from flowyard.worker.prefect_private import (
        PreparedWorkspaceManifest,
        _hook_command,
        _restore_runner_environment,
        _run_flow_from_runtime_entrypoint,
        _runner_owns_environment_key,
        _workspace_command,
        prepare_workspace,
        prepare_workspace_for_flow_run,
        skip_heartbeat_thread_join,
        workspace_environment,
        write_private_model,
    )

    flow_run_id = UUID(request["flow_run_id"])
    runner_environment = {k: v for k, v in os.environ.items() if _runner_owns_environment_key(k)}

    async def prepare() -> Any:
        try:
            if request.get("flow_run") and request.get("deployment"):
                # The worker read both moments ago: saves two API round trips.
                async with get_client() as client:
                    return await prepare_workspace(
                        client,
                        FlowRun.model_validate(request["flow_run"]),
                        DeploymentResponse.model_validate(request["deployment"]),
                        request["workspace_root"],
                    )
            return await prepare_workspace_for_flow_run(flow_run_id, request["workspace_root"])
        finally:
            await APILogHandler.aflush()

    if request.get("code_cache"):
        # Code pulled by content folder is kept for this worker's later runs of it.
        code_cache.install(Path(request["code_cache"]))
    # Pull steps run here, in this process, so what they change (cwd, sys.path, env) is
    # what the flow sees, as in the supervisor that execs the engine.
    workspace = anyio.run(prepare)
    environment = sanitize_subprocess_env(workspace_environment(workspace))
    _restore_runner_environment(environment, runner_environment)
    environment["PREFECT__FLOW_RUN_ID"] = str(flow_run_id)
    environment["PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"] = "false"
    environment["PREFECT__FLOW_ENTRYPOINT"] = workspace.runtime_entrypoint
    selected = _workspace_command(workspace, None, environment=environment)
    command = (
        command_from_string(selected)
        if selected is not None
        else [sys.executable, "-m", "prefect.engine"]
    )
    # Read by the worker's hook runner if the run crashes or is cancelled.
    write_private_model(
        Path(request["manifest_path"]),
        PreparedWorkspaceManifest(
            working_directory=workspace.working_directory,
            project_root=workspace.project_root,
            runtime_entrypoint=workspace.runtime_entrypoint,
            hook_command=_hook_command(command),
            environment=environment,
        ),
    )
    os.chdir(workspace.working_directory)
    if selected is not None:
        # The workspace wants its own interpreter (uv-managed dependencies): cold start.
        os.execvpe(command[0], command, environment)
    set_environment(environment)
    skip_heartbeat_thread_join()
    global _engine_started
    _engine_started = True

    _run_flow_from_runtime_entrypoint(flow_run_id, workspace.runtime_entrypoint)
    return 0


def _profiled(request: dict[str, Any]) -> int:
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(_run, request)
    finally:
        out = Path(os.environ[PROFILE_ENV]) / f"{request['flow_run_id']}.prof"
        with contextlib.suppress(OSError):
            profile.dump_stats(out)


def _finish(code: int, terminated: bool, zygote_pid: int) -> NoReturn:
    """Shut down as the interpreter would (drain Prefect's log and event workers), then exit."""
    with contextlib.suppress(BaseException):
        signal.signal(signal.SIGTERM, signal.SIG_IGN if terminated else _on_sigterm)
        if terminated:
            # Drain Prefect's log and event workers (their hooks live in threading's own
            # exit list) without waiting on the run's other threads.
            for hook in reversed(threading._threading_atexits):  # type: ignore[attr-defined]
                hook()
        else:
            # Runs those hooks, then joins non-daemon threads, as interpreter exit does.
            threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    if os.getppid() != zygote_pid:
        # Orphaned (the worker and its zygote are gone): take down whatever this run
        # started, and ourselves with it, so nothing outlives the worker.
        os.killpg(0, signal.SIGKILL)
    if terminated:
        # Exit "killed by SIGTERM", as the cold path's engine process would.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    os._exit(code)
