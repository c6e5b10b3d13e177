"""Per-user S3 and MLflow identities without a platform: the role -> S3 actions table, the
identity file rendered from users.toml, and nothing half-written when a step is refused
(docs/access.md, "S3 and MLflow")."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import PLATFORM_WORKER, Secrets
from flowyard.config.users import User, load_users, new_s3_keys, save_users, users_text
from flowyard.errors import FlowyardError
from flowyard.platform import identities
from flowyard.services import seaweedfs


def platform(tmp_path: Path, **sections: object) -> Context:
    home = tmp_path / "home"
    home.mkdir()
    config = load_config(home, require_file=False)
    if sections:
        config = config.model_validate({**config.model_dump(), **sections})
    return Context(config=config, secrets=Secrets.generate())


def test_role_actions_table(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    store = ctx.config.object_store
    code, results, artifacts = store.code_bucket, store.results_bucket, store.artifacts_bucket
    read_only = [f"Read:{code}", f"List:{code}", f"Read:{results}", f"List:{results}"]
    assert seaweedfs.role_actions(ctx, "viewer") == read_only
    # Running a deployment needs no S3: the operator reads as the viewer does.
    assert seaweedfs.role_actions(ctx, "operator") == read_only
    assert seaweedfs.role_actions(ctx, "worker") == seaweedfs.flows_actions(ctx)
    assert f"Write:{results}" in seaweedfs.role_actions(ctx, "worker")
    assert "Admin" in seaweedfs.role_actions(ctx, "admin")
    for role in ("viewer", "operator", "worker"):
        actions = seaweedfs.role_actions(ctx, role)
        assert "Admin" not in actions and not any(a.endswith(artifacts) for a in actions)
        assert f"Write:{code}" not in actions
    with pytest.raises(ValueError):
        seaweedfs.role_actions(ctx, "root")


def test_identity_file_follows_users_toml(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    keys = new_s3_keys()
    assert len(keys[0]) == 20 and len(keys[1]) >= 40 and keys[0] != keys[1]
    users = [
        User("vera", "viewer", "h", "t", s3_access_key=keys[0], s3_secret_key=keys[1]),
        User("old", "viewer", "h", "t"),  # made before S3 keys existed: no identity
    ]
    rendered = json.loads(seaweedfs.render_s3_config(ctx, users))
    by_name = {i["name"]: i for i in rendered["identities"]}
    assert set(by_name) == {"flowyard", "flows", "user-vera"}
    assert by_name["user-vera"]["credentials"] == [{"accessKey": keys[0], "secretKey": keys[1]}]
    assert by_name["user-vera"]["actions"] == seaweedfs.role_actions(ctx, "viewer")
    # The platform's own identities are unchanged (existing homes keep their keys).
    assert by_name["flowyard"]["credentials"][0]["accessKey"] == ctx.secrets.get("s3_access_key")
    assert by_name["flowyard"]["actions"] == seaweedfs.ADMIN_ACTIONS


def test_a_revoked_identity_is_overwritten_not_left_out(tmp_path: Path) -> None:
    """weed 4.48 keeps an identity that is only missing from the file it re-reads on SIGHUP
    (measured: the key still worked), so a revoked one is replaced by a key no one holds."""
    ctx = platform(tmp_path)
    keys = new_s3_keys()
    vera = User("vera", "viewer", "h", "t", s3_access_key=keys[0], s3_secret_key=keys[1])
    rendered = seaweedfs.render_s3_config(ctx, [], revoked=[vera])
    assert keys[0] not in rendered and keys[1] not in rendered
    placeholder = {i["name"]: i for i in json.loads(rendered)["identities"]}["user-vera"]
    assert placeholder["actions"] == [] and len(placeholder["credentials"]) == 1
    # Two renders never share the placeholder's key (it is stored nowhere).
    again = seaweedfs.render_s3_config(ctx, [], revoked=[vera])
    assert json.loads(again)["identities"][-1]["credentials"] != placeholder["credentials"]
    # A user that is there is never replaced by a placeholder.
    kept = json.loads(seaweedfs.render_s3_config(ctx, [vera], revoked=[vera]))["identities"]
    assert [i["credentials"][0]["accessKey"] for i in kept if i["name"] == "user-vera"] == [keys[0]]


def test_users_toml_keeps_s3_keys_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    user = User("ci", "operator", "h", "t", s3_access_key="AK", s3_secret_key="SK", mlflow=True)
    save_users(path, {"ci": user, "old": User("old", "viewer", "h", "t")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_users(path)
    assert loaded["ci"] == user
    assert loaded["ci"].identities() == ["prefect", "s3", "mlflow"]
    assert loaded["old"].identities() == ["prefect"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_is_refused_up_front_when_mlflow_is_down(tmp_path: Path) -> None:
    """A person needs an MLflow login, which only the running server can make: refused
    before anything is written, users.toml included."""
    ctx = platform(tmp_path)
    assert ctx.config.mlflow.enabled
    save_users(ctx.paths.users_file, {})
    before = snapshot(ctx.paths.home)
    with pytest.raises(FlowyardError) as err:
        identities.add(ctx, "vera", "viewer")
    assert "MLflow" in err.value.message and "flowyard up" in (err.value.fix or "")
    assert snapshot(ctx.paths.home) == before


def test_without_mlflow_a_user_is_added_and_removed_while_down(tmp_path: Path) -> None:
    """S3 keys need no running store: `flowyard up` renders weed's identities from
    users.toml; nothing else is written meanwhile."""
    ctx = platform(tmp_path, mlflow={"enabled": False})
    minted = identities.add(ctx, "otto", "operator")
    assert minted.mlflow_password is None and minted.prefect_auth_string.startswith("otto:")
    stored = load_users(ctx.paths.users_file)["otto"]
    assert stored.s3_access_key == minted.user.s3_access_key and not stored.mlflow
    assert not Path(seaweedfs.s3_config_path(ctx)).exists()
    rendered = seaweedfs.render_s3_config(ctx, load_users(ctx.paths.users_file).values())
    assert minted.user.s3_secret_key in rendered
    assert identities.remove(ctx, "otto").name == "otto"
    assert "otto" not in load_users(ctx.paths.users_file)
    with pytest.raises(FlowyardError):
        identities.remove(ctx, "admin")  # the platform's own login


def test_an_external_store_gets_no_per_user_keys(tmp_path: Path) -> None:
    ctx = platform(
        tmp_path,
        mlflow={"enabled": False},
        object_store={"kind": "external", "endpoint_url": "https://s3.example.com"},
    )
    minted = identities.add(ctx, "vera", "viewer")
    assert minted.user.s3_access_key == "" and minted.user.identities() == ["prefect"]


def test_a_user_with_an_mlflow_login_is_removed_after_mlflow_is_turned_off(tmp_path: Path) -> None:
    ctx = platform(tmp_path, mlflow={"enabled": False})
    save_users(ctx.paths.users_file, {"ml": User("ml", "viewer", "h", "t", mlflow=True)})
    assert identities.remove(ctx, "ml").mlflow
    assert "ml" not in load_users(ctx.paths.users_file)
    # Its MLflow login is deleted at MLflow's next start (tested against MLflow itself in
    # tests/integration/test_access.py).
    assert ctx.paths.mlflow_revoked.read_text().split() == ["ml"]
    assert stat.S_IMODE(ctx.paths.mlflow_revoked.stat().st_mode) == 0o600


def test_the_platform_logins_are_neither_made_nor_removed_by_hand(tmp_path: Path) -> None:
    """`user add|remove` and `worker join-file|remove` go through `identities`: the platform
    workers' login and SSO session names are refused there as in users.toml's own API."""
    ctx = platform(tmp_path, mlflow={"enabled": False})
    save_users(ctx.paths.users_file, {})
    identities.add(ctx, "otto", "operator")
    before = snapshot(ctx.paths.home)
    for name in (PLATFORM_WORKER, "sso.mallory.abc123"):
        with pytest.raises(FlowyardError) as err:
            identities.add(ctx, name, "admin")
        assert name in err.value.message
    with pytest.raises(FlowyardError) as err:
        identities.remove(ctx, PLATFORM_WORKER)
    assert "platform's own workers' login" in err.value.message
    assert snapshot(ctx.paths.home) == before


def test_the_compose_copy_of_the_logins_carries_no_s3_keys(tmp_path: Path) -> None:
    ctx = platform(tmp_path, mlflow={"enabled": False})
    minted = identities.add(ctx, "otto", "operator")
    users = load_users(ctx.paths.users_file)
    text = users_text(users, s3=False)
    assert minted.user.s3_secret_key not in text and minted.user.s3_access_key not in text
    assert minted.user.key_hash in text
    assert minted.user.s3_secret_key in users_text(users)
