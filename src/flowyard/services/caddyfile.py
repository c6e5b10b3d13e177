"""The Caddyfile, rendered from the config for both native and container modes.

Both modes share this one template; only the upstream addresses and file locations differ,
which is exactly what `Upstreams` holds. A parity test renders both and compares routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowyard.access.matrix import public_paths
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK, FlowyardConfig, url_host

# The metrics exporter's and the access gate's ports in containers (`services.metrics`,
# `services.gate`); natively they are sockets.
METRICS_PORT = 9464
GATE_PORT = 4180

# Prefect routes that upgrade to websockets; Caddy proxies upgrades on any route, and these
# are listed so tests and docs check each one stays reachable.
PREFECT_WEBSOCKET_ROUTES = (
    "/api/events/in",
    "/api/events/out",
    "/api/logs/out",
    "/api/task_runs/subscriptions/scheduled",
    "/api/work_pools/*/workers/connect",
)


@dataclass(frozen=True)
class Upstreams:
    prefect: str
    s3: str | None
    mlflow: str | None
    metrics: str
    files_root: str
    access_log: str
    listen: str
    admin: str
    # The Dask scheduler's loopback address and the directory of its CA and the proxy's
    # client certificate (`services.dask`); None when there is no cluster (or in containers).
    dask: str | None = None
    dask_pki: str | None = None
    # The access gate (`services.gate`): its socket natively, its container port under compose.
    gate: str = ""

    @classmethod
    def from_context(cls, ctx: Context) -> Upstreams:
        """Where Caddy finds each upstream and its files: owner-only Unix sockets natively,
        container names and the images' paths under compose (both come in through `ctx`)."""
        config, hosts = ctx.config, ctx.hosts
        own_store = config.object_store.kind == "seaweedfs"
        # Containers run no Dask cluster (docs/containers.md says why).
        dask = config.dask.enabled and hosts.use_sockets

        def at(name: str, host: str, port: int) -> str:
            return unix(ctx.paths.socket(name)) if hosts.use_sockets else f"{host}:{port}"

        return cls(
            prefect=at("prefect-api", hosts.prefect_api, config.prefect.port),
            s3=at("s3", hosts.object_store, config.object_store.s3_port) if own_store else None,
            mlflow=at("mlflow", hosts.mlflow, config.mlflow.port)
            if config.mlflow.enabled
            else None,
            metrics=at("metrics", hosts.metrics, METRICS_PORT),
            files_root=str(ctx.paths.files),
            access_log=str(ctx.paths.log_file("caddy-access")),
            listen=hosts.proxy_bind or config.proxy.listen_address,
            # The admin API can rewrite every route: natively a socket only its owner can
            # open; in a container, the container's own loopback.
            admin=at("caddy-admin", LOOPBACK, config.proxy.admin_port),
            dask=f"{LOOPBACK}:{config.dask.scheduler_port}" if dask else None,
            dask_pki=str(ctx.paths.dask_pki) if dask else None,
            gate=at("gate", hosts.gate, GATE_PORT),
        )


def unix(path: Path) -> str:
    """Caddy's network address of a Unix socket."""
    return f"unix/{path}"


def _site_addresses(host: str, port: int, extra_names: Sequence[str]) -> str:
    return ", ".join(f"https://{name}:{port}" for name in (host, *extra_names))


# What the gate hands Caddy with "allow": the internal credential Prefect checks, and who the
# caller is (for the API's audit log). Caddy replaces the request's own values with these.
GATE_HEADERS = ("Authorization", "X-Flowyard-User", "X-Flowyard-Role")


def gate_check(up: Upstreams) -> list[str]:
    """A login with a role that may make this request, checked by the access gate
    (`flowyard.access.gate`), which answers 401 without a challenge."""
    return [
        f"\t\tforward_auth {up.gate} {{",
        "\t\t\turi /check",
        f"\t\t\tcopy_headers {' '.join(GATE_HEADERS)}",
        "\t\t}",
    ]


def render_caddyfile(config: FlowyardConfig, up: Upstreams, extra_names: Sequence[str] = ()) -> str:
    """The Caddyfile. `extra_names` are more names each HTTPS site answers to (compose's
    workers reach Caddy by its container name, which the internal CA must certify too)."""
    proxy = config.proxy
    tls = "tls internal" if proxy.tls == "internal" else f"tls {proxy.acme_email or ''}".rstrip()
    global_opts = [
        f"admin {up.admin}",
        # The CA is distributed as a file, never installed into this machine's trust store.
        "skip_install_trust",
        f"http_port {proxy.http_port}",
        f"https_port {proxy.https_port}",
        f"default_bind {up.listen}",
        # Request metrics (latency by status code) for /metrics/caddy; off by default.
        "metrics",
    ]
    if proxy.tls == "acme" and proxy.acme_email:
        global_opts.append(f"email {proxy.acme_email}")
    if proxy.tls == "internal":
        global_opts.append("local_certs")
    if up.dask:
        global_opts += _dask_server_options(config, up)
    lines = ["{", *(f"\t{o}" for o in global_opts), "}", ""]

    main = [
        f"{_site_addresses(proxy.url_host, proxy.https_port, extra_names)} {{",
        f"\t{tls}",
        "\tencode zstd gzip",
        "\tlog {",
        f"\t\toutput file {up.access_log} {{",
        "\t\t\troll_size 50MiB",
        "\t\t\troll_keep 5",
        "\t\t}",
        "\t\tformat json",
        "\t}",
        # The design's static files: for any login (checked by the gate, which answers 401
        # without a challenge, so browsers keep no ambient login), never listed, and never
        # run as a page of the UI's origin, where Prefect's UI keeps its login: a sandboxed
        # download, whatever the file holds.
        "\thandle_path /files/* {",
        *gate_check(up),
        "\t\theader {",
        '\t\t\tContent-Security-Policy "sandbox"',
        "\t\t\tContent-Disposition attachment",
        "\t\t\tX-Content-Type-Options nosniff",
        "\t\t}",
        f"\t\troot * {up.files_root}",
        "\t\tfile_server",
        "\t}",
        # Prometheus: the platform's figures (the exporter) and Caddy's own request metrics
        # (served by Caddy itself, so its admin API stays private), for any login, checked
        # by the gate like /files/.
        "\thandle /metrics {",
        *gate_check(up),
        f"\t\treverse_proxy {up.metrics}",
        "\t}",
        "\thandle /metrics/caddy {",
        *gate_check(up),
        "\t\tmetrics",
        "\t}",
    ]
    if up.mlflow:
        main += [
            "\thandle /mlflow* {",
            f"\t\treverse_proxy {up.mlflow}",
            "\t}",
        ]
    # The API, through the gate (websocket upgrades too: the gate lets those through to be
    # checked in-band by the API, flowyard.access.prefect_app); then the UI's static pages,
    # which need no login (the UI asks for one and sends it to the API).
    # flush_interval -1 streams event and log responses as they are written.
    if up.gate and config.access.sso.enabled:
        # SSO's pages (flowyard.access.sso) are the gate's own and need no login: they are
        # how a browser gets one. The gate answers only its three /auth/ routes.
        main += [
            "\thandle /auth/* {",
            f"\t\treverse_proxy {up.gate}",
            "\t}",
        ]
    # Prefect's probes (/api/health, /api/ready) need no login, in Prefect or the gate:
    # straight to the API, so a health check costs no gate round trip. A client's own
    # Authorization is dropped, and none is added, so Prefect refuses any other method.
    for path in public_paths():
        main += [
            f"\thandle /api{path} {{",
            f"\t\treverse_proxy {up.prefect} {{",
            "\t\t\theader_up -Authorization",
            "\t\t}",
            "\t}",
        ]
    for route in ("handle /api/* {", "handle {"):
        main += [
            f"\t{route}",
            *(gate_check(up) if route != "handle {" else []),
            f"\t\treverse_proxy {up.prefect} {{",
            "\t\t\tflush_interval -1",
            "\t\t}",
            "\t}",
        ]
    main += ["}", ""]
    lines += main
    if up.s3:
        # S3 signatures cover the Host header; Caddy forwards it unchanged, and nothing is
        # re-encoded here because checksums cover the body.
        lines += [
            f"{_site_addresses(proxy.url_host, proxy.s3_https_port, extra_names)} {{",
            f"\t{tls}",
            f"\treverse_proxy {up.s3} {{",
            "\t\tflush_interval -1",
            "\t}",
            "}",
            "",
        ]
    if up.dask and up.dask_pki:
        lines += _dask_site(config, up, tls, extra_names)
    # Plain HTTP only redirects, keeping the configured HTTPS port in the target.
    lines += [
        f"http://{proxy.url_host}:{proxy.http_port} {{",
        f"\tredir {proxy.url}{{uri}} permanent",
        "}",
        "",
    ]
    return "\n".join(lines)


def _dask_site(
    config: FlowyardConfig, up: Upstreams, tls: str, extra_names: Sequence[str]
) -> list[str]:
    """The Dask scheduler on its own port: Dask's websocket comm (wss://) for holders of a
    certificate the Dask CA issued (Dask has no passwords), forwarded over mutual TLS to the
    scheduler's loopback port with the proxy's own certificate (services.dask says why).
    Dask's comm lives at the root path, hence a port rather than a path of the main site."""
    ca = f"{up.dask_pki}/ca.crt"
    return [
        f"{_site_addresses(config.proxy.url_host, config.dask.https_port, extra_names)} {{",
        f"\t{tls} {{",
        "\t\tclient_auth {",
        "\t\t\tmode require_and_verify",
        f"\t\t\ttrust_pool file {ca}",
        "\t\t}",
        "\t}",
        # No request without a verified client certificate reaches the scheduler, whichever
        # TLS policy the connection got (see _dask_server_options).
        '\t@anonymous expression `{http.request.tls.client.fingerprint} == ""`',
        "\thandle @anonymous {",
        '\t\trespond "client certificate required" 403',
        "\t}",
        "\thandle {",
        f"\t\treverse_proxy https://{up.dask} {{",
        "\t\t\ttransport http {",
        f"\t\t\t\ttls_client_auth {up.dask_pki}/node.crt {up.dask_pki}/node.key",
        f"\t\t\t\ttls_trust_pool file {ca}",
        "\t\t\t}",
        # Dask's frames stream both ways on one websocket.
        "\t\t\tflush_interval -1",
        "\t\t}",
        "\t}",
        "}",
        "",
    ]


def _dask_server_options(config: FlowyardConfig, up: Upstreams) -> list[str]:
    """Dask's client sends no TLS server name when the platform is reached by IP address
    (TLS forbids it), so: connections without one get the Dask site's policy (client
    certificate required), and the Dask port does not insist that the Host header match
    the server name (Caddy's strict_sni_host, on by default with client_auth, answers 421
    otherwise). The port serves that one site, and its handler refuses any request that
    came without a verified client certificate."""
    return [
        f"default_sni {config.proxy.host}",
        f"servers {url_host(up.listen)}:{config.dask.https_port} {{",
        "\tstrict_sni_host insecure_off",
        "}",
    ]


def routes(caddyfile: str) -> list[str]:
    """The path matchers and site addresses a Caddyfile serves (for the parity test)."""
    found = []
    for raw in caddyfile.splitlines():
        line = raw.strip()
        if line.startswith(("handle", "https://", "http://")) and line.endswith("{"):
            found.append(line[:-1].strip())
    return found
