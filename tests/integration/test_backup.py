"""Backup, restore and upgrade on the real platform.

One source platform (MLflow on) gets deployments, schedules, flow runs with results, a
Prefect artifact and an MLflow run with an artifact. The upgrade tests run on it first; then
it is backed up, stopped, restored into a fresh home and started there, and everything is
read back through the proxy with the OLD CA certificate. The commands are driven through
their typer functions (a local app), exactly as `flowyard backup|restore|upgrade` run them.
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from flowyard.cli import ops as ops_cli
from flowyard.client import code_store
from flowyard.client.env import child_env
from flowyard.config.context import Context, load_context
from flowyard.errors import FlowyardError
from flowyard.ops import manifest as mf
from flowyard.ops import verify as ops_verify
from flowyard.ops.backup import backup, consistent_snapshots
from flowyard.ops.progress import Reporter, Task
from flowyard.ops.restore import restore
from flowyard.ops.upgrade import STATE_FILE, upgrade
from flowyard.platform import lifecycle
from flowyard.platform.supervisor import Supervisor
from flowyard.projects.code import project_files
from flowyard.services import postgres, seaweedfs
from flowyard.testing import running_platform
from tests.integration.conftest import run_client
from tests.integration.runs import TERMINAL, api, create_run, deploy, result_value, wait_state

pytestmark = pytest.mark.timeout(1500)

EXTRA = Path(__file__).parent / "projects" / "extra"
# The revision before Prefect 3.9.1's head: its one migration (91e2b8f3d6a4) is a no-op on
# PostgreSQL, so stamping the database back to it makes a real, harmless upgrade step.
PREVIOUS_REVISION = "e7f54680bce3"
HEAD_REVISION = "91e2b8f3d6a4"

MLFLOW_LOG = """
import json, tempfile
from pathlib import Path
import mlflow

mlflow.set_experiment("backup-check")
with mlflow.start_run(run_name="kept") as run:
    mlflow.log_param("alpha", "0.5")
    mlflow.log_metric("loss", 0.25)
    path = Path(tempfile.mkdtemp()) / "notes.txt"
    path.write_text("artifact kept across restore")
    mlflow.log_artifact(str(path))
print(json.dumps({"run_id": run.info.run_id}))
"""

MLFLOW_READ = """
import json, sys
import mlflow
from mlflow import MlflowClient

client = MlflowClient()
run = client.get_run(sys.argv[1] if len(sys.argv) > 1 else %(run_id)r)
path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes.txt")
print(json.dumps({
    "experiment": client.get_experiment(run.info.experiment_id).name,
    "params": run.data.params,
    "metrics": run.data.metrics,
    "artifact": open(path).read(),
}))
"""

S3_READ = """
import json, boto3
from botocore.config import Config
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
body = s3.get_object(Bucket=%(bucket)r, Key=%(key)r)["Body"].read()
print(json.dumps({"size": len(body)}))
"""


def cli() -> typer.Typer:
    """The commands as app.py registers them."""
    app = typer.Typer()
    app.command()(ops_cli.backup)
    app.command()(ops_cli.restore)
    app.command()(ops_cli.upgrade)
    return app


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli(), list(args))


def flat(text: str) -> str:
    """Without whitespace: rich wraps long lines (and long paths) at the terminal width."""
    return "".join(text.split())


def schedules(ctx: Context, deployment: str) -> list[tuple[bool, dict[str, Any], float]]:
    dep = api(ctx, "GET", f"/deployments/name/{deployment}")
    return sorted(
        (s["active"], s["parameters"], s["schedule"]["interval"]) for s in dep["schedules"]
    )


@pytest.fixture(scope="module")
def source(homes: Callable[[str], Path]) -> Iterator[tuple[Context, dict[str, Any]]]:
    with running_platform(homes("backup-src"), mlflow={"enabled": True}) as ctx:
        deploy(ctx, EXTRA)
        hello = api(ctx, "GET", "/deployments/name/hello/hello")
        # One active schedule with parameter overrides, one inactive: the upgrade must give
        # back exactly this.
        api(
            ctx,
            "POST",
            f"/deployments/{hello['id']}/schedules",
            json=[
                {"schedule": {"interval": 7 * 86400}, "active": True, "parameters": {"name": "S"}},
                {"schedule": {"interval": 14 * 86400}, "active": False},
            ],
        )
        runs = [create_run(ctx, "hello/hello", name=n) for n in ("Ada", "Bob")]
        finished = [wait_state(ctx, r, TERMINAL, timeout=300) for r in runs]
        assert [r["state_type"] for r in finished] == ["COMPLETED", "COMPLETED"]
        artifact = api(
            ctx,
            "POST",
            "/artifacts/",
            json={
                "key": "backup-check",
                "type": "markdown",
                "data": "# kept",
                "flow_run_id": runs[0],
            },
        )
        mlflow_run = run_client(ctx, MLFLOW_LOG)["run_id"]
        yield ctx, {"runs": runs, "artifact": artifact["id"], "mlflow_run": mlflow_run}


def test_upgrade_refuses_a_revision_this_prefect_does_not_know(
    source: tuple[Context, dict[str, Any]],
) -> None:
    ctx, _ = source
    sup = Supervisor(ctx.paths)
    pids = {i["name"]: i["pid"] for i in sup.all_info()}
    before = schedules(ctx, "hello/hello")
    # What a newer Prefect leaves behind: a revision this one has never heard of.
    postgres.query(ctx, "UPDATE alembic_version SET version_num = 'f00dfeedbeef'", "prefect")
    try:
        result = invoke("upgrade", "--home", str(ctx.paths.home))
        assert result.exit_code == 1, result.output
        text = flat(result.output)
        assert flat("Can't locate revision identified by 'f00dfeedbeef'") in text
        assert flat("Nothing was changed") in text and "Traceback" not in text
        # ...and indeed nothing was: revision, schedules, processes, no backup taken.
        assert postgres.query(ctx, "SELECT version_num FROM alembic_version", "prefect") == (
            "f00dfeedbeef"
        )
        assert schedules(ctx, "hello/hello") == before
        assert {i["name"]: i["pid"] for i in sup.all_info()} == pids
        assert not (ctx.paths.home / "backups").exists()
        assert not (ctx.paths.home / STATE_FILE).exists()
    finally:
        postgres.query(
            ctx, f"UPDATE alembic_version SET version_num = '{HEAD_REVISION}'", "prefect"
        )


def test_upgrade_migrates_restarts_and_resumes_exactly_the_active_schedules(
    source: tuple[Context, dict[str, Any]], homes: Callable[[str], Path]
) -> None:
    ctx, _ = source
    sup = Supervisor(ctx.paths)
    before = schedules(ctx, "hello/hello")
    assert [active for active, _, _ in before] == [False, True]
    api_pid, worker_pid = sup.info("prefect-api")["pid"], sup.info("worker")["pid"]
    postgres.query(
        ctx, f"UPDATE alembic_version SET version_num = '{PREVIOUS_REVISION}'", "prefect"
    )
    backup_to = homes("pre-upgrade").parent / "backup"
    result = invoke(
        "upgrade", "--home", str(ctx.paths.home), "--backup-to", str(backup_to),
        "--migration-timeout", "300",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert flat(f"{PREVIOUS_REVISION} -> {HEAD_REVISION} (1 migration)") in flat(result.output)
    assert postgres.query(ctx, "SELECT version_num FROM alembic_version", "prefect") == (
        HEAD_REVISION
    )
    # The backup came first and is complete; it recorded the pre-upgrade revision.
    assert mf.verify(backup_to).databases["prefect"] == PREVIOUS_REVISION
    # Prefect's server was restarted; the worker (and its runs) was left alone.
    assert sup.info("prefect-api")["pid"] != api_pid
    assert sup.info("worker")["pid"] == worker_pid
    # Same schedules, same active flags, parameter overrides intact.
    assert schedules(ctx, "hello/hello") == before
    assert not (ctx.paths.home / STATE_FILE).exists()
    assert all(s.ready for s in lifecycle.status(ctx))


def test_upgrade_resumes_after_an_interrupted_one(source: tuple[Context, dict[str, Any]]) -> None:
    """A crash after pausing leaves the list on disk; the next upgrade resumes those."""
    ctx, _ = source
    before = schedules(ctx, "hello/hello")
    hello = api(ctx, "GET", "/deployments/name/hello/hello")
    active = [s for s in hello["schedules"] if s["active"]]
    paused = [
        {
            "deployment_id": hello["id"],
            "deployment": hello["name"],
            "schedule_id": s["id"],
            "parameters": s["parameters"],
        }
        for s in active
    ]
    for s in paused:
        api(
            ctx,
            "PATCH",
            f"/deployments/{hello['id']}/schedules/{s['schedule_id']}",
            json={"active": False, "parameters": s["parameters"]},
        )
    (ctx.paths.home / STATE_FILE).write_text(json.dumps(paused))
    outcome = upgrade(ctx, take_backup=False)
    assert outcome.migrations == 0 and outcome.resumed == ["hello"]
    assert schedules(ctx, "hello/hello") == before


def code_folder(ctx: Context, deployment: str) -> str:
    dep = api(ctx, "GET", f"/deployments/name/{deployment}")
    return str(dep["pull_steps"][0][code_store.PULL_FROM_S3]["folder"])


def code_objects(ctx: Context, folder: str) -> dict[str, tuple[str, str]]:
    """Every object under a code folder: key -> (ETag, LastModified)."""
    client: Any = seaweedfs.s3_client(ctx)
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=ctx.config.object_store.code_bucket, Prefix=f"{folder}/"
    ):
        found.update(
            {o["Key"]: (o["ETag"], str(o["LastModified"])) for o in page.get("Contents", [])}
        )
    return found


def project_copy(dest: Path, greeting: str | None = None, legacy: bool = False) -> Path:
    """EXTRA with another greeting (other code), or as a deployment made before content
    folders: stock `prefect deploy` into a fixed folder, as `legacy-hello`."""
    root = dest / "extra"
    shutil.copytree(EXTRA, root, ignore=shutil.ignore_patterns("__pycache__"))
    if greeting:
        flows = root / "src" / "extra_flows.py"
        flows.write_text(
            flows.read_text().replace('f"Hello, {name}!"', f'f"{greeting}, {{name}}!"')
        )
    if legacy:
        text = (root / "prefect.yaml").read_text().replace("folder: extra", "folder: legacy-extra")
        (root / "prefect.yaml").write_text(text.replace("- name: hello", "- name: legacy-hello"))
    return root


def test_deploy_stores_code_by_content_and_old_fixed_folders_keep_working(
    source: tuple[Context, dict[str, Any]], homes: Callable[[str], Path]
) -> None:
    ctx, _ = source
    folder = code_folder(ctx, "hello/hello")
    files = code_store.hash_files(EXTRA, project_files(EXTRA))
    assert folder == code_store.content_folder("extra", code_store.digest(files))
    before = code_objects(ctx, folder)
    assert set(before) == {f"{folder}/{rel}" for rel in files} | {code_store.marker_key(folder)}
    # An unchanged redeploy points at the same folder and uploads nothing: every object keeps
    # its ETag and time.
    deploy(ctx, EXTRA)
    assert code_folder(ctx, "hello/hello") == folder
    assert code_objects(ctx, folder) == before
    # A deployment made the old way (stock push_to_s3 into a fixed folder) still runs.
    legacy = project_copy(homes("legacy").parent, legacy=True)
    prefect = str(Path(sys.executable).parent / "prefect")
    out = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--name", "legacy-hello"],
        cwd=legacy, env=child_env(ctx), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert code_folder(ctx, "hello/legacy-hello") == "legacy-extra"
    run = wait_state(ctx, create_run(ctx, "hello/legacy-hello", name="Old"), TERMINAL, 300)
    assert run["state_type"] == "COMPLETED" and result_value(ctx, run) == "Hello, Old!"


def test_snapshot_barrier_waits_for_flow_run_writers_and_gives_up_by_name(
    source: tuple[Context, dict[str, Any]],
) -> None:
    """The two snapshots are exported under a SHARE lock on flow_run: an in-flight flow-run
    write is waited for (and is then in Prefect's snapshot); one that never ends is named."""
    ctx, seeded = source
    run_id = seeded["runs"][1]
    name = api(ctx, "GET", f"/flow_runs/{run_id}")["name"]
    writer = postgres.connect(ctx, "prefect")
    try:
        writer.execute("BEGIN")
        writer.execute("UPDATE flow_run SET name = 'held-by-writer' WHERE id = %s", (run_id,))
        with (
            pytest.raises(FlowyardError, match=r"Could not lock prefect\.flow_run") as err,
            consistent_snapshots(ctx, ["prefect", "mlflow"], attempts=1, lock_timeout="1s"),
        ):
            pass
        assert "pg_stat_activity" in (err.value.fix or "")
        # The writer commits while the barrier waits: the snapshot sees its write.
        threading.Timer(1.0, lambda: writer.execute("COMMIT")).start()
        started = time.monotonic()
        with consistent_snapshots(ctx, ["prefect", "mlflow"], lock_timeout="10s") as snaps:
            assert time.monotonic() - started >= 0.9
            with postgres.connect(ctx, "prefect") as reader:
                reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                reader.execute(f"SET TRANSACTION SNAPSHOT '{snaps['prefect']}'")
                row = reader.execute(
                    "SELECT name FROM flow_run WHERE id = %s", (run_id,)
                ).fetchone()
                assert row == ("held-by-writer",)
                reader.execute("ROLLBACK")
    finally:
        writer.close()
        with postgres.connect(ctx, "prefect") as conn:
            conn.execute("UPDATE flow_run SET name = %s WHERE id = %s", (name, run_id))


class DuringBackup(Reporter):
    """Does `work[label]` as the backup step called `label` starts (the backup waits)."""

    def __init__(self, work: dict[str, Callable[[], None]]):
        self.work = work
        self.labels: list[str] = []

    def started(self, task: Task) -> None:
        self.labels.append(task.label)
        if task.label in self.work:
            self.work.pop(task.label)()


@pytest.fixture(scope="module")
def under_load(
    source: tuple[Context, dict[str, Any]], homes: Callable[[str], Path]
) -> dict[str, Any]:
    """A backup taken while runs are being created and run, with a redeploy of other code
    between the database dumps and the code bucket's copy: the moment that used to leave a
    deployment pointing at code the backup did not hold (the fixed folder, overwritten)."""
    ctx, _ = source
    target = homes("backup").parent / "backup"
    burst: list[str] = []
    changed = project_copy(homes("changed").parent, greeting="Howdy")

    def start_burst() -> None:
        burst.extend(create_run(ctx, "hello/hello", name=f"Burst{i}") for i in range(8))

    def redeploy() -> None:
        deploy(ctx, changed)

    old_folder = code_folder(ctx, "hello/hello")
    reporter = DuringBackup(
        {"Database prefect": start_burst, f"Bucket {ctx.config.object_store.code_bucket}": redeploy}
    )
    backup(ctx, target, reporter)
    assert not reporter.work, f"steps never started: {list(reporter.work)}"
    for step in ("Database prefect", "Database mlflow", "Bucket flowyard-results", "manifest"):
        assert any(step in label for label in reporter.labels)
    # The live platform now runs the new code from another folder; the old one is untouched.
    new_folder = code_folder(ctx, "hello/hello")
    assert new_folder != old_folder
    finished = [wait_state(ctx, r, TERMINAL, timeout=300) for r in burst]
    assert {r["state_type"] for r in finished} == {"COMPLETED"}
    run = wait_state(ctx, create_run(ctx, "hello/hello", name="New"), TERMINAL, 300)
    assert result_value(ctx, run) == "Howdy, New!"
    # Every run created after the snapshots: none of them is in the backup.
    later = [*burst, run["id"]]
    return {"path": target, "later": later, "old_folder": old_folder, "new_folder": new_folder}


@pytest.fixture(scope="module")
def taken(under_load: dict[str, Any]) -> Path:
    return Path(under_load["path"])


def test_backup_command_reports_each_step(
    source: tuple[Context, dict[str, Any]], homes: Callable[[str], Path]
) -> None:
    ctx, _ = source
    target = homes("backup-cli").parent / "backup"
    result = invoke("backup", "--home", str(ctx.paths.home), "--to", str(target))
    assert result.exit_code == 0, result.output
    for step in ("Database prefect", "Database mlflow", "Bucket flowyard-results", "manifest"):
        assert step in result.output
    # flat(): rich wraps the note at the terminal's width.
    held = re.search(r"exportedtogether\(flow-runwritesheld(\d+)ms\)", flat(result.output))
    assert held, result.output
    print(f"barrier held {held[1]} ms")
    # The barrier stops Prefect's flow-run writes only for the two snapshot exports.
    assert int(held[1]) < 1000, result.output
    mf.verify(target)


def test_backup_restore_roundtrip(
    source: tuple[Context, dict[str, Any]],
    under_load: dict[str, Any],
    taken: Path,
    homes: Callable[[str], Path],
) -> None:
    ctx, seeded = source
    assert (taken.stat().st_mode & 0o777) == 0o700
    manifest = mf.verify(taken)
    assert set(manifest.databases) == {"prefect", "mlflow"}
    assert manifest.files[mf.SECRETS_FILE].mode == 0o600
    assert {"flowyard", "prefect", "postgres", "pg_dump", "mlflow"} <= set(manifest.versions)
    assert any(k.startswith("caddy/pki/authorities/local/root") for k in manifest.files)

    old_ca = homes("old-ca").parent / "root.crt"
    old_ca.parent.mkdir(parents=True)
    shutil.copy(ctx.paths.ca_cert, old_ca)
    deployments = sorted(d["name"] for d in api(ctx, "POST", "/deployments/filter", json={}))
    # The burst's runs (and one after it) were created after the snapshots were exported:
    # not in the backup.
    history = {
        r["id"]: r["state_type"]
        for r in api(ctx, "POST", "/flow_runs/filter", json={"limit": 200})
        if r["state_type"] in TERMINAL and r["id"] not in under_load["later"]
    }
    done = [api(ctx, "GET", f"/flow_runs/{r}") for r in seeded["runs"]]
    results = [result_value(ctx, r) for r in done]
    assert results == ["Hello, Ada!", "Hello, Bob!"]
    # The machine is gone: the platform stops, a fresh home gets the backup.
    lifecycle.down(ctx, lambda *_: None)

    home = homes("restored")
    checked = invoke("restore", str(taken), "--home", str(home), "--check")
    assert checked.exit_code == 0, checked.output
    assert not home.exists()
    result = invoke("restore", str(taken), "--home", str(home), "--verify")
    assert result.exit_code == 0, result.output
    assert "flowyard up --home" in result.output
    # --verify started the restored platform, checked every deployment's code, ran the check
    # flow to Completed, and stopped it again.
    text = flat(result.output)
    assert flat("Restored and verified") in text and flat("Completed") in text
    assert not Supervisor(load_context(home).paths).pid()
    restored = load_context(home)
    assert restored.paths.ca_cert.read_bytes() == old_ca.read_bytes()
    assert (restored.paths.secrets_file.stat().st_mode & 0o777) == 0o600
    try:
        lifecycle.up(restored, lambda *_: None)
        assert (
            sorted(d["name"] for d in api(restored, "POST", "/deployments/filter", json={}))
            == deployments
        )
        after = {
            r["id"]: r["state_type"]
            for r in api(restored, "POST", "/flow_runs/filter", json={"limit": 200})
        }
        assert {k: after.get(k) for k in history} == history
        assert not set(under_load["later"]) & set(after)
        artifact = api(restored, "GET", f"/artifacts/{seeded['artifact']}")
        assert artifact["data"] == "# kept" and artifact["flow_run_id"] == seeded["runs"][0]
        # Clients holding the OLD CA certificate verify the restored platform: the API, the
        # S3 endpoint and MLflow, all through the proxy.
        verify = ssl.create_default_context(cafile=str(old_ca))
        health = httpx.get(f"{restored.config.proxy.url}/api/health", verify=verify)
        assert health.status_code == 200
        old_ca_env = {
            "PREFECT_API_SSL_CERT_FILE": str(old_ca),
            "AWS_CA_BUNDLE": str(old_ca),
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(old_ca),
        }
        for run in done:
            key = run["state"]["data"]["storage_key"]
            bucket = restored.config.object_store.results_bucket
            code = S3_READ % {"bucket": bucket, "key": key}
            read = run_client(restored, code, timeout=300, **old_ca_env)
            assert read["size"] > 0
        assert [result_value(restored, r) for r in done] == results
        code = MLFLOW_READ % {"run_id": seeded["mlflow_run"]}
        tracked = run_client(restored, code, timeout=300, **old_ca_env)
        assert tracked == {
            "experiment": "backup-check",
            "params": {"alpha": "0.5"},
            "metrics": {"loss": 0.25},
            "artifact": "artifact kept across restore",
        }
        # And the restored platform works: its worker pulls code from the restored bucket,
        # and every deployment runs the code it was registered with when the snapshot was
        # taken (the redeploy during the backup made other code, in another folder).
        assert code_folder(restored, "hello/hello") == under_load["old_folder"]
        run = wait_state(restored, create_run(restored, "hello/hello", name="Cy"), TERMINAL, 300)
        assert run["state_type"] == "COMPLETED" and result_value(restored, run) == "Hello, Cy!"
        # Every deployment runs (hello/legacy-hello, made the old way, among them when the
        # whole module runs).
        for dep in api(restored, "POST", "/deployments/filter", json={}):
            params = {"seconds": 0.1} if dep["name"] == "sleepy" else {"name": "Every"}
            made = api(
                restored, "POST", f"/deployments/{dep['id']}/create_flow_run",
                json={"parameters": params},
            )  # fmt: skip
            run = wait_state(restored, made["id"], TERMINAL, 300)
            assert run["state_type"] == "COMPLETED", (dep["name"], run["state"])
        # A code object lost after the restore is named, with the fix.
        folder = under_load["old_folder"]
        client: Any = seaweedfs.s3_client(restored)
        bucket = restored.config.object_store.code_bucket
        client.delete_object(Bucket=bucket, Key=f"{folder}/src/extra_flows.py")
        found = api(restored, "POST", "/deployments/filter", json={})
        problems = ops_verify.code_problems(restored, found)
        assert f"deployment hello: s3://{bucket}/{folder}/src/extra_flows.py is missing" in (
            problems
        )
    finally:
        lifecycle.down(restored, lambda *_: None)


def _damaged(taken: Path, dest: Path, damage: Callable[[Path], object]) -> Path:
    copy = dest / "backup"
    shutil.copytree(taken, copy)
    damage(copy)
    return copy


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_or_incomplete_backup_is_refused_before_anything_changes(
    taken: Path, homes: Callable[[str], Path]
) -> None:
    manifest = mf.verify(taken)
    blob = next(k for k in manifest.files if k.startswith("objects/flowyard-results/blobs/"))
    code = json.loads((taken / mf.index_path("flowyard-code")).read_text())["objects"][0]
    code_blob = mf.blob_path("flowyard-code", code["sha256"])
    cases: list[tuple[Callable[[Path], object], str]] = [
        (lambda b: _flip_byte(b / "databases/prefect.dump"), "databases/prefect.dump is damaged"),
        # Same size, other bytes: only the checksum tells; the object is named by its key.
        (
            lambda b: (b / code_blob).write_bytes(b"#" * code["size"]),
            f"{code_blob} is damaged (sha256 differs from the manifest) (object "
            f"{code['key']!r} in bucket flowyard-code)",
        ),
        (lambda b: (b / blob).unlink(), f"{blob} is missing"),
        (lambda b: (b / mf.MANIFEST).unlink(), "the backup is incomplete"),
        (lambda b: (b / "databases/extra.sql").write_text("x"), "not in the manifest"),
    ]
    for damage, reason in cases:
        home = homes("refused")
        backup = _damaged(taken, home.parent, damage)
        result = invoke("restore", str(backup), "--home", str(home))
        text = flat(result.output)
        assert result.exit_code == 1 and flat(reason) in text, result.output
        assert flat("Nothing was changed") in text and "Traceback" not in text
        assert not home.exists()
    # A home in use is refused too, unless told.
    home = homes("occupied")
    home.mkdir(parents=True)
    (home / "keep.txt").write_text("mine")
    with pytest.raises(FlowyardError, match="is not empty"):
        restore(taken, home)
    assert [p.name for p in home.iterdir()] == ["keep.txt"]
