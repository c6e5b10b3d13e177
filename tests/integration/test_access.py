"""Team access on the real platform (docs/access.md): every role against every route of
Prefect's OpenAPI through Caddy and the gate, a joined worker with its own `worker` login,
revocation over HTTP and an open websocket, the audit log, and Prefect's UI in a real
headless Chromium (a viewer sees runs and cannot trigger one; an operator can).

One platform for the module, the local worker off (the joined worker serves the pool), with
the `extra` test project deployed to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Response
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from flowyard.access import matrix
from flowyard.access.gate import REFUSED_HEADER
from flowyard.client.api import auth_header
from flowyard.config.context import Context
from flowyard.services.caddy import tls_verify
from flowyard.testing import running_platform
from tests.integration import browser
from tests.integration.conftest import flowyard_cli
from tests.integration.runs import api, cli_ok, wait_state

pytestmark = pytest.mark.integration

EXTRA = Path(__file__).parent / "projects" / "extra"
BIN = Path(sys.executable).parent
ROLES = ("viewer", "operator", "worker")


@pytest.fixture(scope="module")
def yard(homes: Callable[[str], Path]) -> Iterator[Context]:
    with running_platform(homes("access"), worker={"enabled": False}) as ctx:
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
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


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
