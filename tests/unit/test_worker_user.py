"""The local worker's user on a root install: its runtime and its directory."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest

from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.errors import FlowyardError
from flowyard.platform.lifecycle import secure_home
from flowyard.services import local_worker, worker_python
from flowyard.services.base import ensure_system_user


def context(tmp_path: Path) -> Context:
    tmp_path.chmod(0o711)
    home = tmp_path / "home"
    home.mkdir()
    return Context(load_config(home, require_file=False), Secrets.generate())


def test_the_worker_gets_its_own_empty_profile_and_state(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    env = local_worker.env(ctx)
    assert env["PREFECT_HOME"] == str(ctx.paths.service_data("worker"))
    assert Path(env["PREFECT_PROFILES_PATH"]).parent == ctx.paths.service_data("worker")
    service = local_worker.service(ctx)
    if os.geteuid() == 0:
        assert service.user == ctx.config.worker.system_user
        assert service.env["HOME"] == env["PREFECT_HOME"]
    else:
        assert service.user is None and "HOME" not in service.env


@pytest.mark.skipif(os.geteuid() != 0, reason="a root install's worker user")
def test_linked_runtime_runs_as_the_worker_user_only_and_secure_home_leaves_it_alone() -> None:
    # Not tmp_path: pytest's base directory is 0700, out of another user's reach.
    base = Path(tempfile.mkdtemp(prefix="flowyard-pydist-"))
    try:
        _check_linked_runtime(context(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_as(ctx: Context, account: pwd.struct_passwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(worker_python.python(ctx)), "-c", "import flowyard, prefect; print('ok')"],
        env={"PATH": "/usr/bin:/bin", "HOME": "/", **worker_python.env(ctx)},
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )


def _check_linked_runtime(ctx: Context) -> None:
    ctx.paths.data.mkdir(parents=True)
    ctx.paths.run.mkdir()
    worker = ensure_system_user(ctx.config.worker.system_user)
    original = Path(sysconfig.get_paths()["stdlib"]) / "os.py"
    mode = original.stat().st_mode
    worker_python.ensure(ctx)
    secure_home(ctx.paths)
    # Hard links share their inode: a chmod under data/pydist would change the original.
    assert original.stat().st_mode == mode
    # The worker's user reaches it through its group; nobody else enters.
    root = worker_python.root(ctx).stat()
    assert stat.S_IMODE(root.st_mode) == 0o750 and root.st_gid == worker.pw_gid
    with pytest.raises(PermissionError):
        _run_as(ctx, pwd.getpwnam("nobody"))
    result = _run_as(ctx, worker)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
    # Made once per interpreter: a second call changes nothing.
    stamp = (worker_python.root(ctx) / ".source").stat().st_mtime_ns
    worker_python.ensure(ctx)
    assert (worker_python.root(ctx) / ".source").stat().st_mtime_ns == stamp


def test_worker_user_may_not_be_postgres_or_root(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    if os.geteuid() != 0:
        pytest.skip("only a root install switches users")
    worker = ctx.config.worker.model_copy(update={"system_user": ctx.config.postgres.system_user})
    bad = Context(ctx.config.model_copy(update={"worker": worker}), ctx.secrets)
    with pytest.raises(FlowyardError, match="account of its own"):
        local_worker.prepare(bad)
