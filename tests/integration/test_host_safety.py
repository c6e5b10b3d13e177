"""Issue 13 on the real platform: a stale pidfile never gets an unrelated process killed, one
command at a time per home, and services orphaned by `kill -9 supervisord` are reported by
`status`, stopped by `down`, and do not stop the next `up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from flowyard.config.context import Context
from flowyard.platform import lifecycle
from flowyard.platform.lock import home_lock
from flowyard.platform.registry import build_services
from flowyard.platform.supervisor import Supervisor
from flowyard.testing import init_home, platform_pids, running_platform

pytestmark = pytest.mark.timeout(600)
FLOWYARD = str(Path(sys.executable).parent / "flowyard")


def cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWYARD, *args, "--home", str(home)], capture_output=True, text=True, timeout=timeout
    )


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not Flowyard's, as a reused PID would be."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_stale_pidfile_never_signals_an_unrelated_process(
    homes: Callable[[str], Path], unrelated: subprocess.Popen[bytes]
) -> None:
    ctx = init_home(homes("stale"))
    ctx.paths.run.mkdir(parents=True, exist_ok=True)
    ctx.paths.supervisor_pid.write_text(f"{unrelated.pid}\n")
    down = cli(ctx.config.home, "down")
    assert down.returncode == 0, down.stderr
    assert unrelated.poll() is None, "down killed a process that was not Flowyard's"
    assert "stale" in down.stderr and str(unrelated.pid) in down.stderr
    assert "not running" in down.stdout
    assert not ctx.paths.supervisor_pid.exists()
    # status and restore's "is it running" check trust it no more than down does.
    ctx.paths.supervisor_pid.write_text(f"{unrelated.pid}\n")
    status = cli(ctx.config.home, "status", "--json")
    assert "stale" in status.stderr
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"STOPPED"}
    assert Supervisor(ctx.paths).pid() is None and unrelated.poll() is None


def test_a_second_command_is_refused_while_one_holds_the_home(
    homes: Callable[[str], Path],
) -> None:
    ctx = init_home(homes("lock"))
    home = ctx.config.home
    with home_lock(home, "up"):
        for args in (("down",), ("up",), ("init", "--force"), ("apply",), ("backup",)):
            busy = cli(home, *args)
            assert busy.returncode == 1, (args, busy.stdout, busy.stderr)
            assert f"`flowyard up` (pid {os.getpid()})" in busy.stderr, busy.stderr
            assert "Fix: Wait for" in busy.stderr and "Traceback" not in busy.stderr
        # Reading commands do not wait for the lock.
        assert cli(home, "status").returncode == 3
    assert cli(home, "down").returncode == 0
    # A holder killed with -9 cannot leave a stale lock: the kernel drops it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from flowyard.platform.lock import home_lock\n"
            f"with home_lock(Path({str(home)!r}), 'upgrade'):\n"
            "    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    busy = cli(home, "down")
    assert busy.returncode == 1 and f"(pid {holder.pid})" in busy.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert cli(home, "down").returncode == 0


def test_services_orphaned_by_a_killed_supervisord(homes: Callable[[str], Path]) -> None:
    with running_platform(homes("orphans")) as ctx:
        home = ctx.config.home
        pids = platform_pids(ctx)
        sup_pid = Supervisor(ctx.paths).pid()
        assert sup_pid is not None
        # The services' own processes: supervisord's children. Their descendants include
        # short-lived ones (PostgreSQL's autovacuum workers, a worker's warm-up), which may
        # end on their own at any moment.
        services = {c.pid for c in psutil.Process(sup_pid).children()}
        assert len(services) >= 7
        os.kill(sup_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not gone(sup_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        died = [p for p in services if gone(p)]
        assert not died, f"services should outlive supervisord: {died}"
        # Every service found, none confused with another home's or this test's processes.
        found = Supervisor(ctx.paths).orphans(build_services(ctx))
        assert all(procs[0].pid in pids for procs in found.values()), found

        status = cli(home, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert cli(home, "status").returncode == 3
        rows = {s["name"]: s for s in json.loads(status.stdout)["services"]}
        orphaned = {n: r for n, r in rows.items() if r["state"] == "ORPHANED"}
        # A service may die on its own once its log pipe to supervisord is gone; the rest
        # are orphans, each named with a PID that was the platform's.
        assert {"postgres", "redis", "seaweedfs", "prefect-api"} <= set(orphaned), rows
        for r in orphaned.values():
            assert r["pid"] in services and "flowyard down" in r["problem"], r

        down = cli(home, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "orphaned" in down.stdout
        left = [p for p in pids - {sup_pid} if not gone(p)]
        assert not left, [psutil.Process(p).cmdline() for p in left]
        listening = {
            getattr(c.laddr, "port", None)
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert not listening & set(ctx.config.port_settings().values())
        assert not Supervisor(ctx.paths).orphans()

        # Orphans found by `up` itself: kill supervisord again, then up straight away.
        up = cli(home, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        sup_pid = Supervisor(ctx.paths).pid()
        assert sup_pid is not None
        before = platform_pids(ctx) - {sup_pid}
        os.kill(sup_pid, signal.SIGKILL)
        lifecycle.up(ctx, lambda *_: None)
        assert all(s.ready for s in lifecycle.status(ctx))
        assert all(gone(p) for p in before)


def test_pid_proof_needs_supervisord_with_this_conf_started_before_the_pidfile(
    homes: Callable[[str], Path], tmp_path: Path
) -> None:
    ctx: Context = init_home(homes("proof"))
    ctx.paths.run.mkdir(parents=True, exist_ok=True)
    conf = str(ctx.paths.supervisor_conf)
    # A process whose command line looks like ours: `python -c ... supervisord -c CONF`.
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "supervisord", "-c", conf]
    )
    try:
        time.sleep(0.5)
        pidfile = ctx.paths.supervisor_pid
        # Empty: a supervisord starting right now has opened it and not yet written its PID.
        # Removing it as stale would hide that supervisord from every later check.
        pidfile.write_text("")
        sup = Supervisor(ctx.paths)
        assert sup.pid() is None and sup.stale is None and pidfile.exists()
        pidfile.write_text(f"{fake.pid}\n")
        assert Supervisor(ctx.paths).pid() == fake.pid
        # Written an hour before the process started: the PID was reused.
        an_hour_ago = time.time() - 3600
        os.utime(pidfile, (an_hour_ago, an_hour_ago))
        sup = Supervisor(ctx.paths)
        assert sup.pid() is None and "reused" in (sup.stale or "")
        assert not pidfile.exists()
        # Another home's supervisord is not ours either.
        other = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)", "supervisord", "-c", "/x.conf"]
        )
        try:
            time.sleep(0.5)
            pidfile.write_text(f"{other.pid}\n")
            sup = Supervisor(ctx.paths)
            assert sup.pid() is None and "not supervisord with" in (sup.stale or "")
            assert other.poll() is None
        finally:
            other.kill()
            other.wait()
    finally:
        fake.kill()
        fake.wait()
