"""The `flowyard` worker on the real platform: the default pool typed `flowyard`, served by
the platform's own worker service, flows deployed from a local directory with a
`set_working_directory` pull step.

Covers what a warm, forking worker could get wrong: isolation between runs, cancellation,
crash handling (the worker and its warm interpreter survive), stale-code protection, and
cleanup when the worker itself is killed. Speed is the benchmark's business, not asserted.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest

from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.platform.supervisor import Supervisor
from flowyard.testing import running_platform
from flowyard.waiting import wait_until

pytestmark = pytest.mark.integration

FLOWS = {
    "isolation.py": """
        import os, sys
        from prefect import flow

        SEEN = []

        @flow
        def leak(tag: str) -> dict:
            before = {
                "global": list(SEEN),
                "module": "fy_marker_mod" in sys.modules,
                "env": os.environ.get("FY_LEAKED"),
            }
            SEEN.append(tag)
            import fy_marker_mod  # noqa: F401  (in the flow's directory)
            os.environ["FY_LEAKED"] = tag
            return {
                "before": before,
                "pid": os.getpid(),
                "cwd": os.getcwd(),
                "deployment_env": os.environ.get("FY_DEPLOYMENT_VAR"),
            }
    """,
    "fy_marker_mod.py": "VALUE = 1\n",
    "behave.py": """
        import os, signal, subprocess, time
        from pathlib import Path
        from prefect import flow

        def _mark(name):
            def hook(flow, flow_run, state):
                Path(os.environ["FY_MARKS"], f"{name}-{flow_run.id}").write_text(state.name)
            return hook

        @flow(on_crashed=[_mark("crashed")], on_cancellation=[_mark("cancelled")])
        def behave(how: str = "ok", seconds: float = 0) -> dict:
            if how == "exit":
                os._exit(3)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "memory":
                hog = []
                while True:
                    hog.append(bytearray(50 * 2**20))
            if how == "ok-slow":
                time.sleep(2)
            if how == "sleep":
                # A grandchild in the run's process group: must not outlive the run.
                child = subprocess.Popen(["sleep", "600"])
                Path(os.environ["FY_MARKS"], f"grandchild-{os.getpid()}").write_text(
                    str(child.pid)
                )
                time.sleep(seconds)
            return {"pid": os.getpid()}
    """,
    "versioned.py": """
        import os
        from prefect import flow
        import fy_helper

        CODE_VERSION = "flow-v1"

        @flow
        def versioned() -> dict:
            return {
                "helper": fy_helper.VERSION,
                "helper_was_warm": fy_helper.IMPORTED_BY != os.getpid(),
                "code": CODE_VERSION,
            }
    """,
}
HELPER = 'import os\nVERSION = "{version}"\nIMPORTED_BY = os.getpid()\n'


@pytest.fixture(scope="module")
def platform(homes: Callable[[str], Path]) -> Iterator[Context]:
    """This module's own platform (it kills and stops the worker), its pool typed flowyard.

    The Prefect client calls below run in this process, with the environment a platform
    client gets (`child_env`), restored afterwards."""
    pool = {
        "name": "default",
        "type": "flowyard",
        "queues": [{"name": "default"}, {"name": "one-at-a-time", "concurrency_limit": 1}],
    }
    with running_platform(homes("fastworker"), pools=[pool], worker={"concurrency": 4}) as ctx:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(child_env(ctx))
        import prefect.context

        prefect.context.refresh_global_settings_context()
        try:
            yield ctx
        finally:
            os.environ.clear()
            os.environ.update(saved)
            prefect.context.refresh_global_settings_context()


@pytest.fixture(scope="module")
def code(homes: Callable[[str], Path]) -> dict[str, Path]:
    root = homes("fastworker-code")
    flows, lib, marks = root / "flows", root / "lib", root / "marks"
    for d in (flows, lib, marks):
        d.mkdir(parents=True)
    # Flow runs write their marks as the worker's user (an unprivileged one as root).
    marks.chmod(0o1777)
    for name, text in FLOWS.items():
        (flows / name).write_text(textwrap.dedent(text))
    (lib / "fy_helper.py").write_text(HELPER.format(version="v1"))
    return {"flows": flows, "lib": lib, "marks": marks}


@pytest.fixture(scope="module")
def deploy(platform: Context, code: dict[str, Path]) -> Callable[..., UUID]:
    from prefect import Flow, flow

    def _deploy(entrypoint: str, name: str, queue: str = "default", **job_variables: Any) -> UUID:
        env = {"FY_MARKS": str(code["marks"]), **job_variables.pop("env", {})}
        source = flow.from_source(source=str(code["flows"]), entrypoint=entrypoint)
        assert isinstance(source, Flow)  # a coroutine only when called from async code
        assert isinstance(source, Flow)  # a coroutine only when called from async code
        deployment_id = source.deploy(
            name=name,
            work_pool_name="default",
            work_queue_name=queue,
            job_variables={"env": env, **job_variables},
            print_next_steps=False,
        )
        return UUID(str(deployment_id))

    return _deploy


def client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def trigger(deployment_id: UUID, **parameters: Any) -> UUID:
    with client() as c:
        return c.create_flow_run_from_deployment(deployment_id, parameters=parameters).id


def wait_for(run_id: UUID, done: Callable[[Any], bool], timeout: float = 90) -> Any:
    last: list[Any] = []
    with client() as c:

        def reached() -> Any:
            last[:] = [c.read_flow_run(run_id)]
            return last[0] if done(last[0]) else None

        run = wait_until(reached, timeout)
    if run is None:
        raise AssertionError(f"flow run {run_id} still {last[0].state.name} after {timeout}s")
    return run


def finished(run_id: UUID, timeout: float = 90) -> Any:
    return wait_for(run_id, lambda r: r.state is not None and r.state.is_final(), timeout)


def result(run: Any) -> Any:
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
    return run.state.result()


def worker_pid(ctx: Context) -> int:
    return int(Supervisor(ctx.paths).info("worker")["pid"])


def zygote_pids(ctx: Context) -> set[int]:
    pids = set()
    for proc in psutil.Process(worker_pid(ctx)).children(recursive=True):
        try:
            # Runs are forks of a zygote too (same command line) but lead their own session.
            if (
                "flowyard.worker.zygote_server" in proc.cmdline()
                and os.getsid(proc.pid) != proc.pid
            ):
                pids.add(proc.pid)
        except (psutil.Error, ProcessLookupError):  # a run that just exited
            pass
    return pids


def gone(pid: int, timeout: float = 20) -> bool:
    def dead() -> bool:
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    return bool(wait_until(dead, timeout, interval=0.2))


def test_registered_as_a_work_pool_type(platform: Context) -> None:
    from prefect.workers.base import BaseWorker

    assert BaseWorker.get_worker_class_from_type("flowyard") is not None
    with client() as c:
        pool = c.read_work_pool("default")
    assert pool.type == "flowyard"
    assert "warm_imports" in pool.base_job_template["variables"]["properties"]
    assert zygote_pids(platform), "the worker keeps a warm interpreter"


def test_runs_are_isolated(deploy: Callable[..., UUID], code: dict[str, Path]) -> None:
    deployment = deploy("isolation.py:leak", "isolation", env={"FY_DEPLOYMENT_VAR": "yes"})
    first = result(finished(trigger(deployment, tag="first")))
    second = result(finished(trigger(deployment, tag="second")))
    for run in (first, second):
        # Nothing from the other run: its globals, its imports, its environment.
        assert run["before"] == {"global": [], "module": False, "env": None}
        # The deployment's environment and the pull step's working directory apply.
        assert run["deployment_env"] == "yes"
        assert Path(run["cwd"]).resolve() == code["flows"].resolve()
    assert first["pid"] != second["pid"]


def test_queue_concurrency_limit_is_kept(deploy: Callable[..., UUID]) -> None:
    """Woken by events, the worker still takes runs through the pool's scheduled-runs query,
    so the server's queue limits hold: never two runs of this queue at once."""
    deployment = deploy("behave.py:behave", "one-at-a-time", queue="one-at-a-time")
    runs = [trigger(deployment, how="ok-slow") for _ in range(4)]
    intervals = []
    with client() as c:
        for run_id in runs:
            assert finished(run_id, timeout=120).state.is_completed()
            # From taken (Pending) to final, by the server's own state timestamps.
            states = c.read_flow_run_states(run_id)
            taken = min(s.timestamp for s in states if s.type.value == "PENDING")
            intervals.append((taken, max(s.timestamp for s in states)))
    intervals.sort()
    for (_, end_first), (start_next, _) in itertools.pairwise(intervals):
        assert start_next >= end_first, "two runs of a limit-1 queue overlapped"


def test_crashes_are_reported_and_the_worker_survives(
    platform: Context, deploy: Callable[..., UUID], code: dict[str, Path]
) -> None:
    deployment = deploy("behave.py:behave", "behave", memory_limit_mb=400)
    zygotes = zygote_pids(platform)
    worker = worker_pid(platform)

    exited = finished(trigger(deployment, how="exit"))
    assert exited.state.is_crashed(), exited.state
    killed = finished(trigger(deployment, how="kill"))
    assert killed.state.is_crashed(), killed.state
    # The crashed hook ran (in a process of its own, like Prefect's runner does it).
    mark = code["marks"] / f"crashed-{exited.id}"
    assert wait_until(mark.exists, 60, interval=0.5), "on_crashed hook did not run"

    # A run that exhausts its memory cap fails alone.
    hog = finished(trigger(deployment, how="memory"), timeout=120)
    assert hog.state.is_failed() or hog.state.is_crashed(), hog.state

    assert worker_pid(platform) == worker
    assert zygote_pids(platform) == zygotes, "warm interpreter replaced after run crashes"
    assert result(finished(trigger(deployment, how="ok")))["pid"] > 0


def test_cancellation(
    platform: Context, deploy: Callable[..., UUID], code: dict[str, Path]
) -> None:
    from prefect.states import Cancelling

    deployment = deploy("behave.py:behave", "behave-sleep")
    run_id = trigger(deployment, how="sleep", seconds=300)
    running = wait_for(run_id, lambda r: r.state is not None and r.state.is_running())
    pid = int(str(running.infrastructure_pid).rsplit(":", 1)[-1])
    grandchild_file = code["marks"] / f"grandchild-{pid}"
    wait_until(grandchild_file.exists, 30, interval=0.2)
    grandchild = int(grandchild_file.read_text())

    with client() as c:
        c.set_flow_run_state(run_id, Cancelling())
    run = finished(run_id, timeout=60)
    assert run.state.is_cancelled(), run.state
    assert gone(pid), "cancelled run's process still alive"
    assert gone(grandchild), "a process the cancelled run started is still alive"


def test_stale_code_is_never_served(
    platform: Context, deploy: Callable[..., UUID], code: dict[str, Path]
) -> None:
    deployment = deploy(
        "versioned.py:versioned",
        "versioned",
        env={"PYTHONPATH": str(code["lib"])},
        warm_imports=["fy_helper"],
    )
    first = result(finished(trigger(deployment)))
    assert first == {"helper": "v1", "helper_was_warm": True, "code": "flow-v1"}

    # New code on disk: the warm module (imported before the fork) and the flow's own file.
    helper = code["lib"] / "fy_helper.py"
    helper.write_text(HELPER.format(version="v2"))
    os.utime(helper, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    flow_file = code["flows"] / "versioned.py"
    flow_file.write_text(flow_file.read_text().replace("flow-v1", "flow-v2"))

    second = result(finished(trigger(deployment)))
    assert second["helper"] == "v2" and second["code"] == "flow-v2"
    assert second["helper_was_warm"], "the replacement warm interpreter imports it too"


def test_stopping_the_worker_crashes_its_runs_promptly(
    platform: Context, deploy: Callable[..., UUID]
) -> None:
    """`flowyard down` / supervisor stop: INT, then KILL after stop_wait (20 s)."""
    deployment = deploy("behave.py:behave", "behave-stop")
    run_ids = [trigger(deployment, how="sleep", seconds=300) for _ in range(3)]
    pids = []
    for run_id in run_ids:
        running = wait_for(run_id, lambda r: r.state is not None and r.state.is_running())
        pids.append(int(str(running.infrastructure_pid).rsplit(":", 1)[-1]))
    supervisor = Supervisor(platform.paths)
    started = time.monotonic()
    supervisor.stop_process("worker")
    assert time.monotonic() - started < 20, "stop took the whole stop_wait"
    for pid in pids:
        assert gone(pid, timeout=5)
    for run_id in run_ids:
        assert finished(run_id, timeout=60).state.is_crashed()
    supervisor.start_process("worker")


def test_killing_the_worker_crashes_its_runs_and_leaves_no_orphans(
    platform: Context, deploy: Callable[..., UUID], code: dict[str, Path]
) -> None:
    deployment = deploy("behave.py:behave", "behave-orphans")
    run_id = trigger(deployment, how="sleep", seconds=300)
    running = wait_for(run_id, lambda r: r.state is not None and r.state.is_running())
    pid = int(str(running.infrastructure_pid).rsplit(":", 1)[-1])
    grandchild_file = code["marks"] / f"grandchild-{pid}"
    wait_until(grandchild_file.exists, 30, interval=0.2)
    grandchild = int(grandchild_file.read_text())
    worker = worker_pid(platform)
    zygotes = zygote_pids(platform)

    os.kill(worker, signal.SIGKILL)

    for orphan in (*zygotes, pid, grandchild):
        assert gone(orphan), f"process {orphan} outlived the killed worker"
    run = finished(run_id, timeout=60)
    assert run.state.is_crashed(), run.state

    # Supervisor restarts the worker; it serves runs again.
    def restarted() -> bool:
        info = Supervisor(platform.paths).info("worker")
        return bool(info["statename"] == "RUNNING" and info["pid"] != worker)

    wait_until(restarted, 90, interval=1)
    ok = deploy("behave.py:behave", "behave-after")
    assert result(finished(trigger(ok), timeout=120))["pid"] > 0
    # The new worker removed the dead one's scratch directory (sockets, manifests).
    assert not (Path(tempfile.gettempdir()) / f"flowyard-worker-{worker}").exists()


EXTRA = Path(__file__).parent / "projects" / "extra"


def admin_s3(ctx: Context) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ctx.config.proxy.s3_url,
        aws_access_key_id=ctx.secrets.s3_access_key.get_secret_value(),
        aws_secret_access_key=ctx.secrets.s3_secret_key.get_secret_value(),
        region_name=ctx.config.object_store.region,
        verify=str(ctx.paths.ca_cert),
        config=Config(s3={"addressing_style": "path"}),
    )


def code_cache_entries(ctx: Context) -> list[Path]:
    """The worker's kept copies of pulled code (flowyard.worker.code_cache), in its private
    scratch directory, which is named by its pid under its own TMPDIR."""
    worker = psutil.Process(worker_pid(ctx))
    tmp = worker.environ().get("TMPDIR") or tempfile.gettempdir()
    cache = Path(tmp, f"flowyard-worker-{worker.pid}", "code")
    return [p for p in cache.iterdir() if not p.name.startswith(".")]


def test_code_pulled_from_s3_is_kept_by_content_and_never_served_altered(
    platform: Context,
) -> None:
    """A deployment made by `flowyard deploy` pulls its code from a content folder. The
    worker keeps a copy after the first run: a later run needs nothing from S3 (its objects
    are deleted here); a copy altered on disk is never run (the code is pulled again)."""
    from tests.integration.conftest import flowyard_cli

    out = flowyard_cli(platform, "deploy", str(EXTRA), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    with client() as c:
        deployment = c.read_deployment_by_name("hello/hello")
    (step,) = deployment.pull_steps or []
    args = step["prefect_aws.deployments.steps.pull_from_s3"]
    bucket, folder = args["bucket"], args["folder"]
    assert "@sha256-" in folder, folder  # a content folder: the only kind kept
    assert result(finished(trigger(deployment.id, name="first"))) == "Hello, first!"
    (entry,) = code_cache_entries(platform)

    # The code gone from S3: only the kept copy can serve the next run.
    s3 = admin_s3(platform)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{folder}/")["Contents"]]
    saved = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    try:
        assert result(finished(trigger(deployment.id, name="cached"))) == "Hello, cached!"
    finally:
        for key, body in saved.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)

    # An altered copy is discarded, and the code pulled from S3 again.
    flow_file = entry / "src" / "extra_flows.py"
    original = flow_file.read_bytes()
    flow_file.write_bytes(original.replace(b"Hello,", b"Altered,"))
    assert result(finished(trigger(deployment.id, name="again"))) == "Hello, again!"
    (entry,) = code_cache_entries(platform)
    assert (entry / "src" / "extra_flows.py").read_bytes() == original
