"""Talking to supervisord over its owner-only Unix socket."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from flowyard.config.paths import Paths
from flowyard.errors import FlowyardError
from flowyard.services.base import binary

# Variables a user's shell may carry that must not leak into platform processes.
# (weed mini even turns AWS_* keys into a second S3 login, and reads S3_* and WEED_*.)
_CLIENT_PREFIXES = ("PREFECT_", "AWS_", "MLFLOW_", "FLOWYARD_", "S3_", "WEED_")


class Supervisor:
    def __init__(self, paths: Paths):
        self.paths = paths

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.paths.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    @property
    def rpc(self) -> Any:
        return self._proxy().supervisor

    def pid(self) -> int | None:
        try:
            pid = int(self.paths.supervisor_pid.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def running(self) -> bool:
        if self.pid() is None:
            return False
        try:
            return self.rpc.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_PREFIXES)}
        result = subprocess.run(
            [binary("supervisord"), "-c", str(self.paths.supervisor_conf)],
            env=env,
            capture_output=True,
            text=True,
            cwd=self.paths.home,
        )
        if result.returncode != 0:
            raise FlowyardError(
                f"supervisord did not start: {(result.stderr or result.stdout).strip()}",
                fix=f"Read {self.paths.log_file('supervisord')}.",
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.1)
        raise FlowyardError(
            "supervisord started but does not answer on its socket.",
            fix=f"Read {self.paths.log_file('supervisord')}.",
        )

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.rpc.getProcessInfo(name))

    def all_info(self) -> list[dict[str, Any]]:
        return [dict(i) for i in self.rpc.getAllProcessInfo()]

    def start_process(self, name: str) -> None:
        try:
            self.rpc.startProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def stop_process(self, name: str) -> None:
        try:
            self.rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise

    def shutdown(self, timeout: float = 60) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            self.rpc.shutdown()
        except (OSError, xmlrpc.client.Error):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
