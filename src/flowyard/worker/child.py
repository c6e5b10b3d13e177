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

from flowyard.worker.zygote import set_parent_death_signal

# The interpreter's own sys.path, minus the zygote's script directory (sys.path[0]).
_BASE_SYS_PATH = list(sys.path[1:])


# Set in a deployment's env to a directory: each run writes a cProfile of itself there.
PROFILE_ENV = "FLOWYARD_WORKER_PROFILE_DIR"


class Terminated(BaseException):
    """SIGTERM outside Prefect's own handler (e.g. during pull steps)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def run_child(request: dict[str, Any], zygote_pid: int) -> NoReturn:
    """Never returns: the process ends here, whatever the run does."""
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


def set_environment(env: dict[str, str]) -> None:
    """Replace os.environ, sys.path and Prefect's settings as a fresh process would have them."""
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = _dedupe([os.getcwd(), *pythonpath, *_BASE_SYS_PATH])
    import prefect.context
    from prefect.logging.configuration import setup_logging

    # Settings and logging were read from the zygote's environment at import time.
    prefect.context.refresh_global_settings_context()
    setup_logging(incremental=False)


def _dedupe(entries: list[str]) -> list[str]:
    seen: set[str] = set()
    return [e for e in entries if not (e in seen or seen.add(e))]  # type: ignore[func-returns-value]


def _run(request: dict[str, Any]) -> int:
    from prefect.logging.handlers import APILogHandler
    from prefect.runner._workspace_resolver import prepare_workspace_for_flow_run
    from prefect.runner._workspace_runtime import PreparedWorkspaceManifest, write_private_model
    from prefect.runner._workspace_starter import _workspace_command, workspace_environment
    from prefect.runner._workspace_supervisor import (
        _restore_runner_environment,
        _runner_owns_environment_key,
    )
    from prefect.utilities.processutils import command_from_string, sanitize_subprocess_env

    import anyio

    flow_run_id = UUID(request["flow_run_id"])
    runner_environment = {k: v for k, v in os.environ.items() if _runner_owns_environment_key(k)}

    async def prepare() -> Any:
        try:
            return await prepare_workspace_for_flow_run(flow_run_id, request["workspace_root"])
        finally:
            await APILogHandler.aflush()

    # Pull steps run here, in this process, so what they change (cwd, sys.path, env) is
    # what the flow sees, as in the supervisor that execs the engine.
    workspace = anyio.run(prepare)
    environment = sanitize_subprocess_env(workspace_environment(workspace))
    _restore_runner_environment(environment, runner_environment)
    environment["PREFECT__FLOW_RUN_ID"] = str(flow_run_id)
    environment["PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"] = "false"
    environment["PREFECT__FLOW_ENTRYPOINT"] = workspace.runtime_entrypoint
    selected = _workspace_command(workspace, None, environment=environment)
    hook_bootstrap = Path(sys.modules["prefect.runner._workspace_starter"].__file__ or "")
    hook_command = [sys.executable, str(hook_bootstrap.with_name("_workspace_runtime_bootstrap.py")), "hook"]
    write_private_model(
        Path(request["manifest_path"]),
        PreparedWorkspaceManifest(
            working_directory=workspace.working_directory,
            project_root=workspace.project_root,
            runtime_entrypoint=workspace.runtime_entrypoint,
            hook_command=None if selected else hook_command,
            environment=environment,
        ),
    )
    os.chdir(workspace.working_directory)
    if selected is not None:
        # The workspace wants its own interpreter (uv-managed dependencies): cold start.
        command = command_from_string(selected)
        os.execvpe(command[0], command, environment)
    set_environment(environment)
    from prefect.flow_engine import _run_flow_from_runtime_entrypoint

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
