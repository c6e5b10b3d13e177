"""Team access on the real platform (docs/access.md): every role against every route of
Prefect's OpenAPI through Caddy and the gate, a joined worker with its own `worker` login
and S3 keys, revocation over HTTP and an open websocket, the audit log, every user's own S3
keys and MLflow login by role (revoked within 5 s, rolled back on failure), and Prefect's UI
in a real headless Chromium (a viewer sees runs and cannot trigger one; an operator can).

One platform for the module, the local worker off (the joined worker serves the pool), MLflow
on, with the `extra` test project deployed to it.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from playwright.sync_api import Page, Response
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from flowyard.access import matrix
from flowyard.access.gate import REFUSED_HEADER
from flowyard.client.api import auth_header
from flowyard.config.context import Context
from flowyard.platform import identities
from flowyard.services import mlflow as mlflow_service
from flowyard.services import seaweedfs
from flowyard.services.caddy import tls_verify
from flowyard.testing import running_platform
from tests.integration import browser
from tests.integration.conftest import flowyard_cli
from tests.integration.netns import stop_joined_worker
from tests.integration.runs import api, cli_ok, wait_state

pytestmark = pytest.mark.integration

EXTRA = Path(__file__).parent / "projects" / "extra"
BIN = Path(sys.executable).parent
ROLES = ("viewer", "operator", "worker")


@pytest.fixture(scope="module")
def yard(homes: Callable[[str], Path]) -> Iterator[Context]:
    # MLflow on: every person gets an MLflow login of their own.
    with running_platform(
        homes("access"), worker={"enabled": False}, mlflow={"enabled": True}
    ) as ctx:
        yield ctx


def add_login(ctx: Context, name: str, role: str) -> str:
    if role == "worker":
        join = ctx.paths.home.parent / f"{name}.toml"
        made = flowyard_cli(ctx, "worker", "join-file", "--name", name, "--out", str(join))
        assert made.returncode == 0, made.stderr
        return str(tomllib.loads(join.read_text())["auth_string"])
    made = flowyard_cli(ctx, "user", "add", name, "--role", role, "--json")
    assert made.returncode == 0, made.stderr
    login = json.loads(made.stdout)["prefect_auth_string"]
    assert login.startswith(f"{name}:")
    return str(login)


@pytest.fixture(scope="module")
def logins(yard: Context) -> dict[str, str]:
    found = {role: add_login(yard, f"{role}-1", role) for role in ROLES}
    found["admin"] = yard.secrets.prefect_auth_string.get_secret_value()
    return found


def proxy(ctx: Context, login: str | None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{ctx.config.proxy.url}/api",
        headers=auth_header(login) if login else {},
        verify=tls_verify(ctx),
        timeout=60,
    )


def _sample(template: str) -> str:
    return re.sub(r"\{[^/]+\}", lambda _: f"nope-{uuid.uuid4()}", template)


def test_every_role_against_every_route(yard: Context, logins: dict[str, str]) -> None:
    """Zero forbidden requests get past the gate, zero allowed ones are refused by it.

    Runs first, on a platform with no deployment yet: allowed mutations are sent with ids
    that do not exist and a body Prefect rejects, so they change nothing, while a forbidden
    one must be answered 403 by the gate itself (its header), never by Prefect."""
    wrong: list[str] = []
    counts = {"refused": 0, "passed": 0}
    for role in (*ROLES, "admin"):
        with proxy(yard, logins[role]) as client:
            for route, klass in sorted(matrix.ROUTES.items()):
                method, template = route.split(" ", 1)
                allowed = role in matrix.CLASSES[klass]
                if role == "admin" and method != "GET":
                    continue  # admin may do all; junk mutations as admin prove nothing
                body = None if method in ("GET", "DELETE") else '"not an object"'
                r = client.request(
                    method,
                    _sample(template),
                    content=body,
                    headers={"content-type": "application/json"},
                )
                by_gate = r.headers.get(REFUSED_HEADER)
                if allowed and (by_gate or r.status_code in (401, 403)):
                    wrong.append(f"{role} refused {route}: {r.status_code} {r.text[:100]}")
                if not allowed and not (r.status_code == 403 and by_gate == "role"):
                    wrong.append(f"{role} NOT refused {route}: {r.status_code} {r.text[:100]}")
                counts["refused" if by_gate else "passed"] += 1
    assert not wrong, "\n".join(wrong)
    # Both sides were exercised: the matrix refuses and allows something for each role.
    assert counts["refused"] > 100 and counts["passed"] > 150, counts


def test_no_login_and_bad_login_are_refused_by_the_gate(yard: Context) -> None:
    for login in (None, "viewer-1:wrong-key", yard.secrets.get("prefect_internal_auth_string")):
        with proxy(yard, login) as client:
            r = client.post("/deployments/filter", json={})
            assert r.status_code == 401 and r.headers[REFUSED_HEADER] == "login", login
            assert "www-authenticate" not in r.headers
    with proxy(yard, None) as client:
        assert client.get("/health").status_code == 200


def test_joined_worker_runs_a_flow_and_cannot_delete_a_deployment(
    yard: Context, logins: dict[str, str], tmp_path: Path
) -> None:
    deployed = flowyard_cli(yard, "deploy", str(EXTRA), "--json")
    assert deployed.returncode == 0, deployed.stderr
    join = tmp_path / "join.toml"
    made = flowyard_cli(yard, "worker", "join-file", "--name", "joined", "--out", str(join))
    assert made.returncode == 0, made.stderr
    assert "joined:" in join.read_text()
    assert yard.secrets.prefect_auth_string.get_secret_value() not in join.read_text()
    # Its own S3 keys (role worker), not the flows' shared ones: the run below fetches its
    # code and writes its result with them.
    joined = tomllib.loads(join.read_text())
    keys = (joined["s3_access_key"], joined["s3_secret_key"])
    assert keys[0] != yard.secrets.get("s3_flows_access_key")
    assert keys[1] not in (
        yard.secrets.get("s3_flows_secret_key"),
        yard.secrets.get("s3_secret_key"),
    )
    home = tmp_path / "worker-home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "flowyard"), "worker", "join", "--join-file", str(join), "--name", "joined"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The operator runs the deployment; the joined worker executes it.
        with proxy(yard, logins["operator"]) as op:
            dep = op.get("/deployments/name/hello/hello").json()
            r = op.post(f"/deployments/{dep['id']}/create_flow_run", json={})
            assert r.status_code == 201, r.text
            run_id = r.json()["id"]
            assert op.delete(f"/deployments/{dep['id']}").status_code == 403
        run = wait_state(yard, run_id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=240)
        assert run["state_type"] == "COMPLETED", log.read_text()[-3000:]
        workers = api(yard, "POST", "/work_pools/default/workers/filter", json={})
        assert "joined" in [w["name"] for w in workers]
        # The worker role is what a worker and its runs need: nothing they sent was refused
        # (the gate records every refusal; its writer flushes within a second).
        time.sleep(2)
        refused = json.loads(cli_ok(flowyard_cli(yard, "audit", "--json", "--user", "joined")))
        assert [r for r in refused if r["status"] in (401, 403)] == [], refused
        # Its own login may not delete a deployment: refused by the gate.
        login = tomllib.loads(join.read_text())["auth_string"]
        with proxy(yard, login) as w:
            r = w.delete(f"/deployments/{dep['id']}")
            assert r.status_code == 403 and r.headers[REFUSED_HEADER] == "role", r.text
        assert api(yard, "GET", f"/deployments/{dep['id']}")["id"] == dep["id"]
        # Revoked with `worker remove`: refused within 5 s.
        removed = flowyard_cli(yard, "worker", "remove", "joined")
        assert removed.returncode == 0, removed.stderr
        t0 = time.monotonic()
        with proxy(yard, login) as w:
            while w.post("/flow_runs/filter", json={}).status_code != 401:
                assert time.monotonic() - t0 < 5, "removed worker still allowed after 5 s"
                time.sleep(0.2)
        # And its S3 keys (the command returns once weed refuses them).
        assert s3_refused(s3(yard, keys), yard.config.object_store.code_bucket)
    finally:
        stop_joined_worker(worker)


def _events_socket(ctx: Context, login: str) -> Any:
    url = ctx.config.proxy.url.replace("https://", "wss://") + "/api/events/out"
    ssl_ctx = ssl.create_default_context(cafile=str(ctx.paths.ca_cert))
    # As Prefect's events subscriber does: no Authorization on the upgrade, the login in-band.
    sock = ws_connect(url, ssl=ssl_ctx, subprotocols=["prefect"], open_timeout=10)  # type: ignore[list-item]
    sock.send(json.dumps({"type": "auth", "token": login}))
    answer = json.loads(sock.recv(timeout=10))
    assert answer == {"type": "auth_success"}, answer
    sock.send(json.dumps({"type": "filter", "filter": {}}))
    return sock


def test_websocket_logins_and_revocation(yard: Context) -> None:
    login = add_login(yard, "leaving", "viewer")
    sock = _events_socket(yard, login)
    with proxy(yard, login) as client:
        assert client.post("/flow_runs/filter", json={}).status_code == 200
        removed = flowyard_cli(yard, "user", "remove", "leaving")
        assert removed.returncode == 0, removed.stderr
        t0 = time.monotonic()
        # The open socket is closed by the API within 5 s.
        with pytest.raises(ConnectionClosed):
            while True:
                sock.recv(timeout=max(0.1, 5 - (time.monotonic() - t0)))
        assert time.monotonic() - t0 < 5
        # And HTTP is refused (the gate re-reads users.toml on its next request).
        assert client.post("/flow_runs/filter", json={}).status_code == 401
    # A login whose role may not use a socket is refused in-band (viewers cannot emit).
    viewer = add_login(yard, "watcher", "viewer")
    url = yard.config.proxy.url.replace("https://", "wss://") + "/api/events/in"
    ssl_ctx = ssl.create_default_context(cafile=str(yard.paths.ca_cert))
    with ws_connect(url, ssl=ssl_ctx, subprotocols=["prefect"]) as sock2:  # type: ignore[list-item]
        sock2.send(json.dumps({"type": "auth", "token": viewer}))
        with pytest.raises(ConnectionClosed) as closed:
            sock2.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with pytest.raises(ConnectionClosed):
        _events_socket(yard, "watcher:wrong")


def test_mutations_and_refusals_are_in_the_audit_log(yard: Context, logins: dict[str, str]) -> None:
    with proxy(yard, logins["viewer"]) as v:
        assert v.post("/variables/", json={"name": "nope", "value": 1}).status_code == 403
    with proxy(yard, logins["admin"]) as a:
        made = a.post("/variables/", json={"name": "audited", "value": 1})
        assert made.status_code == 201, made.text
        var_id = made.json()["id"]
        assert a.delete(f"/variables/{var_id}").status_code == 204
    deadline = time.monotonic() + 10
    while True:
        out = flowyard_cli(yard, "audit", "--json", "--since", "10m")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        seen = {(r["username"], r["method"], r["route"], r["object_id"], r["status"]) for r in rows}
        wanted = {
            ("viewer-1", "POST", "/variables/", None, 403),
            ("admin", "POST", "/variables/", None, 201),
            ("admin", "DELETE", "/variables/{id}", var_id, 204),
            ("operator-1", "POST", "/deployments/{id}/create_flow_run", None, 201),
        }
        missing = {w for w in wanted if not any(_matches(w, s) for s in seen)}
        if not missing:
            break
        assert time.monotonic() < deadline, (missing, sorted(seen)[-20:])
        time.sleep(0.5)
    only = json.loads(flowyard_cli(yard, "audit", "--json", "--user", "viewer-1").stdout)
    assert only and {r["username"] for r in only} == {"viewer-1"}


def _matches(wanted: tuple[Any, ...], seen: tuple[Any, ...]) -> bool:
    # None in `wanted` is "any object id".
    return all(w is None or w == s for w, s in zip(wanted, seen, strict=True))


def s3(ctx: Context, keys: tuple[str, str]) -> Any:
    """An S3 client through the proxy's S3 port, as a person's or a worker's machine has."""
    return boto3.client(
        "s3",
        endpoint_url=ctx.config.proxy.s3_url,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
        region_name=ctx.config.object_store.region,
        verify=str(ctx.paths.ca_cert),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def s3_refused(client: Any, bucket: str) -> bool:
    try:
        client.list_objects_v2(Bucket=bucket)
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied")
    return False


def add_person(ctx: Context, name: str, role: str) -> dict[str, str]:
    made = flowyard_cli(ctx, "user", "add", name, "--role", role, "--json")
    assert made.returncode == 0, made.stderr
    out: dict[str, str] = json.loads(made.stdout)
    assert out["mlflow_username"] == name and out["s3_access_key_id"]
    return out


def test_s3_keys_by_role_and_revocation(yard: Context) -> None:
    results = yard.config.object_store.results_bucket
    viewer = add_person(yard, "s3-viewer", "viewer")
    admin = add_person(yard, "s3-admin", "admin")
    listed = flowyard_cli(yard, "user", "list", "--json")
    rows = {r["name"]: r for r in json.loads(cli_ok(listed))}
    assert rows["s3-viewer"]["identities"] == ["prefect", "s3", "mlflow"]
    # The keys are in weed's identity file (owner-only), under the user's own identity.
    config = json.loads(Path(seaweedfs.s3_config_path(yard)).read_text())
    assert "user-s3-viewer" in {i["name"] for i in config["identities"]}
    as_admin = s3(yard, (admin["s3_access_key_id"], admin["s3_secret_access_key"]))
    as_viewer = s3(yard, (viewer["s3_access_key_id"], viewer["s3_secret_access_key"]))
    as_admin.put_object(Bucket=results, Key="identities/shared.txt", Body=b"by the admin")
    # A viewer lists and reads, and is refused a write.
    keys = [o["Key"] for o in as_viewer.list_objects_v2(Bucket=results)["Contents"]]
    assert "identities/shared.txt" in keys
    body = as_viewer.get_object(Bucket=results, Key="identities/shared.txt")["Body"].read()
    assert body == b"by the admin"
    with pytest.raises(ClientError) as refused:
        as_viewer.put_object(Bucket=results, Key="identities/nope.txt", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # Revoked: refused within 5 s of `user remove`, while other clients keep working
    # (weed re-reads its identities on SIGHUP, no restart).
    removed = flowyard_cli(yard, "user", "remove", "s3-viewer")
    assert removed.returncode == 0, removed.stderr
    t0 = time.monotonic()
    while not s3_refused(as_viewer, results):
        assert time.monotonic() - t0 < 5, "removed user's S3 keys still work after 5 s"
        time.sleep(0.1)
    assert as_admin.get_object(Bucket=results, Key="identities/shared.txt")["Body"].read()
    assert cli_ok(flowyard_cli(yard, "user", "remove", "s3-admin"))
    assert s3_refused(as_admin, results)


def mlflow_api(ctx: Context, login: tuple[str, str]) -> httpx.Client:
    return httpx.Client(
        base_url=f"{ctx.config.proxy.url}/mlflow/api/2.0/mlflow",
        auth=login,
        verify=tls_verify(ctx),
        timeout=60,
    )


def test_mlflow_logins_by_role_and_revocation(yard: Context, tmp_path: Path) -> None:
    platform_admin = ("admin", yard.secrets.get("mlflow_admin_password"))
    with mlflow_api(yard, platform_admin) as root:
        made = root.post("/experiments/create", json={"name": f"team-{uuid.uuid4().hex[:8]}"})
        assert made.status_code == 200, made.text
        experiment = made.json()["experiment_id"]
    viewer = add_person(yard, "ml-viewer", "viewer")
    operator = add_person(yard, "ml-operator", "operator")
    admin = add_person(yard, "ml-admin", "admin")
    run = {"experiment_id": experiment, "start_time": int(time.time() * 1000)}
    with mlflow_api(yard, (viewer["mlflow_username"], viewer["mlflow_password"])) as v:
        got = v.get("/experiments/get", params={"experiment_id": experiment})
        assert got.status_code == 200, got.text
        assert v.post("/runs/create", json=run).status_code == 403
    with mlflow_api(yard, (operator["mlflow_username"], operator["mlflow_password"])) as o:
        created = o.post("/runs/create", json=run)
        assert created.status_code == 200, created.text
        run_id = created.json()["run"]["info"]["run_id"]
        metric = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 0, "step": 0}
        assert o.post("/runs/log-metric", json=metric).status_code == 200
        # An operator is no MLflow admin: it cannot make logins.
        assert o.post("/users/create", json={"username": "x", "password": "y"}).status_code == 403
    with mlflow_api(yard, (admin["mlflow_username"], admin["mlflow_password"])) as a:
        assert a.get("/users/get", params={"username": "ml-viewer"}).status_code == 200
    # EDIT is a grant on every experiment, those made after the login included.
    with mlflow_api(yard, platform_admin) as root:
        later = root.post("/experiments/create", json={"name": f"later-{uuid.uuid4().hex[:8]}"})
        assert later.status_code == 200, later.text
    later_run = {"experiment_id": later.json()["experiment_id"], "start_time": 0}
    with mlflow_api(yard, (operator["mlflow_username"], operator["mlflow_password"])) as o:
        assert o.post("/runs/create", json=later_run).status_code == 200
    # A joined worker has its own MLflow login, EDIT like an operator's.
    join = tmp_path / "w.toml"
    cli_ok(flowyard_cli(yard, "worker", "join-file", "--name", "ml-worker", "--out", str(join)))
    joined = tomllib.loads(join.read_text())
    worker = (joined["mlflow_user"], joined["mlflow_password"])
    assert worker[0] == "ml-worker"
    with mlflow_api(yard, worker) as w:
        assert w.post("/runs/create", json=later_run).status_code == 200
        assert w.post("/users/create", json={"username": "x", "password": "y"}).status_code == 403
    cli_ok(flowyard_cli(yard, "worker", "remove", "ml-worker"))
    with mlflow_api(yard, worker) as w:
        assert w.post("/runs/create", json=later_run).status_code == 401
    # Removed while MLflow is off (a config without it): the login outlives the removal in
    # MLflow's store, and MLflow's next start (its bootstrap) deletes it.
    gone = add_person(yard, "ml-later", "viewer")
    without_mlflow = yard.config.model_copy(
        update={"mlflow": yard.config.mlflow.model_copy(update={"enabled": False})}
    )
    identities.remove(Context(config=without_mlflow, secrets=yard.secrets), "ml-later")
    kept = (gone["mlflow_username"], gone["mlflow_password"])
    with mlflow_api(yard, kept) as k:
        assert k.get("/experiments/get", params={"experiment_id": experiment}).status_code == 200
    assert "ml-later" in mlflow_service.bootstrap(yard)[-1]
    with mlflow_api(yard, kept) as k:
        assert k.get("/experiments/get", params={"experiment_id": experiment}).status_code == 401
    assert not yard.paths.mlflow_revoked.exists()
    # Revoked: the MLflow login is refused at once.
    for name in ("ml-viewer", "ml-operator", "ml-admin"):
        cli_ok(flowyard_cli(yard, "user", "remove", name))
    t0 = time.monotonic()
    with mlflow_api(yard, (viewer["mlflow_username"], viewer["mlflow_password"])) as v:
        while v.get("/experiments/get", params={"experiment_id": experiment}).status_code != 401:
            assert time.monotonic() - t0 < 5, "removed user's MLflow login works after 5 s"
            time.sleep(0.2)
    with mlflow_api(yard, platform_admin) as root:
        assert root.get("/users/get", params={"username": "ml-operator"}).status_code == 404


def test_a_failed_join_file_leaves_no_identity(yard: Context, tmp_path: Path) -> None:
    """The join file cannot be written: the worker's login and S3 keys are rolled back."""
    before = yard.paths.users_file.read_bytes()
    out = tmp_path / "missing" / "j.toml"
    failed = flowyard_cli(yard, "worker", "join-file", "--name", "half", "--out", str(out))
    assert failed.returncode == 1 and "j.toml" in failed.stderr, failed.stderr
    assert yard.paths.users_file.read_bytes() == before
    config = json.loads(Path(seaweedfs.s3_config_path(yard)).read_text())
    assert "user-half" not in {i["name"] for i in config["identities"]}


def _runs_of(ctx: Context, deployment_id: str) -> int:
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    return int(api(ctx, "POST", "/flow_runs/count", json=body))


def _quick_run(page: Page, origin: str, deployment_id: str) -> Response:
    """The deployment page's Run → Quick run, as a person clicks it; the API's answer."""
    page.goto(f"{origin}/deployments/deployment/{deployment_id}")
    page.locator(".run-menu__run-button").click(timeout=browser.TIMEOUT_MS)
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run"),
        timeout=browser.TIMEOUT_MS,
    ) as answer:
        page.get_by_text("Quick run", exact=True).click(timeout=browser.TIMEOUT_MS)
    return answer.value


def test_ui_viewer_sees_runs_and_cannot_trigger_one_operator_can(
    yard: Context, logins: dict[str, str], tmp_path: Path
) -> None:
    """Prefect's own UI in a real headless Chromium, through Caddy (TLS pinned to the key the
    platform CA certifies) and the gate, logged in through the UI's login box."""
    deployed = flowyard_cli(yard, "deploy", str(EXTRA), "--json")
    assert deployed.returncode == 0, deployed.stderr
    dep = api(yard, "GET", "/deployments/name/hello/hello")
    seen = f"ui-seen-{uuid.uuid4().hex[:8]}"
    api(yard, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"name": seen})
    origin = yard.config.proxy.url
    with browser.chromium(yard) as chromium:
        for role in ("viewer", "operator"):
            page = chromium.new_context().new_page()
            page.set_default_timeout(browser.TIMEOUT_MS)
            try:
                browser.log_in(page, origin, logins[role])
                # The runs page lists the run the admin made (read through the gate).
                page.goto(f"{origin}/runs")
                page.get_by_text(seen).first.wait_for(timeout=browser.TIMEOUT_MS)
                before = _runs_of(yard, dep["id"])
                answer = _quick_run(page, origin, dep["id"])
                if role == "viewer":
                    assert answer.status == 403, answer.text()
                    assert answer.headers.get(REFUSED_HEADER.lower()) == "role"
                    # The UI shows the gate's reason (Prefect's toast shows a refusal's detail).
                    page.get_by_text("may not call").first.wait_for()
                    time.sleep(2)  # anything that slipped through would have landed by now
                    assert _runs_of(yard, dep["id"]) == before
                else:
                    assert answer.status == 201, answer.text()
                    assert _runs_of(yard, dep["id"]) == before + 1
                    assert api(yard, "GET", f"/flow_runs/{answer.json()['id']}")
            except BaseException:
                print(f"screenshot: {browser.screenshot(page, tmp_path, role)}")
                raise
            finally:
                page.context.close()
