"""The platform's Dask cluster, end to end: a plain `distributed.Client()` through the proxy
with the client certificate `flowyard env` hands out, a deployed flow whose tasks run on the
cluster (and are tracked in MLflow), a Dask worker joined from a second host that reaches
the platform only through the proxy, no way in without a certificate, and a worker killed
in the middle of a flow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flowyard import pki
from flowyard.client.env import DASK_TLS_KEYS, child_env
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.services import dask as dask_service
from flowyard.testing import platform_pids, running_platform
from flowyard.waiting import wait_until
from tests.integration.conftest import flowyard_cli
from tests.integration.netns import RemoteHost, remote_host, stop_joined_worker
from tests.integration.runs import create_run, deploy, wait_state

ROOT = Path(__file__).resolve().parents[2]
LOCAL_WORKERS = 2
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture(scope="module")
def remote() -> Iterator[RemoteHost | None]:
    with remote_host() as host:
        yield host


@pytest.fixture(scope="module")
def cluster(homes: Callable[[str], Path], remote: RemoteHost | None) -> Iterator[Context]:
    # With a second host, Caddy listens on the link to it (and only there).
    proxy = {"host": remote.host_ip, "bind": remote.host_ip} if remote else {}
    home = homes("dask")
    try:
        with running_platform(
            home,
            proxy=proxy,
            mlflow={"enabled": True},
            dask={"enabled": True, "workers": LOCAL_WORKERS, "threads": 1},
        ) as ctx:
            yield ctx
    except FlowyardError:
        # The error quotes a log's last lines; a Dask traceback's cause is further up.
        for log in sorted((home / "logs").glob("dask-*.log")):
            print(f"== {log.name}\n{log.read_text()[-8000:]}")
        raise


@pytest.fixture(scope="module")
def deployed(cluster: Context) -> Context:
    names = {d["name"] for d in deploy(cluster, ROOT / "flows")}
    assert "digits-cv/digits-cv" in names
    return cluster


def local_names(ctx: Context) -> set[str]:
    return {dask_service.worker_name(ctx, i) for i in range(LOCAL_WORKERS)}


def run_result(ctx: Context, run: dict[str, Any]) -> Any:
    """A Completed run's result, read back by a Prefect client from the results bucket."""
    code = f"""
        import json
        from prefect.client.orchestration import get_client
        with get_client(sync_client=True) as client:
            state = client.read_flow_run("{run["id"]}").state
        print(json.dumps(state.result()))
        """
    return dask_client(ctx, code, {})


def dask_client(ctx: Context, code: str, env: dict[str, str]) -> Any:
    """`run_client` with `env` (what `flowyard env` printed) over the platform's."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(ctx, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def env_output(ctx: Context) -> dict[str, str]:
    out = flowyard_cli(ctx, "env", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_flowyard_env_makes_a_plain_client_connect_through_the_proxy(cluster: Context) -> None:
    env = env_output(cluster)
    proxy = cluster.config.proxy
    assert (
        env["DASK_SCHEDULER_ADDRESS"] == f"wss://{proxy.url_host}:{cluster.config.dask.https_port}"
    )
    for key in ("client_cert", "client_key"):
        # The key is a credential: owner-only, like every secret.
        assert os.stat(env[DASK_TLS_KEYS[key]]).st_mode & 0o077 == 0
    # Nothing but `flowyard env`'s output: no argument to Client().
    got = dask_client(
        cluster,
        """
        import json, distributed
        with distributed.Client(timeout=30) as c:
            names = sorted(w["name"] for w in c.scheduler_info()["workers"].values())
            total = sum(c.gather(c.map(lambda x: x * x, range(20))))
            print(json.dumps({"address": c.scheduler.address, "names": names, "total": total}))
        """,
        env,
    )
    assert got["address"] == env["DASK_SCHEDULER_ADDRESS"]
    assert set(got["names"]) == local_names(cluster)
    assert got["total"] == sum(x * x for x in range(20))


def test_no_client_certificate_no_connection(cluster: Context, tmp_path: Path) -> None:
    env = env_output(cluster)
    # A certificate from another CA: the proxy refuses it in the handshake.
    other_ca, other_key = pki.new_ca("Intruder CA")
    cert, key = pki.issue(other_ca, other_key, "intruder", dask_service.NODE_NAMES)
    (tmp_path / "c.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "c.key").write_bytes(pki.key_pem(key))
    env[DASK_TLS_KEYS["client_cert"]] = str(tmp_path / "c.crt")
    env[DASK_TLS_KEYS["client_key"]] = str(tmp_path / "c.key")
    refused = dask_client(
        cluster,
        """
        import json, distributed
        try:
            distributed.Client(timeout=8)
            print(json.dumps("connected"))
        except Exception as exc:
            print(json.dumps(type(exc).__name__ + ": " + str(exc)[:300]))
        """,
        env,
    )
    assert refused != "connected"
    # The same at the TLS layer, for the proxy's port and the scheduler's own: a TLS client
    # that verifies the server but has no certificate gets no session.
    ca = ssl.create_default_context(cafile=str(cluster.paths.ca_cert))
    ca.check_hostname = False
    dask_ca = ssl.create_default_context(cafile=str(cluster.paths.dask_pki / "ca.crt"))
    dask_ca.check_hostname = False
    for host, port, context in [
        (cluster.config.proxy.listen_address, cluster.config.dask.https_port, ca),
        ("127.0.0.1", cluster.config.dask.scheduler_port, dask_ca),
        ("127.0.0.1", cluster.config.dask.worker_port, dask_ca),
    ]:
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            # TLS 1.3 reports the server's refusal on the first read.
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not tls.recv(100), f"{host}:{port} answered without a certificate"


def test_dask_processes_listen_on_loopback_only_with_one_port_each(cluster: Context) -> None:
    procs = [
        p
        for p in map(psutil.Process, platform_pids(cluster))
        if any(m in " ".join(p.cmdline()) for m in ("dask_scheduler", "dask_worker", "dask "))
    ]
    # The scheduler and every local worker (natively `python -m distributed.cli...`).
    assert len(procs) == 1 + LOCAL_WORKERS, [p.cmdline() for p in procs]
    for proc in procs:
        ports = [c.laddr for c in proc.net_connections("inet") if c.status == "LISTEN"]
        # One port each: a worker's plain-HTTP diagnostics server is closed by the preload,
        # the scheduler's HTTP routes share its comm port.
        assert len(ports) == 1, (proc.cmdline(), ports)
        assert ports[0].ip == "127.0.0.1", (proc.cmdline(), ports)


def test_a_flows_tasks_run_on_the_platform_cluster_and_are_tracked(deployed: Context) -> None:
    grid = {"model": ["logreg", "svc"], "C": [0.5, 2.0]}
    run_id = create_run(deployed, "digits-cv/digits-cv", grid=grid, folds=3)
    run = wait_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
    assert run["state_type"] == "COMPLETED", run["state"]
    result = run_result(deployed, run)
    assert len(result["scores"]) == 4 * 3
    # Every task ran on a Dask worker of the platform, not in the flow run's process.
    assert {s["worker"] for s in result["scores"]} <= local_names(deployed)
    assert len(result["ranking"]) == 4
    assert all(0.8 < r["mean_accuracy"] <= 1.0 for r in result["ranking"])
    from tests.integration.test_tracking import mlflow_run_for

    tracked = mlflow_run_for(deployed, run_id)
    metrics = {m["key"]: m["value"] for m in tracked["data"]["metrics"]}
    assert metrics["tasks"] == 12
    assert metrics["best_mean_accuracy"] == result["ranking"][0]["mean_accuracy"]


def test_a_local_user_without_the_certificate_cannot_reach_the_scheduler(cluster: Context) -> None:
    """Loopback is not private: `nobody` can connect to the scheduler's port, but cannot read
    a Dask key, and without one gets no TLS session."""
    keys = [
        cluster.paths.dask_pki / "ca.key",
        cluster.paths.dask_pki / "node.key",
        cluster.paths.dask_pki / "client.key",
        dask_service.data(cluster) / "node.key",
    ]
    probe = f"""
import socket, ssl, sys
for key in {[str(k) for k in keys]!r}:
    try:
        open(key).close()
        sys.exit("read " + key)
    except PermissionError:
        pass
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with socket.create_connection(("127.0.0.1", {cluster.config.dask.scheduler_port}), 5) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET /health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            if tls.recv(100):
                sys.exit("the scheduler answered without a certificate")
except (ssl.SSLError, ConnectionError):
    pass
print("refused")
"""
    if os.geteuid() != 0:
        pytest.skip("needs root to run as nobody")
    # The system's own Python (the project's venv may sit where nobody cannot read), as
    # tests/integration/test_security.py runs its probe.
    result = subprocess.run(
        [*AS_NOBODY, "/usr/bin/python3", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0 and "refused" in result.stdout, result.stdout + result.stderr


def start_remote_dask_worker(
    ctx: Context, remote: RemoteHost, tmp_path: Path, name: str
) -> subprocess.Popen[bytes]:
    join = tmp_path / "join.toml"
    made = flowyard_cli(ctx, "worker", "join-file", "--out", str(join))
    assert made.returncode == 0, made.stderr
    return remote.join_worker(
        ctx.config.proxy.url,
        join,
        tmp_path,
        tmp_path / "remote-dask.log",
        *("--dask", "--threads", "1", "--name", name),
    )


def test_a_dask_worker_joined_from_another_host_runs_a_flows_tasks(
    deployed: Context, remote: RemoteHost | None, tmp_path: Path
) -> None:
    if remote is None:
        pytest.skip("network namespaces unavailable (needs root and iproute2)")
    cfg = deployed.config.dask
    # From the second host only the proxy is there: the scheduler's and the local workers'
    # own ports are not.
    for port in [cfg.scheduler_port, *cfg.worker_ports()]:
        probe = subprocess.run(
            [
                *remote.prefix(),
                sys.executable,
                "-c",
                "import socket,sys; s=socket.socket(); s.settimeout(2); "
                f"sys.exit(s.connect_ex(('{remote.host_ip}', {port})))",
            ]
        )
        assert probe.returncode != 0, port
    name = "remote-netns-dask"
    worker = start_remote_dask_worker(deployed, remote, tmp_path, name)
    log = tmp_path / "remote-dask.log"
    try:

        def joined() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            return name in dask_service.worker_names(deployed)

        assert wait_until(joined, 120, interval=1), log.read_text()[-3000:]
        assert "client certificate accepted" in log.read_text()
        # Tasks that take a while, so every worker gets some.
        run_id = create_run(
            deployed,
            "digits-cv/digits-cv",
            grid={"model": ["logreg"], "C": [0.5, 1.0, 2.0, 4.0]},
            folds=3,
            hold_seconds=2.0,
        )
        run = wait_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
        assert run["state_type"] == "COMPLETED", (run["state"], log.read_text()[-3000:])
        ran_on = {s["worker"] for s in run_result(deployed, run)["scores"]}
        assert name in ran_on, ran_on
        assert ran_on & local_names(deployed), ran_on
    finally:
        stop_joined_worker(worker)


def test_a_dask_worker_killed_mid_flow_has_its_tasks_rescheduled(deployed: Context) -> None:
    run_id = create_run(
        deployed,
        "digits-cv/digits-cv",
        grid={"model": ["logreg"], "C": [0.5, 1.0, 2.0]},
        folds=2,
        hold_seconds=6.0,
    )
    wait_state(deployed, run_id, {"RUNNING"}, timeout=180)
    victim = next(
        p
        for p in map(psutil.Process, platform_pids(deployed))
        if dask_service.worker_name(deployed, 0) in p.cmdline()
    )
    # Six tasks of 6 s each on two one-thread workers: 8 s after the run starts, the victim
    # is in the middle of one and has more waiting.
    time.sleep(8)
    victim.send_signal(signal.SIGKILL)
    run = wait_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=300)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert len(run_result(deployed, run)["scores"]) == 3 * 2
    # supervisor restarted the killed worker, which joined the scheduler again.
    assert wait_until(
        lambda: dask_service.worker_name(deployed, 0) in dask_service.worker_names(deployed), 90
    )
