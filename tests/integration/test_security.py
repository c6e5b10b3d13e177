"""Loopback is not private: another local user must get nothing without a credential.

The platform is brought up as it is installed (MLflow on), then a probe runs as `nobody`
(`setpriv`, the system's own Python: the project's venv may sit where nobody cannot
reach) and tries every port the platform's processes listen on, every Unix socket and
every file under FLOWYARD_HOME. Only the proxy's public ports answer, and only without
data; the exported CA certificate is the one readable file (it is public). The object
store's internal ports are tried over TLS without a client certificate and must refuse;
the same probe holding the store's own client certificate must get answers, so a port
that refuses everyone (a broken TLS setup) cannot pass for a protected one.
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

import httpx
import psutil
import pytest

from flowyard.config.context import Context
from flowyard.services import seaweedfs
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
    def first_bytes(s, http2):
        # gRPC is HTTP/2: its preface and an empty SETTINGS frame make a server answer.
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                  if http2 else f"GET /{plan['bucket']} HTTP/1.1\r\nHost: localhost\r\n"
                                "Connection: close\r\n\r\n".encode())
        return s.recv(4096)
    out["plain"], out["mtls"] = {}, {}
    for port, http2 in plan["plain"]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = first_bytes(s, http2)
            out["plain"][str(port)] = (f"answered {data[:12]!r}" if http2 and data
                                       else data.decode(errors="replace").split("\r\n")[0])
        except OSError as exc:
            out["plain"][str(port)] = type(exc).__name__
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # an attacker checks nothing
    if plan.get("client"):
        tls = ssl.create_default_context(cafile=plan["client"]["ca"])
        tls.load_cert_chain(plan["client"]["cert"], plan["client"]["key"])
    for port, http2 in plan["mtls"]:
        tls.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with tls.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    data = first_bytes(s, http2)
            out["mtls"][str(port)] = f"answered {data[:12]!r}" if data else "closed"
        except OSError as exc:
            out["mtls"][str(port)] = type(exc).__name__
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
    out = run_probe(plan, ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
    assert out["uid"] != 0
    return out


def run_probe(plan: dict[str, Any], prefix: list[str]) -> dict[str, Any]:
    result = subprocess.run(
        [*prefix, *PYTHON_PROBE],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def empty_plan(ctx: Context) -> dict[str, Any]:
    return {
        "files": [],
        "dirs": [],
        "sockets": [],
        "ports": [],
        "plain": [],
        "mtls": [],
        "https": {},
        "ca": str(ctx.paths.ca_cert),
        "bucket": ctx.config.object_store.code_bucket,
    }


def store_ports(ctx: Context, listening: dict[int, str]) -> list[tuple[int, bool]]:
    """The object store's listening ports that require mutual TLS, each with whether it is
    gRPC (HTTP/2): every one but the S3 gateway's HTTP port, whose S3 keys are its lock."""
    store = ctx.config.object_store
    return [
        (port, "gRPC" in name)
        for name, port in store.port_settings().items()
        if port != store.s3_port and port in listening
    ]


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
        **empty_plan(ctx),
        "files": files,
        "dirs": [str(paths.home), *dirs],
        "sockets": sockets,
        "ports": sorted(ports),
        # Plain HTTP (HTTP/2 for gRPC) to each of the store's ports, then TLS without a
        # client certificate to those that must require one.
        "plain": [(store.s3_port, False), *store_ports(ctx, ports)],
        "mtls": store_ports(ctx, ports),
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
    # the object store. The platform's own services (PostgreSQL, Redis, the Prefect API,
    # MLflow, Caddy's admin API) listen on no TCP port at all.
    open_ports = {int(p) for p, r in out["tcp"].items() if r == "open"}
    assert {ports[p] for p in open_ports - public} <= {"weed", "prefect worker"}, {
        p: ports[p] for p in open_ports - public
    }
    # The store's S3 gateway wants S3 keys; weed binds no port the config does not name.
    weed_ports = {p for p in open_ports if ports[p] == "weed"}
    assert weed_ports <= set(store.port_settings().values()), weed_ports
    assert out["plain"][str(store.s3_port)].split(" ")[1] == "403", out["plain"]
    # Every other port of the store (master, volume, filer, admin; HTTP and gRPC) refuses
    # a TLS client without the store's certificate, and answers plain requests with no
    # data: Go's TLS servers reply "HTTP/1.0 400" (client sent an HTTP request to an HTTPS
    # server), a gRPC port closes. Without TLS, weed's HTTP servers would reply HTTP/1.1
    # and its gRPC servers would send their HTTP/2 SETTINGS.
    mtls = {str(p) for p, _ in plan["mtls"]}
    assert {store.master_port, store.filer_port, store.volume_port} <= {int(p) for p in mtls}
    answered = {p: r for p, r in out["mtls"].items() if r.startswith("answered")}
    assert not answered, f"object store ports that answer without a client certificate: {answered}"
    leaked = {
        p: line
        for p, line in out["plain"].items()
        if p in mtls
        and (line.startswith("answered") or line.startswith("HTTP/"))
        and line != "HTTP/1.0 400 Bad Request"
    }
    assert not leaked, f"object store ports that answer plain HTTP: {leaked}"


def test_the_object_store_answers_its_own_client_certificate(installed: Context) -> None:
    """The other way round: with the certificate weed's own components use, every one of
    those ports completes the handshake and answers (an HTTP status line or HTTP/2
    SETTINGS), so the refusals above come from the missing certificate."""
    ctx = installed
    ports = store_ports(ctx, listening_ports(ctx))
    assert len(ports) >= 6, ports  # master, volume and filer, HTTP and gRPC each
    files = {k: str(v) for k, v in seaweedfs.tls_files(ctx).items()}
    out = run_probe({**empty_plan(ctx), "mtls": ports, "client": files}, [])
    refused = {p: r for p, r in out["mtls"].items() if not r.startswith("answered")}
    assert not refused, f"object store ports that refuse the store's own certificate: {refused}"
    # And the master's HTTP API gives the platform what readiness reads.
    response = httpx.get(
        f"{seaweedfs.master_url(ctx)}/dir/status", verify=seaweedfs.client_tls(ctx), timeout=5
    )
    assert response.status_code == 200 and response.json()["Topology"]["Max"] > 0
    # Everything weed needs for that is owner-only: the key above all.
    for path in [*seaweedfs.tls_files(ctx).values(), seaweedfs.tls_dir(ctx) / "security.toml"]:
        assert path.stat().st_mode & 0o077 == 0, path
