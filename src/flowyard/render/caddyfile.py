"""The Caddyfile, rendered from the config for both native and container modes.

Both modes share this one template; only the upstream addresses and file locations differ,
which is exactly what `Upstreams` holds. A parity test renders both and compares routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowyard.config.model import LOOPBACK, FlowyardConfig

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
    files_root: str
    access_log: str
    listen: str
    admin: str

    @classmethod
    def native(cls, config: FlowyardConfig) -> Upstreams:
        from flowyard.config.paths import Paths

        paths = Paths(config.home)
        return cls(
            prefect=f"{LOOPBACK}:{config.prefect.port}",
            s3=f"{LOOPBACK}:{config.object_store.s3_port}"
            if config.object_store.kind == "seaweedfs"
            else None,
            mlflow=f"{LOOPBACK}:{config.mlflow.port}" if config.mlflow.enabled else None,
            files_root=str(paths.files),
            access_log=str(paths.log_file("caddy-access")),
            listen=config.proxy.listen_address,
            admin=f"{LOOPBACK}:{config.proxy.admin_port}",
        )

    @classmethod
    def container(cls, config: FlowyardConfig) -> Upstreams:
        """Compose mode: upstreams by container name, paths inside the caddy image."""
        from flowyard.config.paths import Paths
        from flowyard.render import containers as c

        # The compose file mounts volumes at the native paths under the images' home.
        paths = Paths(c.HOME)
        return cls(
            prefect=f"{c.PREFECT_API}:{config.prefect.port}",
            s3=f"{c.SEAWEEDFS}:{config.object_store.s3_port}"
            if config.object_store.kind == "seaweedfs"
            else None,
            mlflow=f"{c.MLFLOW}:{config.mlflow.port}" if config.mlflow.enabled else None,
            files_root=str(paths.files),
            access_log=str(paths.log_file("caddy-access")),
            # Inside its own network namespace; the published ports decide what is exposed.
            listen="0.0.0.0",
            admin=f"{LOOPBACK}:{config.proxy.admin_port}",
        )


def _site_address(host: str, port: int) -> str:
    return f"https://{host}:{port}"


def render_caddyfile(config: FlowyardConfig, up: Upstreams) -> str:
    proxy = config.proxy
    tls = "tls internal" if proxy.tls == "internal" else f"tls {proxy.acme_email or ''}".rstrip()
    global_opts = [
        f"admin {up.admin}",
        # The CA is distributed as a file, never installed into this machine's trust store.
        "skip_install_trust",
        f"http_port {proxy.http_port}",
        f"https_port {proxy.https_port}",
        f"default_bind {up.listen}",
    ]
    if proxy.tls == "acme" and proxy.acme_email:
        global_opts.append(f"email {proxy.acme_email}")
    if proxy.tls == "internal":
        global_opts.append("local_certs")
    lines = ["{", *(f"\t{o}" for o in global_opts), "}", ""]

    main = [
        f"{_site_address(proxy.url_host, proxy.https_port)} {{",
        f"\t{tls}",
        "\tencode zstd gzip",
        "\tlog {",
        f"\t\toutput file {up.access_log} {{",
        "\t\t\troll_size 50MiB",
        "\t\t\troll_keep 5",
        "\t\t}",
        "\t\tformat json",
        "\t}",
        "\thandle_path /files/* {",
        f"\t\troot * {up.files_root}",
        "\t\tfile_server browse",
        "\t}",
    ]
    if up.mlflow:
        main += [
            "\thandle /mlflow* {",
            f"\t\treverse_proxy {up.mlflow}",
            "\t}",
        ]
    main += [
        "\thandle {",
        # flush_interval -1 streams event and log responses as they are written.
        f"\t\treverse_proxy {up.prefect} {{",
        "\t\t\tflush_interval -1",
        "\t\t}",
        "\t}",
        "}",
        "",
    ]
    lines += main
    if up.s3:
        # S3 signatures cover the Host header; Caddy forwards it unchanged, and nothing is
        # re-encoded here because checksums cover the body.
        lines += [
            f"{_site_address(proxy.url_host, proxy.s3_https_port)} {{",
            f"\t{tls}",
            f"\treverse_proxy {up.s3} {{",
            "\t\tflush_interval -1",
            "\t}",
            "}",
            "",
        ]
    # Plain HTTP only redirects, keeping the configured HTTPS port in the target.
    lines += [
        f"http://{proxy.url_host}:{proxy.http_port} {{",
        f"\tredir {proxy.url}{{uri}} permanent",
        "}",
        "",
    ]
    return "\n".join(lines)


def routes(caddyfile: str) -> list[str]:
    """The path matchers and site addresses a Caddyfile serves (for the parity test)."""
    found = []
    for raw in caddyfile.splitlines():
        line = raw.strip()
        if line.startswith(("handle", "https://", "http://")) and line.endswith("{"):
            found.append(line[:-1].strip())
    return found
