"""Remote workers: the join file the server hands out, and the checks a joining worker makes.

A join file holds what a worker on another machine needs and nothing else: the public URLs,
the CA certificate, the API and S3 credentials, the pool. It is written 0600; anyone holding
it can run flows on the platform (Prefect's open-source server has one API credential).
"""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
import httpx
import tomli_w
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from flowyard.errors import FlowyardError
from flowyard.platform.api import auth_header
from flowyard.platform.client_env import CLIENT_SETTINGS, HEARTBEAT_SECONDS, RESULTS_BLOCK_SLUG
from flowyard.services.base import Context


@dataclass
class JoinInfo:
    url: str
    s3_url: str
    pool: str
    auth_string: str
    s3_access_key: str
    s3_secret_key: str
    region: str
    code_bucket: str
    ca_cert: str  # PEM; empty with a public (ACME) certificate

    @classmethod
    def from_platform(cls, ctx: Context, pool: str) -> JoinInfo:
        cfg = ctx.config
        if pool not in {p.name for p in cfg.pools}:
            raise FlowyardError(
                f"Unknown work pool {pool!r}.",
                fix=f"Use one of: {', '.join(p.name for p in cfg.pools)} (or declare it in pools).",
            )
        ca = ctx.paths.ca_cert.read_text() if cfg.proxy.tls == "internal" else ""
        s3_url = cfg.proxy.s3_url if cfg.object_store.kind == "seaweedfs" else ""
        return cls(
            url=cfg.proxy.url,
            s3_url=s3_url or (cfg.object_store.endpoint_url or ""),
            pool=pool,
            auth_string=ctx.secrets.prefect_auth_string.get_secret_value(),
            s3_access_key=ctx.secrets.s3_access_key.get_secret_value(),
            s3_secret_key=ctx.secrets.s3_secret_key.get_secret_value(),
            region=cfg.object_store.region,
            code_bucket=cfg.object_store.code_bucket,
            ca_cert=ca,
        )

    def write(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"# Flowyard worker join file: grants access to the platform. Keep it 0600.\n")
            fh.write(tomli_w.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, path: Path) -> JoinInfo:
        try:
            return cls(**tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise FlowyardError(
                f"No join file at {path}.",
                fix="On the server run `flowyard worker join-file --out FILE` and copy FILE here.",
            ) from None
        except (tomllib.TOMLDecodeError, TypeError) as exc:
            raise FlowyardError(
                f"{path} is not a Flowyard join file: {exc}", fix="Copy it again from the server."
            ) from exc


def worker_env(info: JoinInfo, url: str, home: Path) -> dict[str, str]:
    """The environment of a worker on another host, and of the flow runs it starts."""
    env = {
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_API_AUTH_STRING": info.auth_string,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"s3-bucket/{RESULTS_BLOCK_SLUG}",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        **CLIENT_SETTINGS,
        "AWS_ENDPOINT_URL_S3": info.s3_url,
        "AWS_ACCESS_KEY_ID": info.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": info.s3_secret_key,
        "AWS_DEFAULT_REGION": info.region,
        "FLOWYARD_CODE_BUCKET": info.code_bucket,
    }
    if info.ca_cert:
        ca = home / "ca.crt"
        ca.write_text(info.ca_cert)
        env["PREFECT_API_SSL_CERT_FILE"] = str(ca)
        env["AWS_CA_BUNDLE"] = str(ca)
    return env


def check_connection(info: JoinInfo, env: dict[str, str]) -> list[str]:
    """What a joining worker verifies before it starts, each failure named with its fix."""
    url = env["PREFECT_API_URL"]
    ca = env.get("PREFECT_API_SSL_CERT_FILE")
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
        f"{url}/work_pools/{info.pool}",
        headers=auth_header(info.auth_string),
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
            f"The platform has no work pool {info.pool!r}.",
            fix="Pass --pool with a pool declared in the server's flowyard.toml.",
        )
    r.raise_for_status()
    done.append(f"credentials accepted; pool {info.pool!r} exists (type {r.json()['type']!r})")
    s3 = boto3.client(
        "s3",
        endpoint_url=info.s3_url or None,
        aws_access_key_id=info.s3_access_key,
        aws_secret_access_key=info.s3_secret_key,
        region_name=info.region,
        verify=env.get("AWS_CA_BUNDLE") or True,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    try:
        s3.head_bucket(Bucket=info.code_bucket)
    except (ClientError, BotoCoreError) as exc:
        raise FlowyardError(
            f"The object store at {info.s3_url} refused or failed: {exc}.",
            fix="Check that the proxy's S3 port is reachable from this machine.",
        ) from exc
    done.append(f"object store reachable: bucket {info.code_bucket!r}")
    return done


def default_worker_name() -> str:
    return f"remote-{socket.gethostname()}"
