"""The compose stack, built and run for real (issue 17): what `docker compose up` gives a user.

Run by `make test-containers` (deploy/ci/test-containers.sh), which provides the engine,
Compose and the third-party images (or test stand-ins), and sets FLOWYARD_CONTAINER_TESTS;
plain `pytest` does not collect this directory (tests/conftest.py). Nothing here skips: a
missing engine or Compose fails.

The stack is the committed deploy/compose/docker-compose.dev_server.yml, with one extra
file that moves the published host ports to free ones (an override of `ports` only), under
its own project name, so `down -v` removes only what this module created. The client side
is a user's: a FLOWYARD_HOME from `flowyard init` whose proxy ports are those host ports,
`.env` from `flowyard render compose --env-file`, Caddy's CA copied out as
docs/containers.md says, then `flowyard deploy` / `flowyard run` through Caddy with TLS
verified against that CA.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
DEV_FILE = COMPOSE_DIR / "docker-compose.dev_server.yml"
PROD_FILE = COMPOSE_DIR / "docker-compose.prod.yml"
DEV = yaml.safe_load(DEV_FILE.read_text())
# Not the files' own `flowyard`: a user's stack on this machine is never touched.
PROJECT = os.environ.get("FLOWYARD_COMPOSE_PROJECT", "flowyard-ci")
FLOWYARD = str(Path(sys.executable).parent / "flowyard")
UP_TIMEOUT = 900
MLFLOW_HOST = "localhost:8443"  # the Host MLflow's --allowed-hosts names (see test_mlflow)
# The first test that uses the stack also builds the images and brings it up.
pytestmark = pytest.mark.timeout(2400)


def compose_argv() -> list[str]:
    argv = shlex.split(os.environ.get("FLOWYARD_COMPOSE", ""))
    if not argv:
        pytest.fail("FLOWYARD_COMPOSE is unset: run `make test-containers`")
    return argv


def run(argv: list[str], *, timeout: float = 600, check: bool = True, **kw: Any) -> str:
    print("$", shlex.join(argv), flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        pytest.fail(
            f"{shlex.join(argv)} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """The compose project and the user's side of it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.home = work / "home"
        self.env_file = work / "render" / ".env"
        self.ports_file = work / "ports.yml"
        self.https, self.http, self.s3 = free_port(), free_port(), free_port()

    def compose(self, *args: str, files: tuple[Path, ...] = (), **kw: Any) -> str:
        argv = [*compose_argv(), "-p", PROJECT, "--env-file", str(self.env_file)]
        for f in files or (DEV_FILE, self.ports_file):
            argv += ["-f", str(f)]
        return run([*argv, *args], **kw)

    def flowyard(self, *args: str, timeout: float = 600) -> str:
        env = {**os.environ, "FLOWYARD_HOME": str(self.home)}
        return run([FLOWYARD, *args, "--home", str(self.home)], env=env, timeout=timeout)

    def client_env(self) -> dict[str, str]:
        return dict(json.loads(self.flowyard("env", "--json")))

    @property
    def secrets(self) -> dict[str, str]:
        values = {}
        for line in self.env_file.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
        return values

    @property
    def ca(self) -> Path:
        return self.home / "ca" / "root.crt"

    @property
    def tls(self) -> ssl.SSLContext:
        """Verification against the stack's own CA, as `flowyard env` clients do."""
        return ssl.create_default_context(cafile=str(self.ca))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https}"


def write_ports_override(stack: Stack) -> None:
    """Every published port of the development file, moved to a free host port; Caddy's to
    the ports the FLOWYARD_HOME's config names (so `flowyard env` points at them)."""
    dev = DEV
    caddy = {8443: stack.https, 8080: stack.http, 8444: stack.s3}
    lines = [
        "# Test only: the development file's published ports, moved to free ones.",
        "services:",
    ]
    for name, service in dev["services"].items():
        ports = []
        for spec in service.get("ports", []):
            host_ip, _host, container = spec.split(":")
            port = caddy[int(container)] if name == "caddy" else free_port()
            ports.append(f'"{host_ip}:{port}:{container}"')
        if ports:
            lines += [f"  {name}:", f"    ports: !override [{', '.join(ports)}]"]
    stack.ports_file.write_text("\n".join(lines) + "\n")


def diagnose(stack: Stack) -> str:
    out = stack.compose("ps", "-a", check=False)
    logs = stack.compose("logs", "--no-color", "--tail", "60", check=False, timeout=120)
    return f"{out}\n{logs[-20000:]}"


def leftovers() -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {}
    for kind, argv in {
        "containers": ["docker", "ps", "-aq", "--filter", label],
        "networks": ["docker", "network", "ls", "-q", "--filter", label],
        "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
    }.items():
        found[kind] = run(argv).split()
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    stack = Stack(tmp_path_factory.mktemp("compose"))
    # The user's steps (docs/containers.md): a home with its secrets, then `.env` from it.
    env = {
        **os.environ,
        "FLOWYARD_HOME": str(stack.home),
        "FLOWYARD_PROXY__HTTPS_PORT": str(stack.https),
        "FLOWYARD_PROXY__HTTP_PORT": str(stack.http),
        "FLOWYARD_PROXY__S3_HTTPS_PORT": str(stack.s3),
    }
    run([FLOWYARD, "init", "--home", str(stack.home)], env=env)
    run(
        [FLOWYARD, "render", "compose", "--env-file", "--out", str(stack.work / "render")],
        env=env,
    )
    assert stack.env_file.stat().st_mode & 0o077 == 0
    write_ports_override(stack)
    return stack


def test_production_override_merges_as_documented(workdir: Stack) -> None:
    """ACME cannot run offline, so production is checked by Compose's own merge."""
    prod_env = workdir.work / "prod.env"
    prod_env.write_text(
        workdir.env_file.read_text()
        + "FLOWYARD_DOMAIN=flows.example.com\nFLOWYARD_ACME_EMAIL=ops@example.com\n"
    )
    prod_env.chmod(0o600)
    argv = [*compose_argv(), "-p", PROJECT, "--env-file", str(prod_env)]
    argv += ["-f", str(DEV_FILE), "-f", str(PROD_FILE), "config", "--format", "json"]
    model = json.loads(run(argv))
    services = model["services"]
    published = {
        name: sorted(int(p["published"]) for p in svc.get("ports", []))
        for name, svc in services.items()
        if svc.get("ports")
    }
    assert published == {"caddy": [80, 443, 444]}
    assert all("host_ip" not in p for p in services["caddy"]["ports"])
    for name, svc in services.items():
        if name in ("init", "apply"):
            assert svc["restart"] == "no", name
        else:
            assert svc["restart"] == "unless-stopped", name
            assert svc["logging"]["driver"] == "json-file", name
        assert int(svc["deploy"]["resources"]["limits"]["memory"]) > 0, name
    caddy = services["caddy"]
    assert caddy["environment"]["FLOWYARD_DOMAIN"] == "flows.example.com"
    assert "flows.example.com" in caddy["networks"]["prefect-agent-network"]["aliases"]
    assert any(v["source"].endswith("Caddyfile.prod") for v in caddy["volumes"])
    worker = services["worker"]["environment"]
    assert worker["PREFECT_API_URL"] == "https://flows.example.com/api"
    assert "PREFECT_API_SSL_CERT_FILE" not in worker


@pytest.fixture(scope="module")
def stack(workdir: Stack) -> Iterator[Stack]:
    files = COMPOSE_DIR / "files"
    made_files = not files.exists()
    files.mkdir(exist_ok=True)
    # What an interrupted earlier run may have left: this project's own, nothing else.
    workdir.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
    try:
        started = time.monotonic()
        # The project's images, from deploy/docker/*.Dockerfile as the compose file says.
        # One service per image (Compose would export a shared image once per service).
        builds = {s["image"]: n for n, s in DEV["services"].items() if "build" in s}
        # Fails the test with Compose's output if the build fails.
        workdir.compose("--progress", "quiet", "build", *builds.values(), timeout=1800)
        print(f"built the project's images in {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        up = [*compose_argv(), "-p", PROJECT, "--env-file", str(workdir.env_file)]
        up += ["-f", str(DEV_FILE), "-f", str(workdir.ports_file)]
        up += ["up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_TIMEOUT)]
        print("$", shlex.join(up), flush=True)
        result = subprocess.run(up, capture_output=True, text=True, timeout=UP_TIMEOUT + 120)
        if result.returncode != 0:
            pytest.fail(f"up --wait failed:\n{result.stderr[-4000:]}\n{diagnose(workdir)}")
        print(f"stack healthy in {time.monotonic() - started:.0f} s", flush=True)
        # docs/containers.md: take Caddy's root certificate for clients.
        workdir.ca.parent.mkdir(parents=True, exist_ok=True)
        workdir.compose("cp", "caddy:/var/lib/flowyard/ca/root.crt", str(workdir.ca))
        yield workdir
    finally:
        workdir.compose("down", "-v", "--remove-orphans", "--timeout", "30", check=False)
        if made_files:
            with contextlib.suppress(OSError):
                files.rmdir()
    left = leftovers()
    assert not any(left.values()), f"`down -v` left {left}"


def test_stack_is_healthy(stack: Stack) -> None:
    rows = [
        json.loads(line)
        for line in stack.compose("ps", "-a", "--format", "json").split("\n")
        if line
    ]
    states = {r["Service"]: (r["State"], r.get("Health", ""), r.get("ExitCode")) for r in rows}
    for name, (state, health, code) in states.items():
        if name in ("init", "apply"):
            assert (state, code) == ("exited", 0), f"{name}: {states[name]}"
        else:
            assert (state, health) == ("running", "healthy"), f"{name}: {states[name]}"
    assert set(states) >= {"postgres", "redis", "seaweedfs", "prefect-api", "caddy", "worker"}


def test_tls_is_verified_against_the_stack_ca(stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{stack.url}/api/health", verify=True)
    assert httpx.get(f"{stack.url}/api/health", verify=stack.tls).status_code == 200


def test_api_and_mlflow_need_credentials(stack: Stack) -> None:
    verify = stack.tls
    auth = stack.secrets["FLOWYARD_PREFECT_AUTH_STRING"].split(":", 1)
    api = f"{stack.url}/api/flow_runs/filter"
    assert httpx.post(api, json={}, verify=verify).status_code == 401
    assert httpx.post(api, json={}, verify=verify, auth=(auth[0], "wrong")).status_code == 401
    assert httpx.post(api, json={}, verify=verify, auth=tuple(auth)).status_code == 200  # type: ignore[arg-type]
    # /api/health stays open for probes (README, Security defaults), and says nothing else.
    health = httpx.get(f"{stack.url}/api/health", verify=verify)
    assert health.status_code == 200 and health.json() is True
    mlflow = f"{stack.url}/mlflow/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {"Host": MLFLOW_HOST}
    assert httpx.get(mlflow, verify=verify, headers=headers).status_code == 401
    password = stack.secrets["FLOWYARD_MLFLOW_ADMIN_PASSWORD"]
    ok = httpx.get(mlflow, verify=verify, headers=headers, auth=("admin", password))
    assert ok.status_code == 200, ok.text


def test_deploy_and_run_the_greeting_flow(stack: Stack) -> None:
    deployed = json.loads(stack.flowyard("deploy", str(REPO / "flows"), "--json"))
    assert "greeting-flow/scheduled-greeting" in {d["name"] for d in deployed}
    outcome = json.loads(
        stack.flowyard("run", "greeting-flow/scheduled-greeting", "-p", "name=Bob", "--json")
    )
    assert outcome["state"] == "COMPLETED", outcome
    assert outcome["result"] == "Hello, Bob!"
    # The result, read straight from S3 through Caddy's S3 port, TLS verified.
    auth = tuple(stack.secrets["FLOWYARD_PREFECT_AUTH_STRING"].split(":", 1))
    run_info = httpx.get(
        f"{stack.url}/api/flow_runs/{outcome['flow_run_id']}",
        verify=stack.tls,
        auth=auth,  # type: ignore[arg-type]
    ).json()
    key = run_info["state"]["data"]["storage_key"]
    env = stack.client_env()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        verify=env["AWS_CA_BUNDLE"],
        config=Config(s3={"addressing_style": "path"}),
    )
    assert env["AWS_ENDPOINT_URL_S3"] == f"https://localhost:{stack.s3}"
    assert env["AWS_CA_BUNDLE"] == str(stack.ca)
    body = s3.get_object(Bucket="flowyard-results", Key=key)["Body"].read()
    assert pickle.loads(base64.b64decode(body)) == "Hello, Bob!"


def test_mlflow_run_is_logged_with_an_artifact(stack: Stack) -> None:
    """Through Caddy with MLflow's REST API. The override moves Caddy's host port, but MLflow
    checks the Host header against the configured public `localhost:8443` (DNS rebinding
    protection), so the requests name that Host, as a browser on the default port does."""
    password = stack.secrets["FLOWYARD_MLFLOW_ADMIN_PASSWORD"]
    base = f"{stack.url}/mlflow"
    with httpx.Client(
        verify=stack.tls, auth=("admin", password), headers={"Host": MLFLOW_HOST}
    ) as c:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = c.post(f"{base}/api/2.0/mlflow/{path}", json=body)
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
            return dict(r.json())

        experiment = post("experiments/create", {"name": f"ci-{time.time_ns()}"})
        run = post("runs/create", {"experiment_id": experiment["experiment_id"]})["run"]
        run_id = run["info"]["run_id"]
        post(
            "runs/log-metric", {"run_id": run_id, "key": "accuracy", "value": 0.97, "timestamp": 0}
        )
        # Artifacts go through the server (--serve-artifacts) into the S3 bucket.
        path = f"{experiment['experiment_id']}/{run_id}/artifacts/note.txt"
        artifact = f"{base}/api/2.0/mlflow-artifacts/artifacts/{path}"
        assert c.put(artifact, content=b"from CI").status_code == 200
        post("runs/update", {"run_id": run_id, "status": "FINISHED"})
        got = c.get(f"{base}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()
        assert got["run"]["info"]["status"] == "FINISHED"
        assert got["run"]["data"]["metrics"][0]["value"] == 0.97
        assert c.get(artifact).content == b"from CI"


@pytest.fixture(scope="module", autouse=True)
def _engine_is_there() -> None:
    if not shutil.which("docker"):
        pytest.fail("no docker CLI: run `make test-containers`, which installs the engine")


def test_worker_logs_an_experiment_to_mlflow_through_caddy(stack: Stack) -> None:
    """The compose worker reaches MLflow as https://caddy:8443/mlflow (agent network)."""
    outcome = json.loads(
        stack.flowyard("run", "train-digits/train-digits", "-p", "model=logreg", "--json")
    )
    assert outcome["state"] == "COMPLETED", outcome
    password = stack.secrets["FLOWYARD_MLFLOW_ADMIN_PASSWORD"]
    with httpx.Client(
        verify=stack.tls, auth=("admin", password), headers={"Host": MLFLOW_HOST}
    ) as c:
        api = f"{stack.url}/mlflow/api/2.0/mlflow"
        experiments = c.post(f"{api}/experiments/search", json={"max_results": 100}).json()
        ids = [e["experiment_id"] for e in experiments["experiments"]]
        found = c.post(
            f"{api}/runs/search",
            json={"experiment_ids": ids, "filter": "params.model = 'logreg'"},
        ).json()
    assert found.get("runs"), f"no MLflow run from the worker's train-digits: {found}"


def audit_rows(stack: Stack, user: str) -> list[tuple[str, str, str, str]]:
    """(method, route, status, source) of `user`'s rows in the audit table, via psql."""
    sql = (
        "SELECT method, route, status, source FROM flowyard_audit "
        f"WHERE username = '{user}' ORDER BY id"
    )
    out = stack.compose(
        "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "prefect", "-At", "-c", sql
    )
    return [tuple(line.split("|")) for line in out.splitlines() if line]  # type: ignore[misc]


def test_a_viewer_added_to_the_running_stack_reads_but_cannot_change(stack: Stack) -> None:
    """docs/access.md, Under docker compose: `flowyard user add` against the home .env was
    made from, render `--env-file` again, `up -d`; the gate in the stack then knows the login,
    and refuses what the viewer role may not do before Prefect sees it."""
    # --prefect-only: the stack's S3 and MLflow have no per-user identities (and the home's
    # native MLflow, which would make one, is not running).
    added = json.loads(
        stack.flowyard("user", "add", "vera", "--role", "viewer", "--prefect-only", "--json")
    )
    stack.flowyard("render", "compose", "--env-file", "--out", str(stack.env_file.parent))
    assert stack.env_file.stat().st_mode & 0o077 == 0
    stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "600", timeout=900)
    name, key = added["prefect_auth_string"].split(":", 1)
    viewer = (name, key)
    admin_name, admin_key = stack.secrets["FLOWYARD_PREFECT_AUTH_STRING"].split(":", 1)
    admin = (admin_name, admin_key)
    api = f"{stack.url}/api"
    with httpx.Client(verify=stack.tls, timeout=30) as client:
        # Reads (Prefect's filters are POSTs the viewer role may make): the runs of the
        # greeting flow the admin ran above.
        runs = client.post(f"{api}/flow_runs/filter", json={"limit": 50}, auth=viewer)
        assert runs.status_code == 200, runs.text
        assert runs.json(), "the viewer sees no flow run"
        found = client.post(
            f"{api}/deployments/filter",
            json={"deployments": {"name": {"any_": ["scheduled-greeting"]}}},
            auth=viewer,
        )
        assert found.status_code == 200, found.text
        deployment = found.json()[0]["id"]
        # Changes: refused by the gate (its header), so Prefect never sees them.
        create = client.post(
            f"{api}/deployments/", json={"name": "x", "flow_id": deployment}, auth=viewer
        )
        delete = client.delete(f"{api}/deployments/{deployment}", auth=viewer)
        for refused in (create, delete):
            assert refused.status_code == 403, refused.text
            assert refused.headers["x-flowyard-refused"] == "role"
        # Still there for the admin, who may do everything.
        still = client.get(f"{api}/deployments/{deployment}", auth=admin)
        assert still.status_code == 200, still.text
        # No login, or a wrong key: 401 from the gate.
        anonymous = client.post(f"{api}/flow_runs/filter", json={})
        wrong = client.post(f"{api}/flow_runs/filter", json={}, auth=(viewer[0], "wrong"))
        for refused in (anonymous, wrong):
            assert refused.status_code == 401, refused.text
            assert refused.headers["x-flowyard-refused"] == "login"
    # The gate's audit writer reached PostgreSQL: both refusals are recorded (written in
    # batches by a background thread, hence the wait).
    deadline = time.monotonic() + 30
    while True:
        rows = audit_rows(stack, "vera")
        methods = {(m, s, src) for m, _route, s, src in rows}
        if {("POST", "403", "gate"), ("DELETE", "403", "gate")} <= methods:
            break
        assert time.monotonic() < deadline, f"audit rows of vera: {rows}"
        time.sleep(1)


def test_backup_as_documented(stack: Stack) -> None:
    """docs/containers.md, Upgrading, step 1: pg_dumpall, then the object store stopped."""
    dump = stack.compose("exec", "-T", "postgres", "pg_dumpall", "-U", "postgres")
    for database in ("prefect", "mlflow"):
        assert f"CREATE DATABASE {database}" in dump
    assert "greeting-flow" in dump
    stack.compose("stop", "seaweedfs")
    argv = [*compose_argv(), "-p", PROJECT, "--env-file", str(stack.env_file)]
    argv += ["-f", str(DEV_FILE), "-f", str(stack.ports_file)]
    argv += ["run", "--rm", "--no-deps", "-T", "--entrypoint", "tar", "seaweedfs"]
    argv += ["czf", "-", "-C", "/var/lib/flowyard/data/seaweedfs", "."]
    print("$", shlex.join(argv), flush=True)
    result = subprocess.run(argv, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:gz") as tar:
        names = tar.getnames()
    assert any(n.endswith(".dat") for n in names), names[:50]
    # Last test of the module: `down -v` follows, so the store is not started again.
