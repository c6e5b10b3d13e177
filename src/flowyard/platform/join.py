"""Remote workers: the join file the server hands out, and the checks a joining worker makes.

The file's format and the profile it becomes live in `flowyard.client.joinfile`; this module
adds what only the platform knows (which pools exist, where its CA is) and what a joining
machine verifies before it starts a worker.
"""

from __future__ import annotations

import socket
import ssl
import sys
from pathlib import Path

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from flowyard.client.api import auth_header
from flowyard.client.env import DASK_WORKER_PRELOAD, client_env
from flowyard.client.joinfile import JoinInfo
from flowyard.client.profile import ClientProfile
from flowyard.config.context import Context
from flowyard.errors import FlowyardError


def join_info(ctx: Context, pool: str) -> JoinInfo:
    """The join file for a worker serving `pool` of this platform."""
    cfg = ctx.config
    if pool not in {p.name for p in cfg.pools}:
        raise FlowyardError(
            f"Unknown work pool {pool!r}.",
            fix=f"Use one of: {', '.join(p.name for p in cfg.pools)} (or declare it in pools).",
        )
    # A worker's profile: the flows' scoped S3 and MLflow credentials, never the admin's.
    profile = ClientProfile.for_workers(ctx)
    if profile.ca_file and not profile.ca_file.exists():
        raise FlowyardError(
            f"The platform's CA certificate {profile.ca_file} does not exist yet: Caddy "
            "creates it on the platform's first start.",
            fix="Run `flowyard up` once, then `flowyard worker join-file` again.",
        )
    if profile.dask and not profile.dask.cert_file.exists():
        raise FlowyardError(
            f"The Dask cluster's client certificate {profile.dask.cert_file} does not exist "
            "yet: it is made when the platform starts with dask.enabled = true.",
            fix="Run `flowyard up`, then `flowyard worker join-file` again.",
        )
    return JoinInfo.from_profile(profile, pool)


def check_connection(profile: ClientProfile, pool: str) -> list[str]:
    """What a joining worker verifies before it starts, each failure named with its fix."""
    url = f"{profile.url}/api"
    ca = str(profile.ca_file) if profile.ca_file else None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    done = []
    _get(
        f"{url}/health",
        verify,
        f"the platform at {url}",
        ca_fix="Copy a fresh join file from the server (its CA may have been replaced), and "
        "connect by the host name the server's proxy.host names.",
        reach_fix=f"Check that this machine can reach {httpx.URL(url).host} on the proxy's "
        "HTTPS port (firewall, DNS) and that the platform is up.",
    ).raise_for_status()
    done.append(f"API reachable, TLS verified: {url}")
    r = httpx.get(
        f"{url}/work_pools/{pool}",
        headers=auth_header(profile.auth_string),
        verify=verify,
        timeout=10,
    )
    if r.status_code == 401:
        raise FlowyardError(
            "The platform refused the join file's credentials (401).",
            fix="The auth string changed on the server: copy a fresh join file.",
        )
    if r.status_code == 404:
        raise FlowyardError(
            f"The platform has no work pool {pool!r}.",
            fix="Pass --pool with a pool declared in the server's flowyard.toml.",
        )
    r.raise_for_status()
    done.append(f"credentials accepted; pool {pool!r} exists (type {r.json()['type']!r})")
    s3 = boto3.client(
        "s3",
        endpoint_url=profile.s3_url or None,
        aws_access_key_id=profile.s3_access_key,
        aws_secret_access_key=profile.s3_secret_key,
        region_name=profile.region,
        verify=(ca if profile.ca_signs_s3 else None) or True,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    try:
        s3.head_bucket(Bucket=profile.code_bucket)
    except (ClientError, BotoCoreError) as exc:
        raise FlowyardError(
            f"The object store at {profile.s3_url} refused or failed: {exc}.",
            fix="Check that the proxy's S3 port is reachable from this machine.",
        ) from exc
    done.append(f"object store reachable: bucket {profile.code_bucket!r}")
    if profile.mlflow:
        login = profile.mlflow
        try:
            r = httpx.get(
                f"{login.uri}/api/2.0/mlflow/experiments/search",
                params={"max_results": 1},
                auth=(login.user, login.password),
                verify=verify,
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise FlowyardError(
                f"MLflow at {login.uri} did not answer: {exc}.",
                fix="Check that the platform is up and mlflow.enabled is true on the server.",
            ) from exc
        if r.status_code in (401, 403):
            raise FlowyardError(
                f"MLflow at {login.uri} refused the join file's login ({r.status_code}).",
                fix="The MLflow password changed on the server: copy a fresh join file.",
            )
        r.raise_for_status()
        done.append(f"experiment tracking reachable: {login.uri}")
    return done


def _get(
    url: str,
    verify: ssl.SSLContext | bool,
    place: str,
    *,
    ca_fix: str,
    reach_fix: str,
    cert_fix: str | None = None,
) -> httpx.Response:
    """GET `url`, a failure to connect named by its cause: a server certificate the join
    file's CA does not sign, this machine's client certificate refused (where `cert_fix`
    says one is presented), or no route to `place`."""
    try:
        return httpx.get(url, verify=verify, timeout=10)
    except (httpx.ConnectError, httpx.ReadError) as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            raise FlowyardError(
                f"{place[0].upper()}{place[1:]} presented a certificate the join file's CA "
                "does not sign.",
                fix=ca_fix,
            ) from exc
        # A refused client certificate is a TLS alert from the server. Under TLS 1.3 the
        # client's side of the handshake is over before the server checks its certificate,
        # so the alert comes on the first read (a ReadError), not while connecting.
        if cert_fix and "alert" in text.lower():
            raise FlowyardError(
                f"{place[0].upper()}{place[1:]} refused the join file's client certificate.",
                fix=cert_fix,
            ) from exc
        if isinstance(exc, httpx.ReadError):
            raise
        raise FlowyardError(f"Cannot reach {place}: {exc}.", fix=reach_fix) from exc


def default_worker_name() -> str:
    return f"remote-{socket.gethostname()}"


def joined_worker_env(profile: ClientProfile, home: Path) -> dict[str, str]:
    """The environment of a worker on another host, and of the flow runs it starts: the
    same `client_env` the server's own worker gets, with this machine's state directory."""
    return {**client_env(profile), "PREFECT_HOME": str(home / "prefect")}


# The port a joined Dask worker listens on for the scheduler and its peers (mutual TLS).
DASK_WORKER_PORT = 8788


def check_dask(profile: ClientProfile) -> list[str]:
    """A joining Dask worker's checks: the join file has the cluster's credential, and the
    proxy's Dask port answers, TLS verified, and accepts the client certificate."""
    dask = profile.dask
    if dask is None:
        raise FlowyardError(
            "The join file has no Dask credential: the platform's Dask cluster is off, or "
            "the file was written before it was on.",
            fix="On the server set dask.enabled = true in flowyard.toml, run `flowyard up`, "
            "then `flowyard worker join-file` again and copy the file here.",
        )
    parts = httpx.URL(dask.address.replace("wss://", "https://", 1))
    url = f"https://{parts.netloc.decode()}/health"
    verify = ssl.create_default_context(cafile=str(dask.ca_file))
    # Dask itself checks the chain, not the name (Security: check_hostname = False); the
    # check here is stricter only where the name is right, so it mirrors Dask.
    verify.check_hostname = False
    verify.load_cert_chain(str(dask.cert_file), str(dask.key_file))
    try:
        r = _get(
            url,
            verify,
            f"the platform's Dask port {dask.address}",
            ca_fix="Copy a fresh join file from the server.",
            reach_fix=f"Check that this machine can reach {parts.host} on port {parts.port} "
            "(the server's dask.https_port: firewall, DNS) and that the platform is up.",
            cert_fix="The cluster's CA changed on the server: copy a fresh join file.",
        )
    except httpx.HTTPError as exc:
        raise FlowyardError(
            f"The platform's Dask port {dask.address} failed: {exc}.",
            fix="Check `flowyard logs dask-scheduler` and `flowyard logs caddy` on the server.",
        ) from exc
    if r.status_code == 403:
        raise FlowyardError(
            f"The platform's Dask port {dask.address} refused the join file's client "
            "certificate (403).",
            fix="Copy a fresh join file from the server.",
        )
    if r.status_code != 200:
        raise FlowyardError(
            f"The Dask scheduler behind {dask.address} is not healthy ({r.status_code}).",
            fix="On the server: `flowyard status`, `flowyard logs dask-scheduler`.",
        )
    return [
        f"Dask scheduler reachable through the proxy, client certificate accepted: {dask.address}"
    ]


def contact_host(profile: ClientProfile) -> str:
    """This machine's address on the route to the platform: where the scheduler and the
    platform's workers can call a joined Dask worker back."""
    assert profile.dask is not None
    host = httpx.URL(profile.dask.address.replace("wss://", "https://", 1)).host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        # A UDP "connect" sends nothing; it only picks the route and its source address.
        probe.connect((host, 9))
        return str(probe.getsockname()[0])


def dask_worker_argv(
    profile: ClientProfile,
    home: Path,
    name: str,
    threads: int | None,
    listen_host: str,
    port: int,
    contact: str,
) -> list[str]:
    """`dask worker` for the platform's scheduler, through the proxy: it serves its own
    peers on `listen_host:port` (mutual TLS, the join file's certificate)."""
    assert profile.dask is not None
    listen = f"[{listen_host}]" if ":" in listen_host else listen_host
    contact_h = f"[{contact}]" if ":" in contact else contact
    return [
        str(Path(sys.executable).parent / "dask"),
        "worker",
        profile.dask.address,
        "--name",
        name,
        *(["--nthreads", str(threads)] if threads else []),
        # The process manager that started `join` restarts it; no nanny, no extra port.
        "--no-nanny",
        "--listen-address",
        f"wss://{listen}:{port}",
        "--contact-address",
        f"wss://{contact_h}:{port}",
        "--no-dashboard",
        "--dashboard-address",
        "127.0.0.1:0",
        "--local-directory",
        str(home / "dask-worker"),
        # Closes the plain-HTTP diagnostics port and binds the listener to its host.
        "--preload",
        DASK_WORKER_PRELOAD,
    ]
