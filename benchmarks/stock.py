"""Stock Prefect as the reference for start-up time and idle memory.

`prefect server start` with Prefect's defaults (SQLite, in-memory broker, background
services in the same process) plus one `prefect worker start --type process`: the smallest
stock setup that can run a deployment, as a user following Prefect's quickstart gets.
Analytics are switched off only so that nothing leaves the machine.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import procs
from flowyard.config.model import LOOPBACK
from flowyard.platform.lifecycle import tail
from flowyard.services.base import binary
from flowyard.testing import free_port

POOL = "bench-stock"
WORKER = "bench-stock-worker"


@dataclass
class StockPrefect:
    home: Path
    port: int = field(default_factory=lambda: free_port(set()))
    server: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/api"

    def _spawn(self, argv: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / log).open("ab") as out:
            return subprocess.Popen(
                argv,
                env={**procs.clean_env(), **env},
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _registered(self) -> bool:
        try:
            r = httpx.post(f"{self.api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=2)
            return r.status_code == 200 and any(w["name"] == WORKER for w in r.json())
        except httpx.HTTPError:
            return False

    def _wait(self, check: object, proc: subprocess.Popen[bytes], log: str, end: float) -> None:
        assert callable(check)
        while not check():
            if proc.poll() is not None:
                raise RuntimeError(f"stock {log} exited:\n{tail(self.home / log)}")
            if time.monotonic() > end:
                raise RuntimeError(f"stock {log} not ready in time:\n{tail(self.home / log)}")
            time.sleep(0.1)

    def start(self, timeout: float = 240) -> dict[str, float]:
        """Start server then worker; seconds until the API answered and the worker registered."""
        t0 = time.monotonic()
        end = t0 + timeout
        common = {
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_PROFILES_PATH": str(self.home / "profiles.toml"),
        }
        self.server = self._spawn(
            [binary("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(self.port)],
            {**common, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            "server.log",
        )
        self._wait(self._healthy, self.server, "server.log", end)
        api_ready = time.monotonic() - t0
        self.worker = self._spawn(
            [
                binary("prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--type",
                "process",
                "--name",
                WORKER,
            ],
            {**common, "PREFECT_API_URL": self.api_url},
            "worker.log",
        )
        self._wait(self._registered, self.worker, "worker.log", end)
        return {"api_ready_s": api_ready, "ready_s": time.monotonic() - t0}

    def stop(self) -> None:
        for proc in (self.worker, self.server):
            if proc is not None:
                procs.stop_tree(proc.pid)
                proc.poll()
        self.worker = self.server = None

    def pss_bytes(self) -> dict[str, int]:
        out = {}
        for name, proc in (("prefect server", self.server), ("prefect worker", self.worker)):
            if proc is not None:
                out[name] = procs.tree_pss_bytes(proc.pid)[0]
        return out
