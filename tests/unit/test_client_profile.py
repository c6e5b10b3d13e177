"""One client profile: the server's own worker and a worker joined from another host get
their environment from the same builder, so a flow behaves the same on either."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flowyard.client.env import PATH_KEYS, platform_client_env
from flowyard.client.joinfile import JoinInfo
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.errors import FlowyardError
from flowyard.platform.join import join_info, joined_worker_env
from flowyard.services import local_worker

FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def platform(tmp_path: Path, **sections: object) -> Context:
    home = tmp_path / "server"
    home.mkdir()
    config = load_config(home, require_file=False)
    if sections:
        config = config.model_validate({**config.model_dump(), **sections})
    ctx = Context(config=config, secrets=Secrets.generate())
    ctx.paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.ca_cert.write_text(FAKE_CA)
    return ctx


def joined_env(ctx: Context, tmp_path: Path) -> dict[str, str]:
    """What `flowyard worker join-file` writes and `flowyard worker join` reads back."""
    path = tmp_path / "join.toml"
    join_info(ctx, ctx.config.worker.pool).write(path)
    worker_home = tmp_path / "remote"
    worker_home.mkdir()
    return joined_worker_env(JoinInfo.read(path).profile(worker_home), worker_home)


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"mlflow": {"enabled": False}},
        {"object_store": {"kind": "external", "endpoint_url": "https://s3.example.com"}},
        {"proxy": {"host": "flowyard.example.com", "tls": "acme", "acme_email": "a@example.com"}},
    ],
)
def test_a_joined_worker_gets_every_setting_the_local_worker_gets(
    tmp_path: Path, sections: dict[str, object]
) -> None:
    ctx = platform(tmp_path, **sections)
    local = local_worker.env(ctx)
    joined = joined_env(ctx, tmp_path)
    missing = set(local) - PATH_KEYS - set(joined)
    assert not missing, f"a joined worker lacks {sorted(missing)}"
    assert set(joined) - set(local) <= PATH_KEYS
    for key, value in local.items():
        if key in PATH_KEYS:
            continue
        if value == str(ctx.paths.ca_cert):
            # The same CA, written on the joining machine.
            assert Path(joined[key]).read_text() == FAKE_CA, key
        else:
            assert joined[key] == value, key


def test_a_joined_worker_tracks_experiments(tmp_path: Path) -> None:
    """The bug this profile fixed: the join file carried no MLflow settings."""
    joined = joined_env(platform(tmp_path), tmp_path)
    assert joined["MLFLOW_TRACKING_URI"].endswith("/mlflow")
    assert joined["MLFLOW_TRACKING_USERNAME"] and joined["MLFLOW_TRACKING_PASSWORD"]
    assert joined["FLOWYARD_RESULTS_BUCKET"] == "flowyard-results"


def test_join_url_override_moves_every_platform_url(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    path = tmp_path / "join.toml"
    join_info(ctx, ctx.config.worker.pool).write(path)
    profile = JoinInfo.read(path).profile(tmp_path, "https://platform.lan:8443/")
    env = platform_client_env(ctx) | joined_worker_env(profile, tmp_path)
    assert env["PREFECT_API_URL"] == "https://platform.lan:8443/api"
    assert env["MLFLOW_TRACKING_URI"] == "https://platform.lan:8443/mlflow"


def test_join_file_is_owner_only_even_over_an_existing_file(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    path = tmp_path / "join.toml"
    path.write_text("old")
    path.chmod(0o644)
    join_info(ctx, ctx.config.worker.pool).write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_join_file_before_the_first_up_is_a_clear_error(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    ctx.paths.ca_cert.unlink()
    with pytest.raises(FlowyardError, match="does not exist yet") as refused:
        join_info(ctx, ctx.config.worker.pool)
    assert refused.value.fix and "flowyard up" in refused.value.fix


def test_a_join_file_from_before_mlflow_still_joins(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text(
        'url = "https://h:8443"\ns3_url = "https://h:8444"\npool = "default"\n'
        'auth_string = "admin:x"\ns3_access_key = "A"\ns3_secret_key = "B"\n'
        f'region = "us-east-1"\ncode_bucket = "flowyard-code"\nca_cert = """{FAKE_CA}"""\n'
    )
    env = joined_worker_env(JoinInfo.read(old).profile(tmp_path), tmp_path)
    assert env["PREFECT_API_URL"] == "https://h:8443/api"
    assert "MLFLOW_TRACKING_URI" not in env


@pytest.mark.parametrize("where", ["local", "joined"])
def test_a_workers_env_carries_no_admin_credential(tmp_path: Path, where: str) -> None:
    """Flow runs inherit their worker's environment: the flows' scoped S3 keys, MLflow's
    non-admin `flows` login and a Prefect login with the `worker` role, never the admin S3
    keys, the MLflow admin's password or the admin's Prefect login (docs/security.md)."""
    ctx = platform(tmp_path)
    env = local_worker.env(ctx) if where == "local" else joined_env(ctx, tmp_path)
    secrets = ctx.secrets
    admin = [
        secrets.get(k)
        for k in ("s3_access_key", "s3_secret_key", "mlflow_admin_password", "prefect_auth_string")
    ]
    leaked = [k for k, v in env.items() if any(a in v for a in admin)]
    assert not leaked, f"admin credentials in {leaked}"
    assert env["AWS_ACCESS_KEY_ID"] == secrets.get("s3_flows_access_key")
    assert env["AWS_SECRET_ACCESS_KEY"] == secrets.get("s3_flows_secret_key")
    assert env["MLFLOW_TRACKING_USERNAME"] == "flows"
    assert env["MLFLOW_TRACKING_PASSWORD"] == secrets.get("mlflow_flows_password")
    assert env["PREFECT_API_AUTH_STRING"] == secrets.get("prefect_worker_auth_string")
    # The worker's own (empty) profiles file, never the operator's, which holds more.
    if where == "local":
        assert env["PREFECT_PROFILES_PATH"] != str(ctx.paths.prefect_profiles)


def test_the_operators_env_keeps_the_admin_profile(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    env = platform_client_env(ctx)
    assert env["AWS_ACCESS_KEY_ID"] == ctx.secrets.get("s3_access_key")
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert env["MLFLOW_TRACKING_PASSWORD"] == ctx.secrets.get("mlflow_admin_password")


def test_an_external_store_keeps_its_one_key_pair_for_workers(tmp_path: Path) -> None:
    """The platform cannot mint keys at an external store: workers use the configured pair."""
    ctx = platform(tmp_path, object_store={"kind": "external", "endpoint_url": "https://s3.x"})
    assert local_worker.env(ctx)["AWS_ACCESS_KEY_ID"] == ctx.secrets.get("s3_access_key")
