"""Workloads end to end: deployments from prefect.yaml with code in S3, the seed's schedule,
runs on demand with results in S3, queue priority, a remote worker in its own network
namespace, the zombie automation, and bad input refused before anything is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flowyard.client.api import api_client
from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.platform import lifecycle
from flowyard.testing import running_platform
from flowyard.waiting import wait_until
from tests.integration.conftest import flowyard_cli
from tests.integration.netns import RemoteHost, remote_host
from tests.integration.runs import flow_run, run_pids, wait_state

ROOT = Path(__file__).resolve().parents[2]
EXTRA = Path(__file__).parent / "projects" / "extra"
BIN = Path(sys.executable).parent
POOLS = [
    {"name": "default"},
    # One run at a time, two queues: the priority test saturates it.
    {
        "name": "prio",
        "concurrency_limit": 1,
        "queues": [{"name": "high", "priority": 1}, {"name": "low", "priority": 2}],
    },
    {"name": "zombie"},
    {"name": "remote"},
]


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteHost | None]:
    with remote_host() as host:
        yield host


@pytest.fixture(scope="module")
def yard(homes: Callable[[str], Path], remote: RemoteHost | None) -> Iterator[Context]:
    # With a second host, Caddy listens on the link to it (and only there); everything else
    # stays on 127.0.0.1 of this namespace.
    proxy = {"host": remote.host_ip, "bind": remote.host_ip} if remote else {}
    with running_platform(
        homes("workloads"),
        proxy=proxy,
        pools=POOLS,
        hygiene={"zombie_heartbeat_seconds": 60},
    ) as ctx:
        yield ctx


def deploy(ctx: Context, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return flowyard_cli(ctx, "deploy", str(path), "--json", *args)


def deployment(ctx: Context, name: str) -> dict[str, Any]:
    with api_client(ctx) as api:
        r = api.get(f"/deployments/name/{name}")
        r.raise_for_status()
        return dict(r.json())


def create_run(ctx: Context, deployment_name: str, queue: str | None = None, **params: Any) -> str:
    dep = deployment(ctx, deployment_name)
    body: dict[str, Any] = {"parameters": params}
    if queue:
        body["work_queue_name"] = queue
    with api_client(ctx) as api:
        r = api.post(f"/deployments/{dep['id']}/create_flow_run", json=body)
        r.raise_for_status()
        return str(r.json()["id"])


def start_worker(ctx: Context, pool: str, limit: int = 1) -> subprocess.Popen[bytes]:
    log = open(ctx.paths.logs / f"test-worker-{pool}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", str(limit)],
        env=child_env(ctx, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """Stop a worker by PID: INT (Prefect's worker ignores TERM), then KILL.

    Flow-run processes run in sessions of their own, so with KILL (a dying machine) they are
    killed by PID too, or they would go on heartbeating as orphans.
    """
    if proc.poll() is None:
        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def deployed(yard: Context) -> Context:
    flows = deploy(yard, ROOT / "flows")
    assert flows.returncode == 0, flows.stderr
    names = {d["name"] for d in json.loads(flows.stdout)}
    assert names == {
        "greeting-flow/scheduled-greeting",
        "train-digits/train-digits",
        "digits-sweep/digits-sweep",
        "digits-cv/digits-cv",
    }
    extra = deploy(yard, EXTRA)
    assert extra.returncode == 0, extra.stderr
    return yard


def test_seed_schedule_and_parameters(deployed: Context) -> None:
    dep = deployment(deployed, "greeting-flow/scheduled-greeting")
    assert dep["parameters"] == {"name": "Bob"}
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 0 * * *"]
    assert dep["work_pool_name"] == "default"
    # Code lives in S3, pulled by whichever worker runs it: never a server-side path.
    assert dep["pull_steps"][0]["prefect_aws.deployments.steps.pull_from_s3"]["bucket"] == (
        deployed.config.object_store.code_bucket
    )

    # The scheduler (in the background-services process) creates the upcoming runs.
    def scheduled() -> bool:
        with api_client(deployed) as api:
            runs = api.post(
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [dep["id"]]}}},
            ).json()
        return any(r["state_type"] == "SCHEDULED" for r in runs)

    assert wait_until(scheduled, 120, interval=2), (
        "the scheduler created no scheduled run for scheduled-greeting"
    )


def test_run_on_demand_completes_with_result_in_s3(deployed: Context) -> None:
    out = flowyard_cli(
        deployed, "run", "train-digits/train-digits", "-p", "model=logreg", "-p", "C=0.5", "--json"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    outcome = json.loads(out.stdout)
    assert outcome["state"] == "COMPLETED"
    assert outcome["result"]["metrics"]["accuracy"] > 0.9
    run = flow_run(deployed, outcome["flow_run_id"])
    # Run by the platform's own worker, which is the fast `flowyard` type (docs/workers.md).
    assert run["work_pool_name"] == "default"
    with api_client(deployed) as api:
        assert api.get("/work_pools/default").json()["type"] == "flowyard"
    key = run["state"]["data"]["storage_key"]
    from flowyard.services.seaweedfs import s3_client

    body = (
        s3_client(deployed)
        .get_object(  # type: ignore[attr-defined]
            Bucket=deployed.config.object_store.results_bucket, Key=key
        )["Body"]
        .read()
    )
    assert b"accuracy" in body
    with api_client(deployed) as api:
        artifacts = api.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": ["digits-results"]}}}
        ).json()
    assert any(a["type"] == "table" for a in artifacts)


def test_queue_priority_decides_under_saturation(deployed: Context) -> None:
    out = deploy(deployed, EXTRA, "--pool", "prio", "--queue", "low")
    assert out.returncode == 0, out.stderr
    low = [create_run(deployed, "hello/hello", queue="low", name=f"low{i}") for i in range(3)]
    high = create_run(deployed, "hello/hello", queue="high", name="high")
    worker = start_worker(deployed, "prio", limit=1)
    try:
        first = wait_state(deployed, high, {"COMPLETED"}, timeout=180)
        lows = [flow_run(deployed, r) for r in low]
        started_low = [r["start_time"] for r in lows]
        # The high-priority run, created last, started before every low-priority one.
        assert all(s is None or s > first["start_time"] for s in started_low), (
            first["start_time"],
            [(r["state_type"], r["start_time"], r["work_queue_name"]) for r in lows],
        )
    finally:
        stop(worker)


def test_remote_worker_through_proxy_only(
    deployed: Context, remote: RemoteHost | None, tmp_path: Path
) -> None:
    if remote is None:
        pytest.skip("network namespaces unavailable (needs root and iproute2)")
    join = tmp_path / "join.toml"
    made = flowyard_cli(deployed, "worker", "join-file", "--pool", "remote", "--out", str(join))
    assert made.returncode == 0, made.stderr
    assert (join.stat().st_mode & 0o777) == 0o600
    out = deploy(deployed, EXTRA, "--pool", "remote", "--queue", "default")
    assert out.returncode == 0, out.stderr
    # From the second host, the Prefect API's own port is unreachable: only Caddy is there.
    probe = subprocess.run(
        [
            *remote.prefix(),
            sys.executable,
            "-c",
            "import socket,sys; s=socket.socket(); s.settimeout(2); "
            f"sys.exit(s.connect_ex(('{remote.host_ip}', {deployed.config.prefect.port})))",
        ]
    )
    assert probe.returncode != 0
    worker = remote.join_worker(
        deployed.config.proxy.url,
        join,
        tmp_path,
        tmp_path / "remote-worker.log",
        "--name",
        "remote-netns",
    )
    try:
        run_id = create_run(deployed, "hello/hello", name="from-afar")
        run = wait_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=180)
        assert run["state_type"] == "COMPLETED", (tmp_path / "remote-worker.log").read_text()[
            -3000:
        ]
        with api_client(deployed) as api:
            workers = api.post("/work_pools/remote/workers/filter", json={}).json()
        assert [w["name"] for w in workers] == ["remote-netns"]
        log_text = (tmp_path / "remote-worker.log").read_text()
        assert "API reachable, TLS verified" in log_text
    finally:
        stop(worker)


def test_killed_worker_leaves_run_crashed_not_running(deployed: Context) -> None:
    out = deploy(deployed, EXTRA, "--pool", "zombie", "--queue", "default")
    assert out.returncode == 0, out.stderr
    worker = start_worker(deployed, "zombie")
    run_id = create_run(deployed, "sleepy/sleepy", seconds=600)
    try:
        wait_state(deployed, run_id, {"RUNNING"}, timeout=120)
        time.sleep(5)  # a first heartbeat is out
    finally:
        # The machine "dies": worker and flow-run process gone at once, no goodbye.
        stop(worker, signal.SIGKILL)
    run = wait_state(deployed, run_id, {"CRASHED"}, timeout=60 + 120)
    assert "heartbeat" in run["state"]["message"].lower()


def test_bad_input_is_refused_before_anything_is_made(deployed: Context, tmp_path: Path) -> None:
    def project(name: str, deployment_extra: str) -> Path:
        root = tmp_path / name
        shutil.copytree(EXTRA, root)
        text = (root / "prefect.yaml").read_text().split("deployments:")[0]
        (root / "prefect.yaml").write_text(
            text
            + "deployments:\n  - name: bad-"
            + name
            + "\n    entrypoint: src/extra_flows.py:hello\n"
            + deployment_extra
        )
        return root

    def refused(root: Path, *args: str) -> str:
        out = deploy(deployed, root, *args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        with api_client(deployed) as api:
            names = [d["name"] for d in api.post("/deployments/filter", json={}).json()]
        assert f"bad-{root.name}" not in names
        return " ".join(out.stderr.split())

    pool = "    work_pool: {name: default, work_queue_name: default}\n"
    assert "unknown work pool 'nope'" in refused(project("pool", pool), "--pool", "nope")
    assert "unknown work queue 'nope'" in refused(project("queue", pool), "--queue", "nope")
    bad_cron = pool + "    schedules:\n      - cron: '61 * * * *'\n"
    assert "invalid schedule" in refused(project("cron", bad_cron))
    bad_params = pool + "    parameters: {nme: Bob}\n"
    assert "do not fit" in refused(project("params", bad_params))
    # Code pushed to one folder, pulled from another: no worker could ever fetch it.
    root = project("fetch", pool)
    yaml_text = (root / "prefect.yaml").read_text()
    (root / "prefect.yaml").write_text(
        yaml_text.replace('folder: "{{ push-code.folder }}"', "folder: nowhere")
    )
    assert "not fetchable" in refused(root) or "pull steps failed" in refused(root)


def test_down_leaves_no_flow_run_process_behind(deployed: Context) -> None:
    """Last in the module: it stops the module's platform."""
    out = deploy(deployed, EXTRA, "--pool", "default", "--queue", "default")
    assert out.returncode == 0, out.stderr
    run_id = create_run(deployed, "sleepy/sleepy", seconds=600)
    wait_state(deployed, run_id, {"RUNNING"}, timeout=120)
    engines = [psutil.Process(pid) for pid in run_pids(deployed, run_id)]
    assert engines, "the flow run's own process was not found"
    assert lifecycle.down(deployed, lambda *_: None)
    assert not any(p.is_running() and p.status() != "zombie" for p in engines)
