"""The `flowyard` worker's parts that need no platform: registration, the job template, the
cold-start rules, and the zygote process itself (pings, child zygotes, stale-code refusal)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowyard.worker import wire
from flowyard.worker.config import FlowyardJobConfiguration
from flowyard.worker.worker_type import needs_cold_start


def test_registered_with_its_own_job_template() -> None:
    from prefect.workers.base import BaseWorker
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    worker_class = BaseWorker.get_worker_class_from_type("flowyard")
    assert worker_class is not None and worker_class.__name__ == "FlowyardWorker"
    template = asyncio.run(get_default_base_job_template_for_infrastructure_type("flowyard"))
    assert template is not None
    variables = template["variables"]["properties"]
    for name in ("env", "working_dir", "stream_output", "warm_start", "warm_imports"):
        assert name in variables
    assert template["job_configuration"]["warm_imports"] == "{{ warm_imports }}"


@pytest.mark.parametrize(
    ("values", "cold"),
    [
        ({}, False),
        ({"env": {"PYTHONPATH": "/srv/lib", "MY_VAR": "x"}}, False),
        ({"warm_start": False}, True),
        ({"command": "python my_runner.py"}, True),
        ({"env": {"PYTHONHASHSEED": "7"}}, True),
        ({"env": {"LD_PRELOAD": "/lib/x.so"}}, True),
    ],
)
def test_cold_start_only_when_a_fork_cannot_honour_the_job(
    values: dict[str, Any], cold: bool
) -> None:
    from prefect.client.schemas.objects import FlowRun

    config = FlowyardJobConfiguration(**values)
    config.prepare_for_flow_run(FlowRun(flow_id="00000000-0000-0000-0000-000000000000"))
    assert (needs_cold_start(config) is not None) is cold


def test_wire_round_trip() -> None:
    a, b = socket.socketpair()
    with a, b:
        wire.send(a, {"op": "ping", "n": 1})
        assert wire.recv(b) == {"op": "ping", "n": 1}


class ZygoteProcess:
    def __init__(self, tmp: Path) -> None:
        self.socket = tmp / "z.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket))
        listener.listen(8)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "flowyard.worker.zygote_server"),
                *("--fd", str(listener.fileno()), "--parent", str(os.getpid())),
            ],
            pass_fds=(listener.fileno(),),
        )
        listener.close()

    def request(self, path: Path, message: dict[str, Any]) -> tuple[dict[str, Any], socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        sock.connect(str(path))
        wire.send(sock, message)
        return wire.recv(sock), sock


def test_zygote_serves_child_zygotes_and_refuses_stale_code(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    module = lib / "fy_unit_warm.py"
    module.write_text("VALUE = 1\n")
    zygote = ZygoteProcess(tmp_path)
    try:
        status, conn = zygote.request(zygote.socket, {"op": "ping"})
        conn.close()
        assert status["pid"] == zygote.proc.pid
        assert status["unsafe"] is None and status["stale"] == []

        child_socket = tmp_path / "child.sock"
        reply, child_conn = zygote.request(
            zygote.socket,
            {"op": "zygote", "socket": str(child_socket), "imports": ["fy_unit_warm"]}
            | {"pythonpath": [str(lib)]},
        )
        assert reply["pid"] > 0
        status, conn = zygote.request(child_socket, {"op": "ping"})
        conn.close()
        assert status["failed_imports"] == {} and status["stale"] == []

        # Same size, new mtime: a changed file is a changed file.
        module.write_text("VALUE = 2\n")
        os.utime(module, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        refusal, conn = zygote.request(child_socket, {"op": "fork", "mode": "engine"})
        conn.close()
        assert refusal["error"] == "stale"
        assert str(module) in refusal["files"]
        # A retired zygote with no runs exits; its parent reports the exit.
        child_conn.settimeout(30)
        assert "exit" in wire.recv(child_conn)
        child_conn.close()
    finally:
        zygote.proc.kill()
        zygote.proc.wait()


def test_run_settings_are_spelled_as_prefect_spells_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm run's settings are compared to its zygote's as strings (forked_run.set_environment):
    a value Prefect would re-spell ("false" -> "False") makes every run rebuild its settings."""
    from prefect.settings import Settings

    from flowyard.worker.config import RUN_SETTINGS

    for key, value in RUN_SETTINGS.items():
        monkeypatch.setenv(key, value)
    spelled = Settings().to_environment_variables(exclude_unset=True)
    assert {k: spelled.get(k) for k in RUN_SETTINGS} == RUN_SETTINGS


def test_dispatcher_polls_when_woken_coalesced_and_one_at_a_time() -> None:
    """No timer of its own (BaseWorker's poll loop wakes it every interval); a burst of
    wake-ups is one poll, and a wake-up during a poll is one more poll after it."""
    import logging

    import anyio

    from flowyard.worker.dispatch import Dispatcher

    running: list[int] = []

    async def poll() -> None:
        running.append(len(running))
        assert running == [0], "two polls at once"
        await anyio.sleep(0.1)
        running.clear()

    async def main() -> int:
        dispatcher = Dispatcher(poll, logger=logging.getLogger("test"), max_backoff=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run)
            await anyio.sleep(0.2)
            assert dispatcher.polls == 0
            for _ in range(5):
                dispatcher.wake()
            await anyio.sleep(0.05)
            dispatcher.wake()  # during the first poll
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
        return dispatcher.polls

    assert anyio.run(main) == 2
