"""supervisord.conf, rendered from the services' own descriptions."""

from __future__ import annotations

import shlex

from flowyard.config.paths import Paths
from flowyard.services.base import Service


def _env_value(value: str) -> str:
    # supervisor expands %(name)s in values and splits on commas outside quotes.
    return '"' + value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"') + '"'


def _program(service: Service, paths: Paths) -> list[str]:
    lines = [
        f"[program:{service.name}]",
        "command=" + shlex.join(service.command).replace("%", "%%"),
        f"directory={service.cwd or paths.home}",
        # flowyard starts services itself, in dependency order, waiting on each one.
        "autostart=false",
        "autorestart=true",
        f"startsecs={service.start_secs}",
        f"startretries={service.start_retries}",
        f"stopsignal={service.stop_signal}",
        f"stopwaitsecs={service.stop_wait}",
        # Stop and kill the whole process group: a worker's flow-run children go with it.
        "stopasgroup=true",
        "killasgroup=true",
        f"stdout_logfile={paths.log_file(service.name)}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
        "redirect_stderr=true",
    ]
    if service.user:
        lines.append(f"user={service.user}")
    if service.env:
        lines.append(
            "environment="
            + ",".join(f"{k}={_env_value(v)}" for k, v in sorted(service.env.items()))
        )
    return lines


def render_supervisor_conf(services: list[Service], paths: Paths) -> str:
    lines = [
        "; Rendered by flowyard from flowyard.toml; edits are overwritten by `flowyard up`.",
        "; Holds service environments (passwords included): kept 0600.",
        "[unix_http_server]",
        f"file={paths.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        # Every file a service writes (logs with flow output, volumes, results, sockets) is
        # its owner's alone: loopback and /tmp-style permissions are not private.
        "umask=077",
        f"logfile={paths.log_file('supervisord')}",
        "logfile_maxbytes=20MB",
        f"pidfile={paths.supervisor_pid}",
        f"childlogdir={paths.logs}",
        f"directory={paths.home}",
        "identifier=flowyard",
        "nodaemon=false",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{paths.supervisor_socket}",
        "",
    ]
    for service in services:
        lines += [*_program(service, paths), ""]
    return "\n".join(lines)
