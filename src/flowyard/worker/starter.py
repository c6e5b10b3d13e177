"""A Prefect `ProcessStarter` that forks the run from a warm interpreter.

Plugs into Prefect's own `FlowRunExecutor`, which keeps doing everything around the process:
state proposals, the cancellation control channel, crash inference from the exit status,
crashed/cancellation hooks. Only "start a process and wait for it" is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
from prefect.utilities.processutils import sanitize_subprocess_env

from flowyard.worker import wire
from flowyard.worker.config import RUN_SETTINGS, settings_environment_variables
from flowyard.worker.prefect_private import ProcessHandle
from flowyard.worker.zygote_pool import ForkConnection, WarmKey, ZygotePool

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

    from flowyard.worker.prefect_private import ControlChannel


class ForkedProcess:
    """A run forked by a zygote: not our child, so its exit status comes over the socket."""

    def __init__(self, pid: int, conn: ForkConnection) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # CPU seconds and peak RSS of the run, from the zygote's wait4().
        self.cpu_seconds: float | None = None
        self.maxrss_kb: int | None = None
        self._conn = conn

    async def wait(self) -> int:
        try:
            message = await wire.arecv(self._conn.reader)
            self.returncode = int(message["exit"])
            self.cpu_seconds = message.get("cpu")
            self.maxrss_kb = message.get("maxrss_kb")
        except (EOFError, OSError, KeyError, ValueError, wire.ProtocolError):
            # The zygote died; its parent-death signal has sent the run SIGTERM.
            await _wait_gone(self.pid)
            self.returncode = -signal.SIGTERM
        finally:
            self._conn.close()
        return self.returncode


async def _wait_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        gone = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


class GroupTerminationScope:
    """Signals go to the run's whole process group (it is a session leader)."""

    wait_after_graceful_kill = True

    def is_alive(self, pid: int) -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def graceful_kill(self, pid: int) -> None:
        os.killpg(pid, signal.SIGTERM)

    def hard_kill(self, pid: int) -> None:
        os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        pass


def run_environment(
    flow_run: FlowRun, job_env: dict[str, str | None], control_env: dict[str, str]
) -> dict[str, str]:
    """The environment Prefect's EngineCommandStarter gives a workspace-prepared run."""
    env: dict[str, str | None] = {**os.environ}
    env.update(settings_environment_variables())
    env.update(RUN_SETTINGS)
    env.update(job_env)
    env.update(
        {
            "PREFECT__FLOW_RUN_ID": str(flow_run.id),
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
            **control_env,
        }
    )
    return sanitize_subprocess_env(env)


class ZygoteStarter:
    def __init__(
        self,
        *,
        pool: ZygotePool,
        warm_imports: list[str],
        job_env: dict[str, str | None],
        workspace_root: Path,
        manifest_path: Path,
        stream_output: bool,
        memory_limit_mb: int | None,
        control_channel: ControlChannel | None,
        deployment: DeploymentResponse | None = None,
        code_cache: Path | None = None,
    ) -> None:
        self._pool = pool
        self._code_cache = code_cache
        self._deployment = deployment
        self._warm_imports = warm_imports
        self._job_env = job_env
        self._workspace_root = workspace_root
        self._manifest_path = manifest_path
        self._stream_output = stream_output
        self._memory_limit_mb = memory_limit_mb
        self._control_channel = control_channel
        self.wait_for_zygote_seconds = 0.0
        self.process: ForkedProcess | None = None

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        control_env: dict[str, str] = {}
        registered = False
        if self._control_channel is not None:
            with contextlib.suppress(RuntimeError):
                # Lets the runner deliver "cancel" before its SIGTERM, so the engine
                # reports Cancelled rather than Crashed.
                port, token = self._control_channel.register(flow_run.id)
                control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
        handed_off = False
        try:
            env = run_environment(flow_run, self._job_env, control_env)
            request: dict[str, Any] = {
                "mode": "engine",
                "flow_run_id": str(flow_run.id),
                "env": env,
                "cwd": str(self._workspace_root),
                "workspace_root": str(self._workspace_root),
                "manifest_path": str(self._manifest_path),
                "stream_output": self._stream_output,
                "memory_limit_mb": self._memory_limit_mb,
                # Where pulled code is kept between runs (flowyard.worker.code_cache).
                "code_cache": str(self._code_cache) if self._code_cache else None,
                "flow_run": flow_run.model_dump(mode="json"),
                "deployment": self._deployment.model_dump(mode="json")
                if self._deployment is not None
                else None,
            }
            key = WarmKey.for_run(self._warm_imports, env)
            pid, conn, self.wait_for_zygote_seconds = await self._pool.fork(key, request)
            self.process = process = ForkedProcess(pid, conn)
            handed_off = True
            task_status.started(
                ProcessHandle(cast(Any, process), termination_scope=GroupTerminationScope())
            )
            await process.wait()
        finally:
            if registered and not handed_off and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
