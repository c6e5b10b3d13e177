"""Remote workers: the join file the server hands out, and the checks a joining worker makes.

The file's format and the profile it becomes live in `flowyard.client.joinfile`; this module
adds what only the platform knows (which pools exist, where its CA is) and what a joining
machine verifies before it starts a worker.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from flowyard.client.api import auth_header
from flowyard.client.env import client_env
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
    return JoinInfo.from_profile(profile, pool)


def check_connection(profile: ClientProfile, pool: str) -> list[str]:
    """What a joining worker verifies before it starts, each failure named with its fix."""
    url = f"{profile.url}/api"
    ca = str(profile.ca_file) if profile.ca_file else None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    done = []
    try:
        httpx.get(f"{url}/health", verify=verify, timeout=10).raise_for_status()
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise FlowyardError(
                f"The platform at {url} presented a certificate the join file's CA does not sign.",
                fix="Copy a fresh join file from the server (its CA may have been replaced), and "
                "connect by the host name the server's proxy.host names.",
            ) from exc
        host = httpx.URL(url).host
        raise FlowyardError(
            f"Cannot reach {url}: {exc}.",
            fix=f"Check that this machine can reach {host} on the proxy's HTTPS port "
            "(firewall, DNS) and that the platform is up.",
        ) from exc
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


def default_worker_name() -> str:
    return f"remote-{socket.gethostname()}"


def joined_worker_env(profile: ClientProfile, home: Path) -> dict[str, str]:
    """The environment of a worker on another host, and of the flow runs it starts: the
    same `client_env` the server's own worker gets, with this machine's state directory."""
    return {**client_env(profile), "PREFECT_HOME": str(home / "prefect")}
