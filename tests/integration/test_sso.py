"""SSO on the real platform (docs/access.md, "SSO"): OpenID Connect's authorization code flow
with PKCE through Caddy and the access gate, against a real provider process
(oidc-provider-mock, a Flask app run by its own CLI on a free loopback port).

The test plays the browser: it follows the redirects by hand (the provider's authorize form is
posted with the subject to log in as), keeps the gate's state cookie, and reads the login the
callback page hands to Prefect's UI. One platform for the module, with `[access.sso]` enabled
and a client secret (so the confidential-client path is the one exercised).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from flowyard.access.gate import REFUSED_HEADER
from flowyard.access.sso import UI_STORAGE_KEY
from flowyard.client.api import auth_header
from flowyard.config.context import Context
from flowyard.config.paths import Paths
from flowyard.files import write_private
from flowyard.services.caddy import tls_verify
from flowyard.testing import running_platform
from tests.integration.conftest import flowyard_cli

pytestmark = pytest.mark.integration

CLIENT_ID = "flowyard-test"
USERS = {
    "alice": {"email": "alice@example.com", "groups": ["ml-team", "unrelated"]},
    "bob": {"email": "bob@example.com", "groups": ["marketing"]},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the OIDC provider did not start"
            time.sleep(0.2)
        for sub, claims in USERS.items():
            put = httpx.put(f"{issuer}/users/{quote(sub)}", json=claims)
            assert put.status_code == 204, put.text
        yield issuer
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def yard(homes: Callable[[str], Path], provider: str) -> Iterator[Context]:
    home = homes("sso")
    home.mkdir(parents=True, exist_ok=True)
    # As `flowyard user sso-secret` stores it (the mock provider accepts any secret).
    write_private(Paths(home).sso_client_secret, "a-client-secret\n")
    sso = {
        "enabled": True,
        "issuer": provider,
        "client_id": CLIENT_ID,
        "roles": {"ml-team": "operator", "ml-admins": "admin"},
        "session_hours": 1,
    }
    with running_platform(
        home, worker={"enabled": False}, mlflow={"enabled": False}, access={"sso": sso}
    ) as ctx:
        yield ctx


def browser(ctx: Context) -> httpx.Client:
    return httpx.Client(verify=tls_verify(ctx), timeout=30)


def start_login(ctx: Context, client: httpx.Client) -> str:
    """/auth/login: the gate's redirect to the provider's authorize endpoint."""
    r = client.get(f"{ctx.config.proxy.url}/auth/login")
    assert r.status_code == 302, r.text
    assert "flowyard_sso_state" in client.cookies
    return r.headers["location"]


def authorize(authorize_url: str, sub: str) -> str:
    """The provider's form, submitted as `sub`; returns the callback URL it redirects to."""
    r = httpx.post(authorize_url, data={"sub": sub})
    assert r.status_code == 302, r.text
    return r.headers["location"]


def sso_login(ctx: Context, sub: str) -> tuple[httpx.Response, str]:
    with browser(ctx) as client:
        callback = authorize(start_login(ctx, client), sub)
        page = client.get(callback)
    found = re.search(
        r"localStorage\.setItem\(" + re.escape(json.dumps(UI_STORAGE_KEY)) + r', "([^"]+)"\)',
        page.text,
    )
    return page, base64.b64decode(found.group(1)).decode() if found else ""


def api(ctx: Context, login: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{ctx.config.proxy.url}/api",
        headers=auth_header(login),
        verify=tls_verify(ctx),
        timeout=60,
    )


def test_the_authorization_request_uses_pkce_state_and_nonce(yard: Context, provider: str) -> None:
    with browser(yard) as client:
        url = start_login(yard, client)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert url.startswith(f"{provider}/oauth2/authorize?")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) >= 43
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["redirect_uri"] == f"{yard.config.proxy.url}/auth/callback"
    assert query["state"] and query["nonce"] and "openid" in query["scope"].split()


def test_a_login_in_a_mapped_group_gets_its_role_everywhere(yard: Context) -> None:
    page, login = sso_login(yard, "alice")
    assert page.status_code == 200, page.text
    assert login.startswith("sso.alice-example.com."), login
    assert "(operator)" in page.text
    admin = yard.secrets.prefect_auth_string.get_secret_value()
    with api(yard, admin) as a:
        flow = a.post("/flows/", json={"name": "sso-flow"}).json()
        made = a.post("/deployments/", json={"name": "sso-dep", "flow_id": flow["id"]})
        assert made.status_code in (200, 201), made.text
        deployment = made.json()["id"]
    # Listed with its expiry.
    listed = flowyard_cli(yard, "user", "list", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows[login.split(":")[0]]["role"] == "operator" and rows[login.split(":")[0]]["expires"]

    with api(yard, login) as op:
        run = op.post(f"/deployments/{deployment}/create_flow_run", json={})
        assert run.status_code == 201, run.text
        refused = op.delete(f"/deployments/{deployment}")
        assert refused.status_code == 403 and refused.headers.get(REFUSED_HEADER) == "role"

        # The same login on a websocket (in-band, checked by the API process).
        url = yard.config.proxy.url.replace("https://", "wss://") + "/api/events/out"
        ssl_ctx = ssl.create_default_context(cafile=str(yard.paths.ca_cert))
        sock = ws_connect(url, ssl=ssl_ctx, subprotocols=["prefect"], open_timeout=10)  # type: ignore[list-item]
        sock.send(json.dumps({"type": "auth", "token": login}))
        assert json.loads(sock.recv(timeout=10)) == {"type": "auth_success"}
        sock.send(json.dumps({"type": "filter", "filter": {}}))

        # Logout (what /auth/logout's page sends): the socket closes within 5 s, HTTP is refused.
        with browser(yard) as client:
            page_out = client.get(f"{yard.config.proxy.url}/auth/logout")
            assert page_out.status_code == 200 and UI_STORAGE_KEY in page_out.text
            t0 = time.monotonic()
            out = client.post(f"{yard.config.proxy.url}/auth/logout", headers=auth_header(login))
            assert out.status_code == 204, out.text
        with pytest.raises(ConnectionClosed):
            while True:
                sock.recv(timeout=max(0.1, 5 - (time.monotonic() - t0)))
        assert time.monotonic() - t0 < 5
        assert op.post("/flow_runs/filter", json={}).status_code == 401
    users = tomllib.loads(yard.paths.users_file.read_text())["users"]
    assert login.split(":")[0] not in users


def test_a_login_in_no_mapped_group_is_refused(yard: Context) -> None:
    page, login = sso_login(yard, "bob")
    assert page.status_code == 403, page.text
    assert login == "" and "no group" in page.text
    users = tomllib.loads(yard.paths.users_file.read_text())["users"]
    assert not [n for n in users if n.startswith("sso.bob")]


def test_a_tampered_or_replayed_state_is_refused(yard: Context) -> None:
    with browser(yard) as client:
        callback = authorize(start_login(yard, client), "alice")
        tampered = re.sub(r"state=[^&]+", "state=forged", callback)
        assert tampered != callback
        r = client.get(tampered)
        assert r.status_code == 400 and "state" in r.text
        # The real one from another browser (no state cookie) is refused too ...
        with browser(yard) as other:
            assert other.get(callback).status_code == 400
    # ... and it was used up by then: one state, one try.
    with browser(yard) as client:
        assert client.get(callback).status_code == 400


def test_sso_logins_and_refusals_are_audited(yard: Context) -> None:
    deadline = time.monotonic() + 30
    while True:
        shown = flowyard_cli(yard, "audit", "--json")
        assert shown.returncode == 0, shown.stderr
        rows = [r for r in json.loads(shown.stdout) if r["route"] == "/auth/callback"]
        ok = [r for r in rows if r["status"] == 200 and r["username"].startswith("sso.alice")]
        refused = [r for r in rows if r["status"] == 403 and r["username"] == "sso:bob@example.com"]
        if ok and refused:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(1)
