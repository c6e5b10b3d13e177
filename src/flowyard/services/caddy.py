"""Caddy: the one HTTPS origin (UI, API with websockets, /files/, /mlflow) and the S3 port."""

from __future__ import annotations

import shutil
import ssl

import httpx

from flowyard.config.context import Context
from flowyard.files import write_private
from flowyard.services import prefect_api
from flowyard.services.base import Service, binary
from flowyard.services.caddyfile import Upstreams, render_caddyfile

NAME = "caddy"


def env(ctx: Context) -> dict[str, str]:
    data = ctx.paths.caddy_data
    # Caddy keeps its CA and certificates under XDG dirs; pin them inside FLOWYARD_HOME.
    return {"XDG_DATA_HOME": str(data), "XDG_CONFIG_HOME": str(data / "config"), "HOME": str(data)}


def prepare(ctx: Context) -> None:
    ctx.paths.caddy_data.mkdir(parents=True, exist_ok=True)
    ctx.paths.files.mkdir(parents=True, exist_ok=True)
    write_private(ctx.paths.caddyfile, render_caddyfile(ctx.config, Upstreams.from_context(ctx)))


def export_ca(ctx: Context) -> bool:
    """Copy Caddy's root CA to FLOWYARD_HOME/ca/root.crt, world-readable (it is public)."""
    src = ctx.paths.caddy_root_cert
    if ctx.config.proxy.tls != "internal":
        return True
    if not src.exists():
        return False
    dst = ctx.paths.ca_cert
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)
    dst.chmod(0o644)
    dst.parent.chmod(0o755)
    return True


def tls_verify(ctx: Context) -> ssl.SSLContext | bool:
    """What an HTTPS client of the proxy verifies against: the platform CA, or public roots."""
    if ctx.config.proxy.tls != "internal":
        return True
    return ssl.create_default_context(cafile=str(ctx.paths.ca_cert))


def is_ready(ctx: Context) -> bool:
    if not export_ca(ctx):
        return False
    try:
        # Through the proxy, TLS verified: this proves certificate, routing and upstream.
        response = httpx.get(
            f"{ctx.config.proxy.url}/api/health", verify=tls_verify(ctx), timeout=3
        )
        return response.status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def service(ctx: Context) -> Service:
    proxy = ctx.config.proxy
    return Service(
        name=NAME,
        description=f"Caddy HTTPS proxy ({proxy.url})",
        # Ready means /api/health answers through it, and its bootstrap (the platform's
        # `apply`) talks to the API through it.
        after=(prefect_api.NAME,),
        command=[
            binary("caddy"),
            "run",
            "--config",
            str(ctx.paths.caddyfile),
            "--adapter",
            "caddyfile",
        ],
        env=env(ctx),
        cwd=ctx.paths.caddy_data,
        ports={
            "proxy.https_port": proxy.https_port,
            "proxy.http_port": proxy.http_port,
            "proxy.s3_https_port": proxy.s3_https_port,
            # Natively the admin API is a Unix socket (services.caddyfile.Upstreams).
            **({} if ctx.hosts.use_sockets else {"proxy.admin_port": proxy.admin_port}),
        },
        ready=lambda: is_ready(ctx),
        prepare=lambda: prepare(ctx),
    )
