"""Loopback is not private: another local user must get nothing without a credential.

The platform is brought up as it is installed (MLflow on), then a probe runs as `nobody`
(`setpriv`, the system's own Python: the project's venv may sit where nobody cannot
reach) and tries every port the platform's processes listen on, every Unix socket and
every file under FLOWYARD_HOME. Only the proxy's public ports answer, and only without
data; the exported CA certificate is the one readable file (it is public).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from flowyard.config.context import Context
from flowyard.testing import platform_pids, running_platform

SYSTEM_PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root, setpriv and the system Python to act as another local user",
)

PROBE_CODE = textwrap.dedent(
    r"""
    import json, os, socket, ssl, sys
    plan = json.loads(sys.stdin.read())
    out = {"uid": os.getuid(), "files": {}, "dirs": {}, "sockets": {}, "tcp": {}, "https": {}}
    for path in plan["files"]:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            out["files"][path] = "read"
        except OSError as exc:
            out["files"][path] = type(exc).__name__
    for path in plan["dirs"]:
        try:
            os.listdir(path)
            out["dirs"][path] = "listed"
        except OSError as exc:
            out["dirs"][path] = type(exc).__name__
    for path in plan["sockets"]:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            out["sockets"][path] = "connected"
        except OSError as exc:
            out["sockets"][path] = type(exc).__name__
        finally:
            s.close()
    for port in plan["ports"]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                out["tcp"][str(port)] = "open"
        except OSError as exc:
            out["tcp"][str(port)] = type(exc).__name__
    context = ssl.create_default_context(cafile=plan["ca"])
    for name, (port, path) in plan["https"].items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                          "Connection: close\r\n\r\n".encode())
                head = s.recv(4096).decode(errors="replace")
        out["https"][name] = head.split("\r\n", 1)[0]
    print(json.dumps(out))
    """
)
PYTHON_PROBE = [SYSTEM_PYTHON, "-I", "-c", PROBE_CODE]


@pytest.fixture(scope="module")
def installed(homes: Callable[[str], Path]) -> Iterator[Context]:
    """A platform as `flowyard init` makes it: MLflow on."""
    with running_platform(homes("security"), mlflow={"enabled": True}) as ctx:
        yield ctx


def listening_ports(ctx: Context) -> dict[int, str]:
    found: dict[int, str] = {}
    for pid in platform_pids(ctx):
        try:
            proc = psutil.Process(pid)
            for conn in proc.net_connections("inet"):
                if conn.status == psutil.CONN_LISTEN:
                    cmdline = " ".join(proc.cmdline())
                    worker = "prefect" in cmdline and "worker start" in cmdline
                    found[conn.laddr.port] = "prefect worker" if worker else proc.name()
        except psutil.Error:
            continue
    return found


def probe_as_nobody(plan: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *PYTHON_PROBE],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["uid"] != 0
    return out


def test_another_local_user_gets_nothing_without_a_credential(installed: Context) -> None:
    ctx, paths = installed, installed.paths
    proxy, store = ctx.config.proxy, ctx.config.object_store
    files: list[str] = []
    dirs: list[str] = []
    sockets: list[str] = []
    for root, dirnames, filenames in os.walk(paths.home):
        dirs += [os.path.join(root, d) for d in dirnames]
        for name in filenames:
            path = os.path.join(root, name)
            (sockets if Path(path).is_socket() else files).append(path)
    ports = listening_ports(ctx)
    public = {proxy.https_port, proxy.http_port, proxy.s3_https_port}
    assert public <= set(ports), ports
    plan = {
        "files": files,
        "dirs": [str(paths.home), *dirs],
        "sockets": sockets,
        "ports": sorted(ports),
        "ca": str(paths.ca_cert),
        "https": {
            "api": (proxy.https_port, "/api/admin/version"),
            "ui data": (proxy.https_port, "/api/flow_runs/filter"),
            "mlflow": (proxy.https_port, "/mlflow/api/2.0/mlflow/experiments/search"),
            "files": (proxy.https_port, "/files/anything"),
            "s3": (proxy.s3_https_port, f"/{store.code_bucket}"),
            "health": (proxy.https_port, "/api/health"),
        },
    }
    out = probe_as_nobody(plan)

    public_files = {str(paths.ca_cert)}
    readable = sorted(p for p, r in out["files"].items() if r == "read" and p not in public_files)
    assert not readable, f"{len(readable)} readable by another local user: {readable[:10]}"
    listed = sorted(p for p, r in out["dirs"].items() if r == "listed" and not p.endswith("/ca"))
    assert not listed, f"{len(listed)} listable by another local user: {listed[:10]}"
    assert sockets, "the platform's internal hops are Unix sockets"
    connected = sorted(p for p, r in out["sockets"].items() if r != "PermissionError")
    assert not connected, f"sockets another local user can reach: {connected}"

    # Through the proxy: the API, MLflow, /files/ and S3 refuse; only the probe answers.
    status = {name: line.split(" ")[1] for name, line in out["https"].items()}
    assert status == {
        "api": "401",
        "ui data": "401",
        "mlflow": "401",
        "files": "401",
        "s3": "403",
        "health": "200",
    }, out["https"]

    # Besides the proxy, only two things bind loopback ports: Prefect's worker, whose
    # control channel for its flow runs takes a per-run 128-bit token (a credential), and
    # the object store: its S3 gateway (keys required) and its internal master, volume,
    # filer and admin ports, the one gap left (docs/security.md). The platform's own
    # services (PostgreSQL, Redis, the Prefect API, MLflow, Caddy's admin API) listen on
    # no TCP port at all.
    open_ports = {int(p) for p, r in out["tcp"].items() if r == "open"}
    assert {ports[p] for p in open_ports - public} <= {"weed", "prefect worker"}, {
        p: ports[p] for p in open_ports - public
    }
    assert store.s3_port in open_ports
