"""`flowyard render compose`: the container deployment, rendered from the one config.

Writes, into one directory (default `deploy/compose`):
- `docker-compose.dev_server.yml`: the whole platform; internal ports published on loopback
  only, where native mode binds them, so loopback tools work against it as they do natively;
- `docker-compose.prod.yml`: an override for a VM (public domain, ACME, 80/443 and the S3
  port only, restart policies, memory limits, log rotation). It is computed as the difference
  between the development model and the same model rendered for production, so applying it
  yields exactly the production model;
- `Caddyfile` / `Caddyfile.prod`: the native template (`services.caddyfile`) with container
  upstreams;
- `.env.example`: every variable the files reference. The files hold references only, never
  secret values; `--env-file` writes `.env` (0600) from this home's secrets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flowyard.compose import view as c
from flowyard.compose.anchors import Anchors, present, shared
from flowyard.compose.envfile import env_example, env_file
from flowyard.compose.specs import Contexts, build_specs
from flowyard.compose.yaml_emit import MERGE, Tagged, dump
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.secrets import Secrets
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.services.caddyfile import Upstreams, render_caddyfile

DEV_FILE = "docker-compose.dev_server.yml"
PROD_FILE = "docker-compose.prod.yml"
CADDYFILE = "Caddyfile"
PROD_CADDYFILE = "Caddyfile.prod"
ENV_EXAMPLE = ".env.example"
ENV_FILE = ".env"
PROJECT = "flowyard"

JOBS = (c.INIT, c.APPLY)
HEALTH_TIMING = {"interval": "10s", "timeout": "5s", "retries": 12, "start_period": "30s"}
PRODUCTION = {
    "restart": "unless-stopped",
    # Docker's default json-file log grows without bound on a long-lived VM.
    "logging": {"driver": "json-file", "options": {"max-size": "20m", "max-file": "5"}},
}
# Ceilings, not reservations: sized so the whole platform fits an 8 GB VM with room for runs.
MEMORY_LIMITS = {
    c.POSTGRES: "1g",
    c.REDIS: "256m",
    c.SEAWEEDFS: "1g",
    c.INIT: "1g",
    c.PREFECT_API: "1g",
    c.PREFECT_SERVICES: "1g",
    c.APPLY: "512m",
    c.MLFLOW: "1g",
    c.GATE: "256m",
    c.CADDY: "256m",
    c.METRICS: "256m",
    c.WORKER: "2g",
}
KEY_ORDER = [
    MERGE,
    "image",
    "build",
    "entrypoint",
    "command",
    "environment",
    "configs",
    "volumes",
    "ports",
    "networks",
    "depends_on",
    "restart",
    "healthcheck",
    "stop_signal",
    "stop_grace_period",
    "deploy",
    "logging",
]


def source_root() -> Path | None:
    """The checkout holding deploy/docker, when Flowyard runs from one (else images are pulled)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "deploy" / "docker").is_dir() else None


def build_context(out_dir: Path) -> str | None:
    root = source_root()
    return os.path.relpath(root, out_dir.absolute()) if root else None


def contexts(
    config: FlowyardConfig,
    *,
    production: bool,
    build_dir: str | None,
    secrets: Secrets | None = None,
) -> Contexts:
    base = config
    if production:
        # Plain `${VAR}`: URLs are parsed (e.g. for MLflow's allowed hosts) and `:?` would
        # split them; the caddy service's `${VAR:?}` already stops compose when one is unset.
        base = c.production_config(config, f"${{{c.DOMAIN_VAR}}}", f"${{{c.ACME_EMAIL_VAR}}}")
    return Contexts(
        config=config,
        server=c.server_context(base, secrets),
        client=c.client_context(base, secrets),
        production=production,
        build_context=build_dir,
    )


def caddyfile(config: FlowyardConfig, *, production: bool) -> str:
    ctx = c.server_context(config)
    if production:
        # Caddy reads these from its environment when it loads the file.
        cfg = c.production_config(
            ctx.config, "{$" + c.DOMAIN_VAR + "}", "{$" + c.ACME_EMAIL_VAR + "}"
        )
        ctx = Context(config=cfg, secrets=ctx.secrets, hosts=ctx.hosts)
    # Workers inside compose reach Caddy by its container name (see view.client_context);
    # the internal CA certifies that name too. ACME sites keep their public name only.
    extra = [c.CADDY] if ctx.config.proxy.tls == "internal" else []
    return render_caddyfile(ctx.config, Upstreams.from_context(ctx), extra)


def model(
    config: FlowyardConfig,
    *,
    production: bool,
    build_dir: str | None,
    secrets: Secrets | None = None,
) -> dict[str, Any]:
    """The complete compose document for one mode, as plain data (no anchors, no tags)."""
    cx = contexts(config, production=production, build_dir=build_dir, secrets=secrets)
    specs = build_specs(cx, PROD_CADDYFILE if production else CADDYFILE)
    services: dict[str, Any] = {}
    volumes: list[str] = []
    configs: dict[str, Any] = {}
    for name, spec in specs.items():
        svc = dict(spec.service)
        if name in JOBS:
            svc["restart"] = "no"
            # The image's own HEALTHCHECK probes the API, which a one-shot job does not serve.
            svc["healthcheck"] = {"disable": True}
        else:
            svc["healthcheck"] = {**svc["healthcheck"], **HEALTH_TIMING}
        if spec.dev_ports and not production:
            svc["ports"] = [f"{LOOPBACK}:{h}:{p}" for h, p in spec.dev_ports.items()]
        services[name] = _ordered(svc)
        volumes += [v for v in spec.volumes if v not in volumes]
        configs.update({k: {"content": v} for k, v in spec.configs.items()})
    return {
        "name": PROJECT,
        "services": services,
        "networks": {c.SERVER_NETWORK: {}, c.AGENT_NETWORK: {}},
        "volumes": {v: {} for v in volumes},
        "configs": configs,
    }


def _ordered(svc: dict[str, Any]) -> dict[str, Any]:
    rank = {k: i for i, k in enumerate(KEY_ORDER)}
    return dict(sorted(svc.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def override(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What an override file must say so that compose's merge of `old` with it gives `new`:
    changed mappings recurse, changed lists are replaced (`!override`), removed keys reset."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            out[key] = value
        elif old[key] != value:
            before = old[key]
            if (
                isinstance(value, dict)
                and isinstance(before, dict)
                and before.keys() <= value.keys()
            ):
                out[key] = override(before, value)
            elif isinstance(value, (dict, list)):
                out[key] = Tagged("!override", value)
            else:
                out[key] = value
    for key, before in old.items():
        if key not in new:
            empty: Any = (
                [] if isinstance(before, list) else {} if isinstance(before, dict) else None
            )
            out[key] = Tagged("!reset", empty)
    return out


def production_override(
    config: FlowyardConfig, build_dir: str | None, secrets: Secrets | None = None
) -> dict[str, Any]:
    dev = model(config, production=False, build_dir=build_dir, secrets=secrets)
    prod = model(config, production=True, build_dir=build_dir, secrets=secrets)
    services = {}
    for name, svc in prod["services"].items():
        diff = override(dev["services"][name], svc)
        if name not in JOBS:
            diff.update(PRODUCTION)
        diff["deploy"] = {"resources": {"limits": {"memory": MEMORY_LIMITS[name]}}}
        services[name] = _ordered(diff)
    doc: dict[str, Any] = {"services": services}
    configs = override(dev["configs"], prod["configs"])
    if configs:
        doc["configs"] = configs
    return doc


# -- which settings are written once, as `x-` anchors -----------------------------------


def _dev_anchors(doc: dict[str, Any]) -> Anchors:
    services = doc["services"]
    platform = {
        k: services[c.INIT][k] for k in ("image", "build", "networks") if k in services[c.INIT]
    }
    setup = {"FLOWYARD_SETUP_CONFIG": services[c.INIT]["environment"]["FLOWYARD_SETUP_CONFIG"]}
    return {
        "service": [
            ("flowyard-image", platform),
            ("job", {"restart": "no", "healthcheck": {"disable": True}}),
        ],
        "healthcheck": [("healthcheck-timing", HEALTH_TIMING)],
        "environment": [
            (
                "prefect-server-env",
                shared(services, "environment", [c.PREFECT_API, c.PREFECT_SERVICES]),
            ),
            ("setup-config", setup),
        ],
    }


def _prod_anchors(doc: dict[str, Any]) -> Anchors:
    services = doc["services"]
    return {
        "service": [("production", PRODUCTION)],
        "environment": [
            (
                "prefect-server-env",
                shared(services, "environment", [c.PREFECT_API, c.PREFECT_SERVICES]),
            ),
            ("setup-config", shared(services, "environment", list(JOBS))),
        ],
    }


# -- files ----------------------------------------------------------------------------------

_HEADER = """\
Flowyard {what}, rendered by `flowyard render compose` from the flowyard
config. Do not edit: change flowyard.toml and render again (a test keeps the committed
copy equal to a fresh render of the default config). Needs Docker Compose 2.24 or newer.
{usage}
Secrets are ${{...:?}} references to .env beside this file (see .env.example); the
file holds no secret value. Guide: docs/containers.md."""


def render_files(config: FlowyardConfig, out_dir: Path) -> dict[str, str]:
    """File name -> content, for everything `flowyard render compose` writes (but .env)."""
    if config.access.sso.enabled:
        # The stack's gate reads the logins .env carries, fixed until it is recreated, so it
        # cannot keep the sessions an SSO login mints (docs/access.md, SSO).
        raise FlowyardError(
            "access.sso.enabled is true, but SSO runs natively only: the compose stack "
            "cannot hold its sessions.",
            fix="Set [access.sso] enabled = false in flowyard.toml for the compose files, or "
            "run the platform natively (`flowyard up`).",
        )
    build_dir = build_context(out_dir)
    dev = model(config, production=False, build_dir=build_dir)
    prod = production_override(config, build_dir)
    files = {
        DEV_FILE: dump(
            present(dev, _dev_anchors(dev)),
            _HEADER.format(
                what="development server (docker compose)",
                usage=f"Run: docker compose -f {DEV_FILE} up -d",
            ),
        ),
        PROD_FILE: dump(
            present(prod, _prod_anchors(prod)),
            _HEADER.format(
                what="production override for a VM",
                usage=f"Run: docker compose -f {DEV_FILE} -f {PROD_FILE} up -d",
            ),
        ),
        CADDYFILE: _caddy_header("development") + caddyfile(config, production=False),
        PROD_CADDYFILE: _caddy_header("production") + caddyfile(config, production=True),
    }
    files[ENV_EXAMPLE] = env_example([files[DEV_FILE], files[PROD_FILE]])
    return files


def _caddy_header(mode: str) -> str:
    return (
        f"# Flowyard Caddyfile for containers ({mode}), rendered by `flowyard render compose`\n"
        "# from the same template as native mode; do not edit.\n"
    )


def write_files(
    config: FlowyardConfig, out_dir: Path, secrets: Secrets | None = None, users: str = ""
) -> list[Path]:
    """Writes `render_files`, and `.env` when `secrets` are given (with `users`, the home's
    users.toml)."""
    rendered = render_files(config, out_dir)  # first: a refused config writes nothing
    # files/ is bind-mounted into Caddy (the design's static files); made here so Docker
    # does not create it owned by root.
    (out_dir / "files").mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    if secrets is not None:
        path = out_dir / ENV_FILE
        # Owner-only from the first byte, as secrets.toml.
        write_private(path, env_file(config, secrets, users))
        written.append(path)
    return written


def main() -> None:
    """`python -m flowyard.compose.render`: re-render the committed files from the defaults,
    whatever FLOWYARD_* variables or flowyard.toml this machine has."""
    root = source_root()
    if root is None:
        raise SystemExit("Run from a Flowyard checkout: deploy/compose is rendered in place.")
    defaults = FlowyardConfig.model_validate({"home": str(root / ".flowyard-render")})
    for path in write_files(defaults, root / "deploy" / "compose"):
        print(f"wrote {path.relative_to(root)}")


if __name__ == "__main__":
    main()
