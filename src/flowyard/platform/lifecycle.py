"""`up`, `down` and `status`: the platform's lifecycle over supervisord."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import psutil

from flowyard.config.context import Context
from flowyard.config.paths import Paths
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.platform.registry import build_services
from flowyard.platform.startup import Graph
from flowyard.platform.supervisor import Supervisor
from flowyard.render.prefect_profile import render_profiles, render_server_profiles
from flowyard.render.supervisor import render_supervisor_conf
from flowyard.services import metrics
from flowyard.services import postgres as postgres_service
from flowyard.services.base import Service, ensure_system_user, no_probe, port_free
from flowyard.waiting import wait_until

# Called with (service name, phase) so the CLI can draw progress without this module
# knowing about terminals.
Progress = Callable[[str, str], None]
FAILED_STATES = {"FATAL", "EXITED", "BACKOFF", "UNKNOWN"}
# A progress phase starting with this is a line of information, not a state change.
NOTE = "· "
# In run/: when the last `up` that started something ran, how long it took, what it started.
LAST_START = "last-start.json"


def tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log yet)"


def _check_home_writable(paths: Paths) -> None:
    probe = paths.home / ".write-test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FlowyardError(
            f"FLOWYARD_HOME {paths.home} is not writable: {exc.strerror}.",
            fix="Fix its ownership/permissions, or point FLOWYARD_HOME at a writable directory.",
        ) from exc


def _who_listens(port: int) -> str:
    with contextlib.suppress(psutil.Error, PermissionError):
        for conn in psutil.net_connections("tcp"):
            listening = conn.status == psutil.CONN_LISTEN and conn.pid
            if listening and getattr(conn.laddr, "port", None) == port:
                return f" by {psutil.Process(conn.pid).name()} (pid {conn.pid})"
    return ""


def env_var_for(setting: str) -> str:
    """`object_store.s3_port + 10000 (gRPC)` -> FLOWYARD_OBJECT_STORE__S3_PORT."""
    return "FLOWYARD_" + setting.split(" ")[0].upper().replace(".", "__")


def check_ports(ctx: Context, services: list[Service]) -> None:
    taken = []
    for service in services:
        for setting, port in service.ports.items():
            public = setting.startswith("proxy.") and setting != "proxy.admin_port"
            host = ctx.config.proxy.listen_address if public else "127.0.0.1"
            if not port_free(port, host):
                taken.append((setting, port))
    if taken:
        what = "; ".join(f"port {p} ({s}) is already in use{_who_listens(p)}" for s, p in taken)
        settings = ", ".join(sorted({s.split(" ")[0] for s, _ in taken}))
        env = ", ".join(sorted({env_var_for(s) for s, _ in taken}))
        raise FlowyardError(
            f"Cannot start: {what}.",
            fix=f"Stop what holds it, or move Flowyard: change {settings} in "
            f"{ctx.paths.config_file} (or set {env}).",
        )


def is_ready(service: Service, state: str) -> bool:
    """Whether `service`, in supervisord state `state`, is ready. A probe that answers
    proves more than supervisord's `start_secs` of staying up, so a service is ready while
    supervisord still counts them (STARTING); one with no probe once they are up (RUNNING)."""
    if service.ready is no_probe:
        return state == "RUNNING"
    return state in ("STARTING", "RUNNING") and service.ready()


def _wait_ready(sup: Supervisor, service: Service, ctx: Context, check: Callable[[], None]) -> None:
    def ready() -> bool:
        check()  # raises once another service's start has failed
        state = sup.info(service.name)["statename"]
        if state in FAILED_STATES:
            raise _service_failed(ctx, service, f"exited ({state})")
        return is_ready(service, state)

    if not wait_until(ready, service.ready_timeout):
        raise _service_failed(ctx, service, f"not ready after {service.ready_timeout:.0f} s")


def _service_failed(ctx: Context, service: Service, why: str) -> FlowyardError:
    log = ctx.paths.log_file(service.name)
    return FlowyardError(
        f"{service.name} ({service.description}) {why}. Last lines of {log}:\n{tail(log)}",
        fix="Fix the cause above, then `flowyard up` again "
        f"(`flowyard logs {service.name}` shows more).",
    )


# Longest path a Unix socket may have (sun_path is 108 bytes with its terminating NUL).
SOCKET_PATH_MAX = 107
# Owned by other accounts or meant to be read by them: left as they are by `secure_home`.
_PUBLIC = ("ca",)
# data/worker is the worker's user's own (0700 suits it). data/pydist is readable through the
# worker user's group, and its files are hard links to the interpreter's own: a chmod there
# would change those.
_FOREIGN = ("data/postgres", "data/pgdist", "data/pydist", "run/postgres")


def _prepare_dirs(ctx: Context) -> None:
    paths = ctx.paths
    for d in (paths.home, paths.data, paths.logs, paths.run, paths.prefect_home, paths.files):
        d.mkdir(parents=True, exist_ok=True)
    paths.sockets.mkdir(exist_ok=True)
    secure_home(paths)
    longest = max(
        [paths.socket(n) for n in ("caddy-admin", "prefect-api", "mlflow", "redis", "s3")]
        + [paths.postgres_sockets / f".s.PGSQL.{ctx.config.postgres.port}.lock"],
        key=lambda p: len(str(p)),
    )
    if len(str(longest).encode()) > SOCKET_PATH_MAX:
        raise FlowyardError(
            f"FLOWYARD_HOME {paths.home} is too long for the platform's Unix sockets "
            f"({longest} is {len(str(longest).encode())} bytes; the limit is "
            f"{SOCKET_PATH_MAX}).",
            fix="Use a shorter FLOWYARD_HOME (e.g. /var/lib/flowyard or ~/.flowyard).",
        )


def secure_home(paths: Paths) -> None:
    """Nothing under FLOWYARD_HOME is readable by another local user: results, logs (with
    flow output), configs and sockets alike. Homes made by earlier versions (0755 dirs,
    0644 files) are tightened in place.

    On a root install PostgreSQL runs as an unprivileged account, which must pass through
    home, data and run (0711: traverse, never list); its own directories stay its own.
    The exported CA certificate is public on purpose (clients of every user read it).
    """
    traverse = 0o011 if os.geteuid() == 0 else 0
    for path in (paths.home, paths.data, paths.run):
        path.chmod(0o700 | traverse)
    skip = {paths.home / p for p in (*_PUBLIC, *_FOREIGN)}
    for root, dirs, files in os.walk(paths.home):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in [*dirs, *files]:
            path = here / name
            with contextlib.suppress(OSError):
                mode = path.lstat().st_mode
                if mode & 0o077 and not stat.S_ISLNK(mode) and path not in (paths.data, paths.run):
                    path.chmod(stat.S_IMODE(mode) & 0o700)


def supervisor_conf_changed(ctx: Context, services: list[Service]) -> bool:
    path = ctx.paths.supervisor_conf
    old = path.read_text() if path.exists() else None
    return old != render_supervisor_conf(services, ctx.paths)


def write_rendered_files(ctx: Context, services: list[Service]) -> bool:
    """Write the Prefect profiles and supervisord's config, 0600; True when supervisord's
    changed (the caller then reloads it)."""
    write_private(ctx.paths.prefect_profiles, render_profiles(ctx))
    write_private(ctx.paths.prefect_server_profiles, render_server_profiles())
    path = ctx.paths.supervisor_conf
    text = render_supervisor_conf(services, ctx.paths)
    old = path.read_text() if path.exists() else None
    if old != text:
        write_private(path, text)
    return old != text


def up(ctx: Context, progress: Progress, only: Collection[str] | None = None) -> None:
    """Start the platform; with `only`, just those services (restore and upgrade use it),
    and a failure then stops only what this call started."""
    # What `up` and the services' prepare steps create (data dirs, rendered configs) is
    # owner-only, whoever calls this; supervisord gives its programs the same umask.
    old_umask = os.umask(0o077)
    begun, at = time.monotonic(), time.time()
    try:
        started = _up(ctx, progress, only)
        if started:
            _record_start(ctx, at, time.monotonic() - begun, started)
    finally:
        os.umask(old_umask)


def _record_start(ctx: Context, at: float, seconds: float, started: list[str]) -> None:
    """What `status` shows as the last start: users see their start time without a benchmark."""
    record = {"at": at, "seconds": round(seconds, 2), "services": started}
    write_private(ctx.paths.run / LAST_START, json.dumps(record))


def last_start(ctx: Context) -> dict[str, object] | None:
    try:
        record: dict[str, object] = json.loads((ctx.paths.run / LAST_START).read_text())
    except (OSError, ValueError):
        return None
    return record


def _up(ctx: Context, progress: Progress, only: Collection[str] | None) -> list[str]:
    """Start what is not running; returns the services it started."""
    paths = ctx.paths
    _check_home_writable(paths)
    _prepare_dirs(ctx)
    services = build_services(ctx)
    sup = Supervisor(paths)
    was_running = sup.running()
    if only is not None and was_running and supervisor_conf_changed(ctx, services):
        # Restarting everything would exceed what the caller asked for.
        raise FlowyardError(
            "The platform's rendered configuration changed since it started.",
            fix="Run `flowyard down` then `flowyard up` to apply it.",
        )
    changed = write_rendered_files(ctx, services)
    if was_running and changed:
        # Programs' commands or environments changed: restart cleanly rather than patch.
        progress("supervisor", NOTE + "configuration changed: restarting the platform")
        down(ctx, progress)
        was_running = False
    running = (
        {i["name"] for i in sup.all_info() if i["statename"] == "RUNNING"} if was_running else set()
    )
    targets = [s for s in services if only is None or s.name in only]
    if not was_running:  # services that outlived a killed supervisord hold their ports
        sup.stop_orphans(services, lambda n, phase: progress(n, f"{NOTE}orphaned: {phase}"))
    check_ports(ctx, [s for s in targets if s.name not in running])
    if not was_running:
        # supervisord refuses a config naming a user that does not exist yet.
        for service in services:
            if service.user:
                ensure_system_user(service.user)
        sup.start()
    done = set()
    for service in targets:
        if service.name in running and is_ready(service, "RUNNING"):
            progress(service.name, "already running")
            done.add(service.name)
    graph = Graph([s for s in targets if s.name not in done], done)
    lock = threading.Lock()

    def report(name: str, phase: str) -> None:
        with lock:  # one line at a time from the starting threads
            progress(name, phase)

    def start(service: Service) -> None:
        graph.wait_for(
            service.prepare_after if service.prepare_after is not None else service.after
        )
        graph.mark_started(service.name)
        report(service.name, "preparing")
        if service.prepare:
            # What it creates (data/seaweedfs, data/mlflow, ...) is owner-only from the
            # start: `up` runs under umask 077, so no walk of the home is needed here.
            service.prepare()
        graph.wait_for(service.after)
        report(service.name, "starting")
        try:
            # Not waiting for supervisord's RUNNING (start_secs, then its next tick: 1-1.5 s
            # a service on the critical path): `_wait_ready` polls the state and the probe.
            sup.start_process(service.name, wait=False)
        except Exception as exc:
            raise _service_failed(ctx, service, f"did not start ({exc})") from exc
        report(service.name, "waiting until ready")
        _wait_ready(sup, service, ctx, graph.check)
        if service.bootstrap:
            report(service.name, "bootstrapping")
            for line in service.bootstrap() or []:
                report(service.name, NOTE + line)
        report(service.name, "ready")

    try:
        graph.run(start)
    except BaseException:
        # Leave nothing half-up: a failed start stops everything it started (data is kept).
        if only is None:
            down(ctx, lambda *_: None)
        else:
            stop_services(ctx, graph.started, lambda *_: None)
        raise
    return graph.started


def stop_services(ctx: Context, names: Collection[str], progress: Progress) -> None:
    """Stop some services (in reverse start order), leaving supervisord and the rest up."""
    sup = Supervisor(ctx.paths)
    for service in reversed(build_services(ctx)):
        if service.name in names:
            progress(service.name, "stopping")
            sup.stop_process(service.name)
            progress(service.name, "stopped")


def down(ctx: Context, progress: Progress) -> bool:
    """Stop services in reverse order, then supervisord. False when nothing was running."""
    sup = Supervisor(ctx.paths)
    pid = sup.pid()
    if pid is None:
        return bool(sup.stop_orphans(build_services(ctx), progress))
    # Prefect starts flow runs in sessions of their own, out of reach of supervisor's group
    # kill: note every descendant now and make sure none outlives `down`.
    descendants: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        descendants = psutil.Process(pid).children(recursive=True)
    with contextlib.suppress(Exception):
        for name in reversed([s.name for s in build_services(ctx)]):
            progress(name, "stopping")
            with contextlib.suppress(Exception):
                sup.stop_process(name)
            progress(name, "stopped")
    sup.shutdown()
    _reap(descendants)
    ctx.paths.supervisor_socket.unlink(missing_ok=True)
    return True


def _reap(processes: list[psutil.Process], grace: float = 10) -> None:
    alive = [p for p in processes if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@dataclass
class ServiceStatus:
    name: str
    description: str
    state: str
    pid: int | None
    uptime_seconds: int | None
    ready: bool
    problem: str | None = None
    # Proportional set size of the service's processes (its children included): what it
    # costs the machine's memory, shared pages divided among their users.
    pss_mib: float | None = None

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


def status(ctx: Context) -> list[ServiceStatus]:
    sup = Supervisor(ctx.paths)
    infos = {i["name"]: i for i in sup.all_info()} if sup.running() else {}
    result = []
    for service in build_services(ctx):
        info = infos.get(service.name)
        state = info["statename"] if info else "STOPPED"
        running = state == "RUNNING"
        result.append(
            ServiceStatus(
                name=service.name,
                description=service.description,
                state=state,
                pid=info["pid"] if info and running else None,
                uptime_seconds=(info["now"] - info["start"]) if info and running else None,
                ready=is_ready(service, state),
                # Also while it is down: a full disk is why PostgreSQL cannot start again.
                problem=service.problem() if info and service.problem else None,
                pss_mib=_pss_mib(info["pid"]) if info and running else None,
            )
        )
    return result


def _pss_mib(pid: int) -> float | None:
    try:
        proc = psutil.Process(pid)
        tree = [proc, *proc.children(recursive=True)]
        total = 0
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_full_info().pss
    except (psutil.Error, AttributeError):  # AttributeError: no PSS on this platform
        return None
    return round(total / 2**20, 1)


def run_figures(ctx: Context, rows: list[ServiceStatus]) -> metrics.PrefectFigures | None:
    """Late runs, queue depth, pools and workers, as the metrics exporter reads them; None
    while PostgreSQL is not ready (or the database cannot answer)."""
    if not any(r.name == postgres_service.NAME and r.ready for r in rows):
        return None
    try:
        return metrics.read_prefect_figures(ctx)
    except Exception:
        return None
