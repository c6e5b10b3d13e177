"""Team access without a platform: the role matrix against Prefect's own OpenAPI, the users
file, the login cache, the gate's decisions and the Prefect shim (docs/access.md)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flowyard.access import audit, matrix
from flowyard.access import logins as logins_module
from flowyard.access.gate import REFUSED_HEADER, USER_HEADER, Gate
from flowyard.access.logins import Logins
from flowyard.config.secrets import PLATFORM_WORKER
from flowyard.config.users import (
    ROLES,
    add_user,
    ensure_platform_worker,
    ensure_users_file,
    load_users,
    remove_user,
    verify_key,
)
from flowyard.errors import FlowyardError

ADMIN = "admin:the-old-shared-key"


@pytest.fixture(scope="module")
def openapi_routes() -> set[str]:
    from prefect.server.api.server import create_app

    spec = create_app(ephemeral=True).openapi()
    return {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}


def test_every_openapi_route_has_a_decision_for_every_role(openapi_routes: set[str]) -> None:
    # Exactly Prefect's routes: a new one (a Prefect upgrade) must be decided here first.
    assert set(matrix.ROUTES) == openapi_routes
    for route, klass in matrix.ROUTES.items():
        assert klass in matrix.CLASSES, route
        decisions = {role: matrix.Decision(route, klass).allows(role) for role in ROLES}
        assert set(decisions) == set(ROLES)
        assert decisions["admin"], route  # admin = everything
    assert set().union(*matrix.CLASSES.values()) == {*ROLES, "anonymous"}


def _sample(template: str) -> str:
    return re.sub(r"\{[^/]+\}", "x1", template)


def test_each_route_matches_its_own_template(openapi_routes: set[str]) -> None:
    """No parameter shadows a fixed path (`/deployments/{id}` must not take `/filter`)."""
    for route in openapi_routes:
        method, template = route.split(" ", 1)
        assert matrix.decide(method, _sample(template)).route == route
    assert matrix.decide("DELETE", "/not/a/route").klass == "admin"


def test_roles_follow_the_issue() -> None:
    for route, klass in matrix.ROUTES.items():
        method = route.split(" ", 1)[0]
        viewer = matrix.Decision(route, klass).allows("viewer")
        # viewer: GETs and read-only POSTs only (and never block secrets).
        if viewer:
            assert method == "GET" or klass == "read", route
        if method == "GET" and klass not in ("admin", "public"):
            assert viewer, route
    allowed = {r for r, k in matrix.ROUTES.items() if "operator" in matrix.CLASSES[k]}
    for must in (
        "POST /deployments/{id}/create_flow_run",
        "POST /flow_runs/{id}/set_state",
        "POST /flow_runs/{id}/resume",
        "POST /deployments/{id}/pause_deployment",
        "PATCH /deployments/{id}/schedules/{schedule_id}",
    ):
        assert must in allowed
    assert "DELETE /deployments/{id}" not in allowed
    worker = {r for r, k in matrix.ROUTES.items() if "worker" in matrix.CLASSES[k]}
    assert "POST /work_pools/{name}/get_scheduled_flow_runs" in worker
    assert "DELETE /deployments/{id}" not in worker
    assert "POST /deployments/" not in worker
    assert matrix.decide("GET", "/block_documents/x1", "include_secrets=true").klass == "secret"
    assert matrix.websocket_class("/work_pools/p/workers/connect") == "work"
    assert matrix.websocket_class("/events/out") == "read"


def test_users_file_migration_add_remove(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    users = ensure_users_file(path, ADMIN)
    assert list(users) == ["admin"] and users["admin"].role == "admin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    login = add_user(path, ADMIN, "vera", "viewer")
    name, key = login.split(":", 1)
    text = path.read_text()
    # Hashes only: neither key is in the file.
    assert name == "vera" and key not in text and "the-old-shared-key" not in text
    assert "$argon2id$" in text
    with pytest.raises(FlowyardError):
        add_user(path, ADMIN, "vera", "viewer")
    with pytest.raises(FlowyardError):
        add_user(path, ADMIN, "Bad:Name", "viewer")
    remove_user(path, ADMIN, "vera")
    assert set(load_users(path)) == {"admin"}
    # The platform's own login (its worker and commands use it) is never removed.
    with pytest.raises(FlowyardError, match="platform's own login"):
        remove_user(path, ADMIN, "admin")
    assert set(load_users(path)) == {"admin"}
    path.chmod(0o644)
    with pytest.raises(FlowyardError, match="readable by others"):
        load_users(path)


def test_platform_workers_login_is_kept_with_its_key_and_role(tmp_path: Path) -> None:
    """`up` (the gate's prepare) keeps secrets.toml's worker login in users.toml: made when
    missing, re-made when re-keyed or given another role, never removable, name reserved."""
    path = tmp_path / "users.toml"
    worker = f"{PLATFORM_WORKER}:its-key"
    ensure_platform_worker(path, ADMIN, worker)
    users = load_users(path)
    assert set(users) == {"admin", PLATFORM_WORKER} and users[PLATFORM_WORKER].role == "worker"
    assert verify_key(users[PLATFORM_WORKER], "its-key")
    stamp = path.stat().st_mtime_ns
    ensure_platform_worker(path, ADMIN, worker)
    assert path.stat().st_mtime_ns == stamp  # unchanged: not rewritten
    ensure_platform_worker(path, ADMIN, f"{PLATFORM_WORKER}:a-new-key")
    users = load_users(path)
    assert verify_key(users[PLATFORM_WORKER], "a-new-key")
    assert not verify_key(users[PLATFORM_WORKER], "its-key")
    with pytest.raises(FlowyardError, match="platform's own workers"):
        remove_user(path, ADMIN, PLATFORM_WORKER)
    with pytest.raises(FlowyardError, match="platform's own workers"):
        add_user(path, ADMIN, PLATFORM_WORKER, "admin")
    assert load_users(path)[PLATFORM_WORKER].role == "worker"


def test_concurrent_adds_keep_every_login(tmp_path: Path) -> None:
    """`user add`, `worker join-file` and `up` may write the file at once: none is lost."""
    path = tmp_path / "users.toml"
    ensure_users_file(path, ADMIN)
    names = [f"u{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: add_user(path, ADMIN, n, "viewer"), names))
    assert set(load_users(path)) == {"admin", *names}


def test_logins_cache_and_revocation(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    login = add_user(path, ADMIN, "otto", "operator")
    logins = Logins(path)
    assert logins.check(login, verify=False) is None  # not verified yet: no hit
    user = logins.check(login)
    assert user is not None and user.role == "operator"
    assert logins.check(login, verify=False) == user  # cached now
    assert logins.check("otto:wrong") is None
    assert logins.check("otto:wrong", verify=False) is None  # remembered as refused
    assert logins.check(ADMIN) is not None  # the old shared login is the first admin
    remove_user(path, ADMIN, "otto")
    assert logins.check(login, verify=False) is None
    assert logins.check(login) is None and not logins.current(user)


def _ask(gate: Gate, method: str, uri: str, login: str | None) -> tuple[int, dict[str, str]]:
    headers = {"x-forwarded-method": method, "x-forwarded-uri": uri}
    if login:
        headers["authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    path, _, query = uri.partition("?")
    return asyncio.run(gate.decide(method, path, query, headers))


def test_gate_decisions(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    viewer = add_user(path, ADMIN, "vera", "viewer")
    gate = Gate(path, "internal:secret", None)
    internal = "Basic " + base64.b64encode(b"internal:secret").decode()
    status, out = _ask(gate, "POST", "/api/deployments/filter", viewer)
    assert status == 200 and out["authorization"] == internal and out[USER_HEADER] == "vera"
    status, out = _ask(gate, "DELETE", "/api/deployments/x1", viewer)
    assert status == 403 and out[REFUSED_HEADER] == "role" and "authorization" not in out
    status, out = _ask(gate, "DELETE", "/api/deployments/x1", ADMIN)
    assert status == 200
    status, out = _ask(gate, "GET", "/api/flows/x1", None)
    assert status == 401 and out[REFUSED_HEADER] == "login"
    status, out = _ask(gate, "GET", "/api/flows/x1", "internal:secret")
    assert status == 401  # the internal credential is no login
    assert _ask(gate, "GET", "/api/health", None)[0] == 200
    # Websocket upgrades are checked in-band by the API; nothing is added here.
    status, out = _ask(gate, "GET", "/api/events/out", None)
    assert status == 200 and "authorization" not in out
    assert _ask(gate, "GET", "/files/report.csv", viewer)[0] == 200
    assert _ask(gate, "PUT", "/files/report.csv", viewer)[0] == 403
    assert _ask(gate, "GET", "/api/block_documents/x1?include_secrets=true", viewer)[0] == 403


def _asgi(gate: Gate, kind: str, path: str, login: str) -> list[dict[str, Any]]:
    """The messages the gate sends for one request to `path` (forward_auth's headers)."""
    auth = "Basic " + base64.b64encode(login.encode()).decode()
    headers = [
        (b"x-forwarded-method", b"GET"),
        (b"x-forwarded-uri", b"/api/flows/x1"),
        (b"authorization", auth.encode()),
    ]
    scope = {"type": kind, "path": path, "headers": headers, "method": "GET"}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(gate(scope, receive, send))  # type: ignore[arg-type]
    return sent


def test_the_gate_answers_forward_auth_only_at_check(tmp_path: Path) -> None:
    """An allow carries the internal credential for Caddy to send upstream: a request that
    reaches the gate any other way (Caddy proxies SSO's /auth/* to it; a websocket to any
    path) is not found, and never gets the credential back."""
    path = tmp_path / "users.toml"
    viewer = add_user(path, ADMIN, "vera", "viewer")
    gate = Gate(path, "internal:secret", None)
    (start, _) = _asgi(gate, "http", "/check", viewer)
    allowed = dict(start["headers"])
    assert start["status"] == 200 and b"authorization" in allowed
    for kind, where in (("http", "/auth/anything"), ("websocket", "/auth/x"), ("websocket", "/")):
        (start, _) = _asgi(gate, kind, where, viewer)
        assert start["status"] == 404, (kind, where)
        assert b"authorization" not in dict(start["headers"])


def test_wrong_keys_from_one_address_are_cut_off_before_verifying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each wrong key for an existing name costs an argon2 verification: past FAILED_LIMIT
    from one address the gate answers 429 without verifying; other addresses, a cached
    login and the window's end are unaffected."""
    path = tmp_path / "users.toml"
    viewer = add_user(path, ADMIN, "vera", "viewer")
    gate = Gate(path, "internal:secret", None)
    assert _ask(gate, "GET", "/api/flows/x1", viewer)[0] == 200  # verified once, cached
    clock = [1000.0]
    monkeypatch.setattr(logins_module.time, "monotonic", lambda: clock[0])
    verified: list[str] = []
    real_verify = logins_module.verify_key

    def counting(user: object, key: str) -> bool:
        verified.append(key)
        return real_verify(user, key)  # type: ignore[arg-type]

    monkeypatch.setattr(logins_module, "verify_key", counting)

    def ask(key: str, client: str = "203.0.113.7") -> tuple[int, dict[str, str]]:
        headers = {"x-forwarded-method": "GET", "x-forwarded-uri": "/api/flows/x1"}
        headers["authorization"] = "Basic " + base64.b64encode(f"vera:{key}".encode()).decode()
        headers["x-forwarded-for"] = client
        return asyncio.run(gate.decide("GET", "/api/flows/x1", "", headers))

    for i in range(logins_module.FAILED_LIMIT):
        assert ask(f"wrong{i}")[0] == 401
    assert len(verified) == logins_module.FAILED_LIMIT
    status, out = ask("wrong-again")
    assert status == 429 and out[REFUSED_HEADER] == "login" and int(out["retry-after"]) > 0
    assert len(verified) == logins_module.FAILED_LIMIT  # refused without verifying
    assert _ask(gate, "GET", "/api/flows/x1", viewer)[0] == 200  # the cached login still works
    assert ask("wrong-elsewhere", client="198.51.100.1")[0] == 401  # another address verifies
    clock[0] += logins_module.FAILED_WINDOW_S + 1
    assert ask("wrong-later")[0] == 401  # the window moved on: verified again


def test_audit_object_id_and_skips() -> None:
    assert audit.object_id("/deployments/{id}", "/deployments/abc") == "abc"
    assert audit.object_id("/flows/", "/flows/") is None
    assert not matrix.audited(matrix.decide("POST", "/deployments/filter"))
    assert not matrix.audited(matrix.decide("POST", "/work_pools/p/get_scheduled_flow_runs"))
    assert matrix.audited(matrix.decide("DELETE", "/deployments/abc"))


def test_prefect_shim_names_exist() -> None:
    """The one private Prefect name patched (flowyard.access.prefect_private)."""
    from flowyard.access import prefect_private

    original = prefect_private.original()
    params = inspect.signature(original).parameters
    assert tuple(params) == prefect_private.PARAMETERS
    assert inspect.iscoroutinefunction(original)


def test_docs_matrix_is_current() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "access.md").read_text()
    block = text.split("<!-- access-matrix:start -->\n", 1)[1].split("<!-- access-matrix:end -->")[
        0
    ]
    assert block == matrix.markdown(), "run: python -m flowyard.access.matrix"
