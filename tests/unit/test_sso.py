"""SSO without a platform (docs/access.md, "SSO"): `[access.sso]` validation, groups to role,
SSO sessions in the users file (expiry, logout), and the Caddyfile's /auth/ route. The login
flow itself runs against a real provider in tests/integration/test_sso.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flowyard.access.logins import Logins
from flowyard.access.sso import identity_of, role_for
from flowyard.compose.render import write_files
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.config.users import (
    add_session,
    add_user,
    ensure_users_file,
    load_users,
    remove_session,
    session_name,
)
from flowyard.errors import FlowyardError
from flowyard.services.caddyfile import Upstreams, render_caddyfile, routes

ADMIN = "admin:the-old-shared-key"
GOOD = """
[access.sso]
enabled = true
issuer = "https://login.example.com/realms/ml"
client_id = "flowyard"
roles = { "ml-admins" = "admin", "ml-team" = "operator" }
"""


def _load(tmp_path: Path, text: str) -> object:
    (tmp_path / "flowyard.toml").write_text(text)
    return load_config(tmp_path)


def test_a_good_sso_section_loads(tmp_path: Path) -> None:
    config = load_config(tmp_path, require_file=False)
    assert config.access.sso.enabled is False  # off unless configured
    sso = _load(tmp_path, GOOD).access.sso  # type: ignore[attr-defined]
    assert sso.roles == {"ml-admins": "admin", "ml-team": "operator"}
    assert sso.groups_claim == "groups" and "openid" in sso.scopes


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # An unknown role names the group and the role.
        ('"ml-team" = "operator"', ["ml-team", "superuser", "viewer, operator, admin"]),
        # Workers' role is for machines, never for a browser login.
        ('"ml-team" = "operator"', ["ml-team", "worker"]),
    ],
)
def test_a_bad_role_in_the_mapping_is_refused_by_name(
    tmp_path: Path, change: str, named: list[str]
) -> None:
    bad = GOOD.replace(change, f'"ml-team" = "{named[1]}"')
    with pytest.raises(FlowyardError) as err:
        _load(tmp_path, bad)
    for word in named:
        assert word in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ('"https://login.example.com/realms/ml"', '"http://login.example.com"', "https://"),
        ('"https://login.example.com/realms/ml"', '"ftp://login.example.com"', "https://"),
        ('client_id = "flowyard"', "", "access.sso.client_id"),
        ('roles = { "ml-admins" = "admin", "ml-team" = "operator" }', "", "access.sso.roles"),
        ("enabled = true", 'enabled = true\nscopes = ["email"]', "openid"),
    ],
)
def test_incomplete_or_unsafe_sso_settings_are_refused(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    with pytest.raises(FlowyardError, match="Invalid configuration") as err:
        _load(tmp_path, GOOD.replace(old, new))
    assert named in str(err.value)


def test_http_is_accepted_for_a_loopback_issuer_only(tmp_path: Path) -> None:
    text = GOOD.replace("https://login.example.com/realms/ml", "http://127.0.0.1:9400/")
    sso = _load(tmp_path, text).access.sso  # type: ignore[attr-defined]
    assert sso.issuer == "http://127.0.0.1:9400"


def test_groups_give_the_highest_mapped_role_or_none() -> None:
    roles = {"ml-admins": "admin", "ml-team": "operator", "readers": "viewer"}
    assert role_for(["readers", "ml-team"], roles) == "operator"
    assert role_for(["ml-team", "ml-admins"], roles) == "admin"
    assert role_for("readers", roles) == "viewer"  # some providers send one group as a string
    assert role_for(["marketing"], roles) is None
    assert role_for(None, roles) is None
    assert role_for({"ml-admins": True}, roles) is None


def test_the_session_is_named_by_a_verified_email_or_the_subject() -> None:
    assert identity_of({"sub": "u1", "email": "a@example.com"}) == "a@example.com"
    assert identity_of({"sub": "u1", "email": "a@example.com", "email_verified": True}) == (
        "a@example.com"
    )
    assert identity_of({"sub": "u1", "email": "a@example.com", "email_verified": False}) == "u1"
    assert identity_of({"sub": "u1"}) == "u1"


def test_sso_sessions_work_expire_and_end(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    ensure_users_file(path, ADMIN)
    logins = Logins(path)
    name = session_name("Alice.Smith@Example.com")
    assert name.startswith("sso.alice.smith-example.com.")
    login = add_session(path, name, "operator", datetime.now(UTC) + timedelta(hours=1))
    user = logins.check(login)
    assert user is not None and user.role == "operator" and user.expires
    assert logins.check(login, verify=False) == user  # cached
    # An expired one is refused, cached or not, and dropped at the next session's write.
    old = session_name("bob@example.com")
    ends = datetime.now(UTC) + timedelta(seconds=3)
    stale = add_session(path, old, "viewer", ends)
    stale_user = logins.check(stale)
    assert stale_user is not None and logins.check(stale, verify=False) == stale_user
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.1)
    assert logins.check(stale, verify=False) is None and logins.check(stale) is None
    assert not logins.current(stale_user)
    add_session(path, session_name("carol@example.com"), "viewer", datetime.now(UTC))
    assert old not in load_users(path)
    # Logout removes SSO sessions only, never a person's own login.
    worker = add_user(path, ADMIN, "dana", "operator")
    assert remove_session(path, "dana") is False and logins.check(worker) is not None
    assert remove_session(path, name) is True
    assert logins.check(login) is None and not logins.current(user)


def test_person_logins_cannot_take_the_sso_prefix(tmp_path: Path) -> None:
    with pytest.raises(FlowyardError, match="sso"):
        add_user(tmp_path / "users.toml", ADMIN, "sso.mallory.abc123", "admin")


def test_caddyfile_serves_the_sso_pages_from_the_gate_without_forward_auth(
    tmp_path: Path,
) -> None:
    ctx = Context(config=load_config(tmp_path, require_file=False), secrets=Secrets.generate())
    assert "handle /auth/*" not in routes(render_caddyfile(ctx.config, Upstreams.from_context(ctx)))
    config = _load(tmp_path, GOOD)
    ctx = Context(config=config, secrets=Secrets.generate())  # type: ignore[arg-type]
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    block = text[text.index("\thandle /auth/* {") :]
    block = block[: block.index("\n\t}")]
    assert f"reverse_proxy unix/{ctx.paths.socket('gate')}" in block
    assert "forward_auth" not in block
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    caddy = str(Path(sys.executable).parent / "caddy")
    adapted = subprocess.run(
        [caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "/auth/*" in json.dumps(json.loads(adapted.stdout))


def test_compose_files_are_refused_with_sso_on(tmp_path: Path) -> None:
    """SSO sessions live in the native users.toml; the compose stack's copy is fixed until
    it is recreated: rendering compose with SSO on is refused with the fix, writing nothing."""
    config = _load(tmp_path, GOOD)
    out = tmp_path / "out"
    with pytest.raises(FlowyardError) as err:
        write_files(config, out)  # type: ignore[arg-type]
    assert "access.sso.enabled" in err.value.message and "enabled = false" in (err.value.fix or "")
    assert not out.exists()
