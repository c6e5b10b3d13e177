"""Rendered files: the Caddyfile adapts with the real caddy binary, supervisord.conf parses
with supervisor's own parser, and neither routes nor settings go missing."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from flowyard.client.env import platform_client_env
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.platform.registry import build_services
from flowyard.render.supervisor import render_supervisor_conf
from flowyard.services.caddyfile import Upstreams, render_caddyfile, routes

CADDY = str(Path(sys.executable).parent / "caddy")


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(config=load_config(tmp_path, require_file=False), secrets=Secrets.generate())


def _adapt(caddyfile: str, tmp_path: Path) -> dict:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    out = subprocess.run(
        [CADDY, "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_caddyfile_adapts_and_routes_everything(ctx: Context, tmp_path: Path) -> None:
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    config = _adapt(text, tmp_path)
    servers = config["apps"]["http"]["servers"]
    listen = sorted(a for s in servers.values() for a in s["listen"])
    assert listen == sorted(["127.0.0.1:8443", "127.0.0.1:8444", "127.0.0.1:8080"])
    # The admin API can rewrite every route: an owner-only socket, no port.
    assert config["admin"]["listen"] == f"unix/{ctx.paths.socket('caddy-admin')}"
    found = routes(text)
    assert "handle_path /files/*" in found and "handle /mlflow*" in found
    assert "https://localhost:8444" in found
    # Internal CA, never installed into the system trust store.
    assert "skip_install_trust" in text and "tls internal" in text
    assert "encode zstd gzip" in text


def test_acme_for_a_public_domain(ctx: Context, tmp_path: Path) -> None:
    ctx.config.proxy.host = "flows.example.com"
    ctx.config.proxy.tls = "acme"
    ctx.config.proxy.acme_email = "ops@example.com"
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    assert "tls internal" not in text and "local_certs" not in text
    assert "default_bind 0.0.0.0" in text
    _adapt(text, tmp_path)


def test_supervisor_conf_parses_and_keeps_order(ctx: Context, tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    # As root, PostgreSQL's and the worker's programs name their system users, which `up`
    # creates first and supervisord requires to exist: use ones every Debian machine has.
    pg = ctx.config.postgres.model_copy(update={"system_user": "nobody"})
    wk = ctx.config.worker.model_copy(update={"system_user": "daemon"})
    ctx = Context(ctx.config.model_copy(update={"postgres": pg, "worker": wk}), ctx.secrets)
    services = build_services(ctx)
    ctx.paths.logs.mkdir(parents=True)
    ctx.paths.run.mkdir(parents=True)
    text = render_supervisor_conf(services, ctx.paths)
    path = tmp_path / "supervisord.conf"
    path.write_text(text)
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    groups = {g.name: g for g in options.process_group_configs}
    # flowyard, not supervisor, orders the starts (autostart is off everywhere).
    assert set(groups) == {s.name for s in services}
    worker = groups["worker"].process_configs[0]
    # Prefect's worker ignores SIGTERM; it is stopped with INT, its children with the group.
    assert worker.stopsignal == 2 and worker.killasgroup
    if os.geteuid() == 0:
        # A root install's flow runs are the worker's children: never root.
        assert worker.uid == pwd.getpwnam("daemon").pw_uid
    assert all(not g.process_configs[0].autostart for g in groups.values())


def test_secrets_only_in_owner_only_files(ctx: Context) -> None:
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    for secret in ctx.secrets.values():
        assert secret not in text


def test_client_env_is_tls_verified_through_the_proxy(ctx: Context) -> None:
    env = platform_client_env(ctx)
    assert env["PREFECT_API_URL"] == "https://localhost:8443/api"
    assert env["PREFECT_API_SSL_CERT_FILE"] == str(ctx.paths.ca_cert)
    assert env["AWS_ENDPOINT_URL_S3"] == "https://localhost:8444"
    assert env["AWS_CA_BUNDLE"] == str(ctx.paths.ca_cert)
    store = ctx.config.object_store.model_copy(
        update={"kind": "external", "endpoint_url": "https://s3.eu-west-1.amazonaws.com"}
    )
    ctx.config.object_store = store
    env = platform_client_env(ctx)
    # A private CA bundle would replace the public roots AWS needs.
    assert "AWS_CA_BUNDLE" not in env
    assert env["AWS_ENDPOINT_URL_S3"] == "https://s3.eu-west-1.amazonaws.com"


def test_prefect_profile_matches_client_env(ctx: Context) -> None:
    import tomllib

    from flowyard.render.prefect_profile import render_profiles

    data = tomllib.loads(render_profiles(ctx))
    profile = data["profiles"][data["active"]]
    env = platform_client_env(ctx)
    assert profile == {k: v for k, v in env.items() if k.startswith("PREFECT_")}
    assert profile["PREFECT_API_URL"] == "https://localhost:8443/api"


def test_seaweedfs_mutual_tls_files(ctx: Context) -> None:
    """security.toml names a CA and a certificate for every weed server and client; the
    certificate chains to that CA, names where weed dials itself, and is owner-only; `up`
    keeps it while it is good and issues a new one when the store's host changes."""
    import dataclasses
    import ssl
    import tomllib

    from cryptography import x509

    from flowyard.compose.view import HOSTS
    from flowyard.services import seaweedfs

    ctx.paths.run.mkdir(parents=True)
    seaweedfs.ensure_tls(ctx)
    files = seaweedfs.tls_files(ctx)
    conf = tomllib.loads(seaweedfs.render_security_toml(ctx))
    assert conf["grpc"]["ca"] == str(files["ca"])
    for name in seaweedfs.GRPC_COMPONENTS:
        assert conf["grpc"][name] == {"cert": str(files["cert"]), "key": str(files["key"])}
    # `ca` on an [https.*] server is what makes weed require a client certificate.
    for name in seaweedfs.HTTPS_COMPONENTS:
        assert conf["https"][name]["ca"] == str(files["ca"])
    assert conf["https"]["client"]["enabled"] is True
    for path in files.values():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert files["ca"].parent.stat().st_mode & 0o077 == 0
    # A client holding the pair trusts the CA and can present the certificate.
    seaweedfs.client_tls(ctx)
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(files["ca"].read_bytes()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    ssl.create_default_context(cafile=str(files["ca"]))

    before = {k: p.read_bytes() for k, p in files.items()}
    seaweedfs.ensure_tls(ctx)
    assert {k: p.read_bytes() for k, p in files.items()} == before
    moved = dataclasses.replace(ctx, hosts=dataclasses.replace(ctx.hosts, object_store="store.lan"))
    seaweedfs.ensure_tls(moved)
    assert files["cert"].read_bytes() != before["cert"]
    assert files["ca"].read_bytes() != before["ca"]
    files["key"].write_text("not a key")
    seaweedfs.ensure_tls(ctx)
    assert b"PRIVATE KEY" in files["key"].read_bytes()

    # weed reads it natively; containers run without it (the server network is private).
    assert f"-config_dir={seaweedfs.tls_dir(ctx)}" in seaweedfs.command(ctx)
    container = dataclasses.replace(ctx, hosts=HOSTS)
    assert not any(a.startswith("-config_dir") for a in seaweedfs.command(container))
    assert seaweedfs.master_url(container).startswith("http://")


def _routes_in_order(node: object, found: list[tuple[list[str], str]]) -> None:
    """Every route with a path matcher, in the order Caddy tries them, with its handlers."""
    if isinstance(node, dict):
        match = node.get("match")
        matchers = match if isinstance(match, list) else []
        paths = [p for m in matchers if isinstance(m, dict) for p in m.get("path", [])]
        if paths and "handle" in node:
            found.append((paths, json.dumps(node["handle"])))
        for value in node.values():
            _routes_in_order(value, found)
    elif isinstance(node, list):
        for value in node:
            _routes_in_order(value, found)


def test_probes_reach_the_api_without_the_gate_and_the_rest_through_it(
    ctx: Context, tmp_path: Path
) -> None:
    """Prefect answers GET /api/health and /api/ready without its credential, and the gate
    could only allow them (`access.matrix.public_paths`): Caddy sends them straight to the
    API, tried before /api/*, which goes through the gate."""
    from flowyard.access.matrix import public_paths

    assert public_paths() == ["/health", "/ready"]
    found: list[tuple[list[str], str]] = []
    _routes_in_order(
        _adapt(render_caddyfile(ctx.config, Upstreams.from_context(ctx)), tmp_path), found
    )
    order = [paths for paths, _ in found]
    gate = str(ctx.paths.socket("gate"))
    for probe in ("/api/health", "/api/ready"):
        route = next(handle for paths, handle in found if paths == [probe])
        assert gate not in route and str(ctx.paths.socket("prefect-api")) in route
        assert order.index([probe]) < order.index(["/api/*"])
    assert gate in next(handle for paths, handle in found if paths == ["/api/*"])
