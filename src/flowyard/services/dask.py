"""A Dask cluster for flows' tasks: a `distributed` scheduler and local Dask workers.

Flows reach it with prefect-dask's `DaskTaskRunner` (`flowyard.dask_cluster.task_runner()`);
operators with a plain `distributed.Client()` after `eval "$(flowyard env)"`.

How it is reached, and why this way (Dask has no passwords; loopback is not private):

- Every Dask hop is Dask's websocket comm over TLS (`wss://`, `distributed.comm.ws`, served by
  tornado), with `distributed.comm.require-encryption` on. Dask's TLS is mutual by design
  (`Security._get_tls_context` sets `CERT_REQUIRED` on both sides), so a Dask port only
  accepts a peer holding a certificate issued by the cluster's CA. Websockets, unlike Dask's
  raw `tls://`, pass through an HTTP proxy, so remote clients and workers come in through
  Caddy like every other client.
- The platform makes that CA (`Paths.dask_pki`: an EC P-256 key that never leaves the
  directory) and issues two certificates: `node` (the scheduler, the local workers and
  Caddy's hop to the scheduler) and `client` (`flowyard env`, flow runs, joined workers).
- Caddy serves the scheduler on `dask.https_port` with the platform's own server
  certificate and `client_auth require_and_verify` against the Dask CA: no client
  certificate, no TLS session. It forwards to the scheduler's loopback port over TLS,
  presenting the `node` certificate (a local user without a certificate cannot use that
  port either). Unix sockets would be better still, but `distributed`'s listeners bind TCP
  only.
- The scheduler's HTTP routes (health, Prometheus, JSON info) share its comm port (Dask
  shares one tornado server when `--dashboard-address` names the comm port), so they sit
  behind the same client-certificate check. A worker starts its HTTP server on a port of
  its own after it listens, plain HTTP: Flowyard's preload (`flowyard.dask_cluster`)
  closes it, so a worker's only port is its mutual-TLS comm port.
- Bokeh is not installed, so no dashboard is shipped (docs/scaling.md).
- The scheduler and the workers run flow code (workers run tasks; the scheduler unpickles
  task graphs), so on a root install they run as `worker.system_user`, like the local
  Prefect worker, with their certificates in a directory of that account's own.

Local workers connect to the scheduler directly on loopback (mutual TLS, no proxy hop);
clients, flow runs and remote workers come through the proxy.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from flowyard import pki
from flowyard.client.env import (
    DASK_TLS_KEYS,
    DASK_WORKER_ENV,
    DASK_WORKER_PRELOAD,
    worker_client_env,
)
from flowyard.client.profile import DASK_CA_CERT, DASK_CLIENT_CERT, DASK_CLIENT_KEY, DASK_DATA
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK
from flowyard.files import write_private
from flowyard.services import caddy, local_worker, worker_python
from flowyard.services.base import Service, binary, ensure_system_user

SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"
CA_CERT = DASK_CA_CERT
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
SCHEDULER_PRELOAD = "flowyard.dask_comms"


# -- the cluster's CA and certificates ------------------------------------------------------

# Caddy checks the scheduler's certificate against the upstream's address; Dask checks the
# chain, not host names.
NODE_NAMES: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
]


def ensure_pki(ctx: Context) -> None:
    """The Dask CA and its `node` and `client` certificates; made once, kept across
    restarts (and in backups: they are under FLOWYARD_HOME), reissued when missing, expiring
    or not signed by the current CA."""
    pki_dir = ctx.paths.dask_pki
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    ca_file, ca_key_file = pki_dir / CA_CERT, pki_dir / CA_KEY
    if not (ca_file.exists() and ca_key_file.exists()):
        new_ca, new_ca_key = pki.new_ca("Flowyard Dask CA")
        write_private(ca_key_file, pki.key_pem(new_ca_key))
        write_private(ca_file, pki.cert_pem(new_ca))
    ca_pem = ca_file.read_bytes()
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = pki.load_key(ca_key_file.read_bytes())
    for cert_name, key_name, cn in [
        (NODE_CERT, NODE_KEY, "flowyard-dask-node"),
        (DASK_CLIENT_CERT, DASK_CLIENT_KEY, "flowyard-dask-client"),
    ]:
        cert_path, key_path = pki_dir / cert_name, pki_dir / key_name
        if (
            cert_path.exists()
            and key_path.exists()
            and pki.current(cert_path.read_bytes(), key_path.read_bytes(), ca_pem)
        ):
            continue
        cert, key = pki.issue(ca, ca_key, cn, NODE_NAMES)
        write_private(key_path, pki.key_pem(key))
        write_private(cert_path, pki.cert_pem(cert))


# -- the processes ----------------------------------------------------------------------------


def data(ctx: Context) -> Path:
    """The Dask processes' own directory (certificates, spill, scratch), their account's."""
    return ctx.paths.service_data(DASK_DATA)


def system_user(ctx: Context) -> str | None:
    # The same account as the local Prefect worker: both run flow code.
    return local_worker.system_user(ctx)


def scheduler_address(ctx: Context) -> str:
    return f"wss://{LOOPBACK}:{ctx.config.dask.scheduler_port}"


def node_tls_env(ctx: Context) -> dict[str, str]:
    """Dask's TLS settings of a platform node: the `node` certificate for every role, the
    Dask CA to verify peers, and no unencrypted comm."""
    d = data(ctx)
    cert, key = str(d / NODE_CERT), str(d / NODE_KEY)
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        DASK_TLS_KEYS["ca_file"]: str(d / CA_CERT),
    }
    for role in ("scheduler", "worker", "client"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT"] = cert
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY"] = key
    return env


def base_env(ctx: Context) -> dict[str, str]:
    d = data(ctx)
    return {
        "HOME": str(d),
        # The account's own Dask config only: no ~/.config/dask of whoever started `up`.
        "DASK_CONFIG": str(d / "config"),
        "DASK_TEMPORARY_DIRECTORY": str(d / "tmp"),
        **node_tls_env(ctx),
    }


def _python_cmd(ctx: Context, module: str, console: str) -> list[str]:
    if _own_python(ctx):
        return [str(worker_python.python(ctx)), "-m", module]
    return [binary("dask"), console]


def scheduler_command(ctx: Context) -> list[str]:
    port = str(ctx.config.dask.scheduler_port)
    return [
        *_python_cmd(ctx, "distributed.cli.dask_scheduler", "scheduler"),
        "--host",
        LOOPBACK,
        "--port",
        port,
        "--protocol",
        "wss",
        # The HTTP routes on the comm port: one tornado server, one client-certificate check.
        "--dashboard-address",
        f"{LOOPBACK}:{port}",
        "--no-dashboard",
        # Its comm fixes (to workers: no Nagle delay), without Prefect.
        "--preload",
        SCHEDULER_PRELOAD,
    ]


def worker_name(ctx: Context, index: int) -> str:
    return f"{socket.gethostname()}-local-{index}"


def worker_command(ctx: Context, index: int) -> list[str]:
    cfg = ctx.config.dask
    port = cfg.worker_ports()[index]
    return [
        *_python_cmd(ctx, "distributed.cli.dask_worker", "worker"),
        scheduler_address(ctx),
        "--name",
        worker_name(ctx, index),
        "--nthreads",
        str(cfg.effective_threads),
        "--memory-limit",
        cfg.memory_limit,
        # supervisor is the nanny: it restarts a dead worker, and the scheduler reschedules
        # its tasks; a nanny would be one more process and one more port.
        "--no-nanny",
        "--listen-address",
        f"wss://{LOOPBACK}:{port}",
        "--no-dashboard",
        "--dashboard-address",
        f"{LOOPBACK}:0",
        "--local-directory",
        str(data(ctx) / f"worker-{index}"),
        "--preload",
        DASK_WORKER_PRELOAD,
    ]


def worker_env(ctx: Context) -> dict[str, str]:
    """Tasks run here call the Prefect API and S3 like flow runs: the worker's client
    profile, then the node's TLS settings over its Dask client settings."""
    d = data(ctx)
    env = {k: v for k, v in worker_client_env(ctx).items() if k != "DASK_SCHEDULER_ADDRESS"}
    return {
        **env,
        "PREFECT_HOME": str(d / "prefect"),
        "PREFECT_PROFILES_PATH": str(d / local_worker.PROFILES_FILE),
        **DASK_WORKER_ENV,
        **base_env(ctx),
        **(worker_python.env(ctx) if _own_python(ctx) else {}),
    }


def _tls_context(ctx: Context, d: Path | None = None) -> ssl.SSLContext:
    d = d or data(ctx)
    context = ssl.create_default_context(cafile=str(d / CA_CERT))
    context.load_cert_chain(str(d / NODE_CERT), str(d / NODE_KEY))
    return context


def _get_json(ctx: Context, path: str) -> Any:
    # Read by the owner of FLOWYARD_HOME: the PKI directory's copy, not the account's.
    with httpx.Client(verify=_tls_context(ctx, ctx.paths.dask_pki), timeout=3) as client:
        r = client.get(f"https://{LOOPBACK}:{ctx.config.dask.scheduler_port}{path}")
        r.raise_for_status()
        return r.json() if path.endswith(".json") else r.text


def scheduler_ready(ctx: Context) -> bool:
    try:
        return _get_json(ctx, "/health") == "ok"
    except (httpx.HTTPError, OSError, ValueError):
        return False


def worker_names(ctx: Context) -> list[str]:
    """Names of the workers the scheduler knows."""
    identity = _get_json(ctx, "/json/identity.json")
    return [w.get("name") for w in identity.get("workers", {}).values()]


def worker_ready(ctx: Context, index: int) -> bool:
    try:
        return worker_name(ctx, index) in worker_names(ctx)
    except (httpx.HTTPError, OSError, ValueError):
        return False


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid, follow_symlinks=False)
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, uid, gid, follow_symlinks=False)


def copy_credentials(ctx: Context) -> None:
    """The account's copy of what its processes (and the local Prefect worker's flow runs,
    which are Dask clients) present, owner-only."""
    d = data(ctx)
    for sub in ("", "config", "tmp", "prefect"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    pki = ctx.paths.dask_pki
    for name in (CA_CERT, NODE_CERT, NODE_KEY, DASK_CLIENT_CERT, DASK_CLIENT_KEY):
        src, dst = pki / name, d / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            write_private(dst, src.read_bytes())
    profiles = d / local_worker.PROFILES_FILE
    if not profiles.exists():
        profiles.write_text(local_worker.EMPTY_PROFILES)


def prepare(ctx: Context) -> None:
    ensure_pki(ctx)
    copy_credentials(ctx)
    name = system_user(ctx)
    if name is None:
        return
    user = ensure_system_user(name)
    if _own_python(ctx):
        worker_python.ensure(ctx)
    _chown_tree(data(ctx), user.pw_uid, user.pw_gid)


def scheduler_service(ctx: Context) -> Service:
    return Service(
        name=SCHEDULER,
        description=f"Dask scheduler (wss://{ctx.config.proxy.url_host}:{ctx.config.dask.https_port})",
        command=scheduler_command(ctx),
        env={**base_env(ctx), **(worker_python.env(ctx) if _own_python(ctx) else {})},
        cwd=data(ctx),
        user=system_user(ctx),
        ports={"dask.scheduler_port": ctx.config.dask.scheduler_port},
        ready=lambda: scheduler_ready(ctx),
        ready_timeout=60,
        start_secs=2,
        prepare=lambda: prepare(ctx),
    )


def _own_python(ctx: Context) -> bool:
    return system_user(ctx) is not None and worker_python.needed()


def worker_service_name(ctx: Context, index: int) -> str:
    return WORKER if ctx.config.dask.workers == 1 else f"{WORKER}-{index}"


def worker_service(ctx: Context, index: int) -> Service:
    cfg = ctx.config.dask
    return Service(
        name=worker_service_name(ctx, index),
        description=f"Dask worker {index} ({cfg.effective_threads} threads, "
        f"memory {cfg.memory_limit})",
        command=worker_command(ctx, index),
        env=worker_env(ctx),
        cwd=data(ctx),
        user=system_user(ctx),
        ports={f"dask.worker_port + {index}": cfg.worker_ports()[index]},
        # Its scheduler, and the proxy its tasks reach the API and S3 through.
        after=(SCHEDULER, caddy.NAME),
        ready=lambda: worker_ready(ctx, index),
        ready_timeout=60,
        start_secs=2,
    )


def worker_services(ctx: Context) -> list[Service]:
    return [worker_service(ctx, i) for i in range(ctx.config.dask.workers)]
