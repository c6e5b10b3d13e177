"""Faults on the real platform, each asserting that no flow run is silently lost.

One platform for the module; faults are injected through supervisor (stop/start, kill -9) as
an operator or the kernel would. Every run a test starts must end in a state visible through
the API, and a Completed run must have its result in the object store.

The object store's data directory is a 400 MB tmpfs (root and mount(8) needed, else the
disk-full test is skipped), so the disk-full test can fill it without touching the host.
The worker-kill scenario starts in a fixture and is checked by a later test, so Prefect's
zombie detection (heartbeats every 30 s, 60 s without one) runs while other faults are tested.
The local worker is the default pool's `flowyard` worker (docs/workers.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from botocore.exceptions import ClientError

from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.platform import lifecycle
from flowyard.platform.supervisor import Supervisor
from flowyard.services import caddy, prefect_api, prefect_services, seaweedfs
from flowyard.services import redis as redis_service
from flowyard.testing import running_platform
from flowyard.waiting import wait_until
from tests.integration.conftest import flowyard_cli
from tests.integration.runs import (
    TERMINAL,
    api,
    create_run,
    deploy,
    events,
    flow_run,
    result_value,
    run_logs,
    run_pids,
    wait_state,
)

pytestmark = pytest.mark.timeout(480)

PROJECT = Path(__file__).parent / "projects" / "faults"
STORE_SIZE = "400m"


def _mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STORE_SIZE},mode=0755", "tmpfs", str(path)],
        capture_output=True,
    )
    return result.returncode == 0


@pytest.fixture(scope="module")
def store_on_tmpfs(homes: Callable[[str], Path]) -> Iterator[tuple[Path, bool]]:
    home = homes("faults")
    store = home / "data" / "seaweedfs"
    store.mkdir(parents=True)
    mounted = _mount_tmpfs(store)
    yield home, mounted
    if mounted and subprocess.run(["umount", str(store)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(store)], capture_output=True)


@pytest.fixture(scope="module")
def yard(store_on_tmpfs: tuple[Path, bool]) -> Iterator[Context]:
    home, _ = store_on_tmpfs
    # Three runs at once: the worker-kill scenario holds two while the others run.
    with running_platform(
        home, hygiene={"zombie_heartbeat_seconds": 60}, worker={"concurrency": 3}
    ) as ctx:
        names = {d["name"] for d in deploy(ctx, PROJECT)}
        assert names == {"steady/steady", "retried/retried"}
        yield ctx


def supervisor_pid(ctx: Context, name: str) -> int:
    return int(Supervisor(ctx.paths).info(name)["pid"])


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    if not wait_until(check, timeout, interval=0.5):
        raise AssertionError(f"{what} not within {timeout} s")


@pytest.fixture(scope="module")
def worker_killed(yard: Context) -> dict[str, Any]:
    """The local worker dies mid-run (kill -9) with two runs in flight.

    The default pool's `flowyard` worker takes its runs down with it (no orphans, runs end
    Crashed; docs/workers.md). The victim dies silently first, as in a machine crash: the worker is
    frozen (SIGSTOP) so it cannot report the exit, the run's processes are killed, then the
    worker. Only the zombie automation can mark the victim Crashed (heartbeats stop). The
    other run is terminated by the worker's death (parent-death signal) and reports itself."""
    victim = create_run(yard, "retried/retried", seconds=600)
    survivor = create_run(yard, "steady/steady", seconds=600)
    for run_id in (victim, survivor):
        wait_state(yard, run_id, {"RUNNING"}, timeout=240)
    # The zombie automation arms on a run's first heartbeat: wait until it is recorded.
    wait_for(
        lambda: bool(events(yard, f"prefect.flow-run.{victim}", "prefect.flow-run.heartbeat")),
        timeout=90,
        what="the victim's first heartbeat",
    )
    old_worker = supervisor_pid(yard, "worker")
    victim_pids = run_pids(yard, victim)
    survivor_pids = run_pids(yard, survivor)
    assert victim_pids and survivor_pids, "no process found for the flow runs"
    os.kill(old_worker, signal.SIGSTOP)
    for pid in victim_pids:
        os.kill(pid, signal.SIGKILL)
    os.kill(old_worker, signal.SIGKILL)
    return {
        "victim": victim,
        "survivor": survivor,
        "run_pids": [*victim_pids, *survivor_pids],
        "old_worker": old_worker,
        "killed_at": time.monotonic(),
    }


def test_worker_killed_mid_run_is_restarted_and_leaves_no_orphans(
    yard: Context, worker_killed: dict[str, Any]
) -> None:
    # supervisord restarts the worker...
    wait_for(
        lambda: (
            Supervisor(yard.paths).info("worker")["statename"] == "RUNNING"
            and supervisor_pid(yard, "worker") != worker_killed["old_worker"]
        ),
        timeout=60,
        what="a restarted worker",
    )
    # ...no process of the killed worker's runs is left...
    wait_for(
        lambda: not any(alive(pid) for pid in worker_killed["run_pids"]),
        timeout=30,
        what="the killed worker's flow-run processes gone",
    )
    # ...and the run it took down ends Crashed, visibly (not Running forever).
    run = wait_state(yard, worker_killed["survivor"], TERMINAL, timeout=120)
    assert run["state_type"] == "CRASHED", run["state"]
    # (The restarted worker runs every later test's flow runs.)


def wait_api_restarted(ctx: Context, old_pid: int) -> None:
    """Until supervisord has replaced the API process `old_pid` and the new one is ready."""
    wait_for(
        lambda: supervisor_pid(ctx, "prefect-api") != old_pid and prefect_api.is_ready(ctx),
        timeout=120,
        what="the API restarted by supervisord",
    )


def test_prefect_api_kill_9_during_a_run(yard: Context) -> None:
    run_id = create_run(yard, "steady/steady", seconds=20)
    wait_state(yard, run_id, {"RUNNING"}, timeout=240)
    old = supervisor_pid(yard, "prefect-api")
    os.kill(old, signal.SIGKILL)
    wait_api_restarted(yard, old)
    # The flow-run process retried its calls through the outage (502s from the proxy).
    run = wait_state(yard, run_id, TERMINAL, timeout=240)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert result_value(yard, run) == "x" * 1000


def events_client(ctx: Context, resource: str) -> subprocess.Popen[str]:
    """EVENTS_CLIENT below for `resource`, through the proxy as a flow run's client."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(EVENTS_CLIENT), resource],
        env=child_env(ctx),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def three_events_sent(ctx: Context, resource: str) -> Iterator[subprocess.Popen[str]]:
    """EVENTS_CLIENT below, once it has sent its first three events about `resource`, each
    confirmed; on leaving, the client is killed if still running, so it can never send
    them again."""
    client = events_client(ctx, resource)
    try:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "before-sent":
            client.kill()
            raise AssertionError(client.communicate()[1][-3000:])
        yield client
    finally:
        if client.returncode is None:
            client.kill()
            client.communicate()


def test_prefect_api_kill_9_keeps_the_events_it_received(yard: Context) -> None:
    """guarantee: an event the API received over its websocket, which the client counts as
    delivered once the API answered its checkpoint, is recorded even if the API is killed a
    second later and the client is gone (stock prefect-redis could still hold it, to publish
    with others up to 10 s later)."""
    resource = f"flowyard.test.{uuid.uuid4()}"
    with three_events_sent(yard, resource):
        time.sleep(1)
        old = supervisor_pid(yard, "prefect-api")
        os.kill(old, signal.SIGKILL)
    wait_api_restarted(yard, old)
    wait_for(
        lambda: len(events(yard, resource, "flowyard.test.before-restart")) == 3,
        60,
        "the three events the killed API had received recorded",
    )


def persister_acknowledged(ctx: Context, resource: str, count: int) -> bool:
    """Prefect's event persister has taken `count` events about `resource` from Redis and
    acknowledged each (read past them, none of them pending)."""
    with redis.Redis.from_url(redis_service.url(ctx, redis_service.MESSAGING_DB)) as conn:
        ours = [
            entry_id
            for entry_id, fields in conn.xrevrange("events", count=500)
            if resource.encode() in fields[b"data"]
        ]
        group = next(g for g in conn.xinfo_groups("events") if g["name"] == b"event-persister")
        pending = {
            p["message_id"] for p in conn.xpending_range("events", "event-persister", "-", "+", 500)
        }

    def position(entry_id: bytes) -> tuple[int, ...]:  # "<ms>-<seq>", ordered numerically
        return tuple(map(int, entry_id.split(b"-")))

    delivered = position(group["last-delivered-id"])
    return (
        len(ours) == count
        and all(position(i) <= delivered for i in ours)
        and not pending.intersection(ours)
    )


def test_prefect_services_kill_9_keeps_the_events_they_acknowledged(yard: Context) -> None:
    """guarantee: an event Prefect's event persister has acknowledged in Redis is recorded,
    even if the background services are killed (kill -9) at once (stock Prefect acknowledges
    an event when it queues it in memory, and writes the queue 20 at a time or every 5 s)."""
    resource = f"flowyard.test.{uuid.uuid4()}"
    with three_events_sent(yard, resource):
        # Polled often: stock Prefect's 5 s flush must not get in before the kill.
        if not wait_until(lambda: persister_acknowledged(yard, resource, 3), 30, interval=0.05):
            raise AssertionError("the event persister never acknowledged the three events")
        old = supervisor_pid(yard, prefect_services.NAME)
        os.kill(old, signal.SIGKILL)
    wait_for(
        lambda: supervisor_pid(yard, prefect_services.NAME) != old,
        60,
        "the background services restarted by supervisord",
    )
    wait_for(
        lambda: len(events(yard, resource, "flowyard.test.before-restart")) == 3,
        90,
        "the three events the killed services had acknowledged recorded",
    )


def test_caddy_restart_with_open_websockets(yard: Context) -> None:
    """An events client holds the /api/events/in websocket through Caddy across a restart;
    a flow run is in flight at the same time. Every event is recorded, the run completes."""
    resource = f"flowyard.test.{uuid.uuid4()}"
    with three_events_sent(yard, resource) as client:
        run_id = create_run(yard, "steady/steady", seconds=15)
        assert client.stdin is not None
        wait_state(yard, run_id, {"RUNNING"}, timeout=240)
        sup = Supervisor(yard.paths)
        sup.stop_process("caddy")
        sup.start_process("caddy")
        wait_for(lambda: caddy.is_ready(yard), timeout=60, what="Caddy back")
        client.stdin.write("go\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err[-3000:]
        sent = set(json.loads(out.strip().splitlines()[-1]))
    assert len(sent) == 6
    wait_for(
        lambda: {e["id"] for e in events(yard, resource)} == sent,
        90,
        "every event sent across the restart recorded",
    )
    run = wait_state(yard, run_id, TERMINAL, timeout=240)
    assert run["state_type"] == "COMPLETED", run["state"]


EVENTS_CLIENT = """
    import asyncio, json, sys
    from uuid import uuid4
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async def main(resource):
        ids = []
        # checkpoint_every=1: each event is confirmed by a ping through the proxy, so an
        # event written into a connection Caddy already closed is resent after reconnecting.
        async with get_events_client(reconnection_attempts=30, checkpoint_every=1) as client:
            async def emit(name):
                event = Event(event=name, resource={"prefect.resource.id": resource}, id=uuid4())
                await client.emit(event)
                ids.append(str(event.id))
            for _ in range(3):
                await emit("flowyard.test.before-restart")
            print("before-sent", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            for _ in range(3):
                await emit("flowyard.test.after-restart")
        print(json.dumps(ids), flush=True)

    asyncio.run(main(sys.argv[1]))
"""


def test_object_store_restart_during_result_write(yard: Context) -> None:
    """The store goes away while a run writes its result: the write must be retried until it
    lands, or the run must fail visibly; never Completed without its result."""
    run_id = create_run(yard, "steady/steady", seconds=5, size=5000)
    wait_state(yard, run_id, {"RUNNING"}, timeout=240)
    sup = Supervisor(yard.paths)
    sup.stop_process("seaweedfs")
    time.sleep(12)  # the result write (at 5 s) meets a store that is down
    sup.start_process("seaweedfs")
    wait_for(lambda: seaweedfs.is_ready(yard), timeout=60, what="the object store back")
    run = wait_state(yard, run_id, TERMINAL, timeout=300)
    if run["state_type"] == "COMPLETED":
        assert result_value(yard, run) == "x" * 5000
    else:
        assert run["state"]["message"], run["state"]


def test_postgres_stopped_and_restarted_during_activity(yard: Context) -> None:
    runs = [create_run(yard, "steady/steady", seconds=3) for _ in range(3)]
    wait_state(yard, runs[0], {"PENDING", "RUNNING"}, timeout=240)
    sup = Supervisor(yard.paths)
    sup.stop_process("postgres")
    try:
        # Callers see the outage as an error; nothing pretends to have worked.
        refused = api_status(yard, "/deployments/name/steady/steady")
        assert refused >= 500
        time.sleep(10)
    finally:
        sup.start_process("postgres")
    # Clients retried through the outage (the worker's PREFECT_CLIENT_RETRY_EXTRA_CODES=500):
    # every run created before it completes, none left Pending.
    for run_id in runs:
        run = wait_state(yard, run_id, TERMINAL, timeout=300)
        assert run["state_type"] == "COMPLETED", (run_id, run["state"])


def api_status(ctx: Context, path: str) -> int:
    from flowyard.client.api import api_client

    with api_client(ctx) as client:
        return client.get(path).status_code


def test_killed_run_ends_crashed_and_is_not_retried(
    yard: Context, worker_killed: dict[str, Any]
) -> None:
    """Prefect marks the dead run Crashed (the zombie automation, 60 s without heartbeat).
    Its flow allows a retry, but Prefect retries only Failed runs (RetryFailedFlows acts on
    RUNNING -> FAILED), never Crashed ones: the run stays Crashed, visible, for a human or an
    automation to re-run."""
    left = 60 + 30 + 120 - (time.monotonic() - worker_killed["killed_at"])
    run = wait_state(yard, worker_killed["victim"], {"CRASHED"}, timeout=max(left, 30))
    assert "heartbeat" in run["state"]["message"].lower()
    assert run["empirical_policy"]["retries"] == 1
    time.sleep(10)
    again = flow_run(yard, worker_killed["victim"])
    assert again["state_type"] == "CRASHED" and again["run_count"] == 1, again["state"]


def test_down_up_repeated_keeps_everything(yard: Context) -> None:
    def snapshot() -> dict[str, Any]:
        runs = api(yard, "POST", "/flow_runs/filter", json={"sort": "ID_DESC", "limit": 200})
        deployments = api(yard, "POST", "/deployments/filter", json={})
        return {
            "runs": {r["id"]: r["state_type"] for r in runs},
            "deployments": sorted(d["name"] for d in deployments),
            "results": {
                r["id"]: result_value(yard, r) for r in runs if r["state_type"] == "COMPLETED"
            },
        }

    before = snapshot()
    assert not {"RUNNING", "PENDING"} & set(before["runs"].values()), before["runs"]
    assert before["results"]
    for cycle in range(2):
        assert lifecycle.down(yard, lambda *_: None)
        assert not Supervisor(yard.paths).running()
        lifecycle.up(yard, lambda *_: None)
        assert snapshot() == before, f"data changed after down/up cycle {cycle + 1}"
    run = wait_state(yard, create_run(yard, "steady/steady", seconds=0), TERMINAL, 240)
    assert run["state_type"] == "COMPLETED", run["state"]


def test_object_store_disk_full_is_a_clear_error(
    yard: Context, store_on_tmpfs: tuple[Path, bool]
) -> None:
    if not store_on_tmpfs[1]:
        pytest.skip("needs root and `mount -t tmpfs` to give the object store a small disk")
    store = yard.paths.service_data("seaweedfs")
    filler = store / "filler"
    free = shutil.disk_usage(store).free
    subprocess.run(["fallocate", "-l", str(free - (256 << 10)), str(filler)], check=True)
    try:
        # `flowyard status` names the cause (S3 itself only answers "InternalError").
        out = flowyard_cli(yard, "status")
        assert out.returncode == 3, out.stdout + out.stderr
        assert "the object store's disk is full" in " ".join(out.stdout.split())
        # A run whose result cannot be stored (40 MB: more than any slack the store's own
        # log rotation could free). Prefect 3.9 completes such a run anyway and only logs a
        # warning (prefect.states.return_value_to_state swallows the write error), so the
        # invariant is: Completed means the result is stored, or the run's own log says it
        # is not. See docs/operations.md.
        run_id = create_run(yard, "steady/steady", seconds=0, size=40_000_000)
        run = wait_state(yard, run_id, TERMINAL, 300)
        if run["state_type"] == "COMPLETED" and not _stored(yard, run):
            # Logs are shipped in batches: the final state can land before the last of them.
            wait_for(
                lambda: "the result has not been persisted" in " ".join(run_logs(yard, run_id)),
                timeout=60,
                what="the run's log saying its result was not persisted",
            )
            assert "InternalError" in " ".join(run_logs(yard, run_id))
    finally:
        filler.unlink()
    # Space back: writes work again without a restart.
    client = seaweedfs.s3_client(yard)
    bucket = yard.config.object_store.results_bucket
    wait_for(
        lambda: _put(client, bucket, "after-full"), timeout=60, what="the store writable again"
    )
    assert [s.problem for s in lifecycle.status(yard) if s.name == "seaweedfs"] == [None]
    assert psutil.pid_exists(supervisor_pid(yard, "seaweedfs"))


def _stored(ctx: Context, run: dict[str, Any]) -> bool:
    client: Any = seaweedfs.s3_client(ctx)
    bucket, key = ctx.config.object_store.results_bucket, run["state"]["data"]["storage_key"]
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def _put(client: Any, bucket: str, key: str) -> bool:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"ok")
        return True
    except ClientError:
        return False
