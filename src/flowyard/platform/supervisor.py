"""Talking to supervisord over its owner-only Unix socket, and proving which processes are
this home's before any of them is signalled.

A PID in `run/supervisord.pid` is only trusted when the process is supervisord started with
this home's `run/supervisord.conf`, and started no later than the pidfile was written (a PID
reused after a reboot belongs to a process started after it). Anything else makes the pidfile
stale: it is removed, and that PID is never signalled.

Services that outlive their supervisord (`kill -9` of supervisord) are found by their
environment: supervisord sets `SUPERVISOR_SERVER_URL=unix://<home>/run/supervisor.sock` and
`SUPERVISOR_PROCESS_NAME` in every program it starts, and children inherit it. The socket
path names this home and no other, and a process's initial environment cannot be changed by
anyone but the process itself, so a match is proof; their descendants (PostgreSQL backends
rewrite their environment area with their titles) are ours through them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from flowyard.config.paths import Paths
from flowyard.errors import FlowyardError
from flowyard.services.base import Service, binary

# psutil's start times derive from the boot time, which /proc gives in whole seconds.
START_TIME_TOLERANCE = 2.0

# Variables a user's shell may carry that must not leak into platform processes.
# (weed mini even turns AWS_* keys into a second S3 login, and reads S3_* and WEED_*.)
_CLIENT_PREFIXES = ("PREFECT_", "AWS_", "MLFLOW_", "FLOWYARD_", "S3_", "WEED_")


class Supervisor:
    def __init__(self, paths: Paths):
        self.paths = paths
        # Why the last pidfile read was stale (and removed), for the CLI to say so.
        self.stale: str | None = None

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.paths.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    @property
    def rpc(self) -> Any:
        return self._proxy().supervisor

    def pid(self) -> int | None:
        """This home's supervisord, proven (see the module's doc); else None, and a stale
        pidfile is removed."""
        pidfile = self.paths.supervisor_pid
        try:
            text = pidfile.read_text().strip()
            written = pidfile.stat().st_mtime
        except OSError:
            return None
        if not text:
            # supervisord opens its pidfile (truncating it) before writing the PID: an
            # empty file is most likely one being written right now, not a stale one.
            # Removing it would hide the new supervisord for good.
            return None
        try:
            pid = int(text)
        except ValueError:
            self._stale(text, f"it holds {text!r}, not a PID")
            return None
        why = self._not_ours(pid, written)
        if why is None:
            return pid
        self._stale(text, why)
        return None

    def _not_ours(self, pid: int, written: float) -> str | None:
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
            started = proc.create_time()
        except psutil.NoSuchProcess:
            return f"PID {pid} is not running"
        except psutil.AccessDenied:
            return f"PID {pid} belongs to another user"
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"PID {pid} has exited"
        conf = str(self.paths.supervisor_conf)
        if not any(Path(a).name == "supervisord" for a in cmdline) or conf not in cmdline:
            shown = " ".join(cmdline)[:80] or proc.name()
            return f"PID {pid} is `{shown}`, not supervisord with {conf}"
        if started > written + START_TIME_TOLERANCE:
            return f"PID {pid} started after the pidfile was written (a reused PID)"
        return None

    def _stale(self, text: str, why: str) -> None:
        pidfile = self.paths.supervisor_pid
        # Only the file as read: a supervisord starting right now may be rewriting it.
        with contextlib.suppress(OSError):
            if pidfile.read_text().strip() == text:
                pidfile.unlink()
        self.stale = f"removed the stale {pidfile}: {why}; that process was not touched"

    def orphans(self, services: Iterable[Service] = ()) -> dict[str, list[psutil.Process]]:
        """Services of this home still running without their supervisord, by program name:
        each program's first process, then its descendants. Empty while supervisord runs.

        Proof is the supervisor environment (see the module's doc). A program that rewrites
        its environment area with its process title (Redis does) is recognised instead by
        running its service's own executable (not an interpreter: Python services' commands
        are scripts) in the working directory supervisord gave it, inside this home."""
        if self.pid() is not None:
            return {}
        url = f"unix://{self.paths.supervisor_socket}"
        home = self.paths.home.resolve()
        binaries: dict[tuple[str, Path], str] = {}
        for service in services:
            where = Path(service.cwd or self.paths.home).resolve()
            if service.command and where.is_relative_to(home):
                binaries[(os.path.realpath(service.command[0]), where)] = service.name
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found: dict[str, list[psutil.Process]] = {}
        for proc in psutil.process_iter():
            if proc.pid in mine:
                continue
            try:
                env = proc.environ()
            except (psutil.Error, OSError):
                continue
            name = env.get("SUPERVISOR_PROCESS_NAME")
            if name and env.get("SUPERVISOR_SERVER_URL") == url:
                found.setdefault(name, []).append(proc)
            elif "SUPERVISOR_SERVER_URL" not in env:
                with contextlib.suppress(psutil.Error, OSError):
                    name = binaries.get((os.path.realpath(proc.exe()), Path(proc.cwd()).resolve()))
                    if name:
                        found.setdefault(name, []).append(proc)
        result: dict[str, list[psutil.Process]] = {}
        for name, procs in found.items():
            pids = {p.pid for p in procs}
            tops = [p for p in procs if _ppid(p) not in pids]
            family: dict[int, psutil.Process] = {}
            for proc in [*tops, *procs]:
                family.setdefault(proc.pid, proc)
                with contextlib.suppress(psutil.Error):
                    for child in proc.children(recursive=True):
                        family.setdefault(child.pid, child)
            result[name] = [p for p in family.values() if p.pid not in mine]
        return result

    def stop_orphans(
        self, services: Iterable[Service], progress: Callable[[str, str], None]
    ) -> list[str]:
        """Stop orphaned services in reverse start order, each with its own stop signal,
        killing what outlives its stop timeout; the names stopped."""
        known = list(services)
        orphans = self.orphans(known)
        if not orphans:
            return []
        order = [s for s in reversed(known) if s.name in orphans]
        unknown = [n for n in orphans if n not in {s.name for s in known}]
        for name, sig, wait in [
            *((s.name, s.stop_signal, s.stop_wait) for s in order),
            *((n, "TERM", 10) for n in unknown),
        ]:
            progress(name, "stopping (orphaned)")
            procs = orphans[name]
            with contextlib.suppress(psutil.Error):
                procs[0].send_signal(getattr(signal, f"SIG{sig}"))
            _reap(procs[:1], wait)
            _reap(procs, 5)
            progress(name, "stopped")
        self.paths.supervisor_socket.unlink(missing_ok=True)
        return [s.name for s in order] + unknown

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

    def start_process(self, name: str, wait: bool = True) -> None:
        """Start `name`; with `wait`, return once supervisord calls it RUNNING (up for its
        `startsecs`, checked at supervisord's next tick: about a second more)."""
        try:
            self.rpc.startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise

    def signal_process(self, name: str, sig: str) -> None:
        """Send `sig` (e.g. "HUP") to a running program (supervisord's signalProcess)."""
        self.rpc.signalProcess(name, sig)

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


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.Error:
        return None


def _reap(procs: list[psutil.Process], grace: float) -> None:
    """Wait up to `grace` seconds for `procs` to end; TERM then KILL those that do not.
    psutil refuses to signal a PID reused since it was listed."""
    alive = [p for p in procs if _alive(p)]
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, still = psutil.wait_procs(still, timeout=5)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(still, timeout=5)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
