"""The config model: defaults, file + environment layering, and errors that name the field."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from flowyard.config.load import load_config, write_config
from flowyard.config.secrets import Secrets, load_secrets, write_secrets
from flowyard.errors import FlowyardError


def test_defaults_are_valid_and_loopback(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, require_file=False)
    assert cfg.proxy.url == "https://localhost:8443"
    assert cfg.proxy.listen_address == "127.0.0.1"
    assert cfg.worker.effective_concurrency >= 1
    assert [p.name for p in cfg.pools] == ["default"]


def test_public_host_listens_everywhere(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, require_file=False)
    cfg.proxy.host = "flows.example.com"
    assert cfg.proxy.listen_address == "0.0.0.0"
    cfg.proxy.https_port = 443
    assert cfg.proxy.url == "https://flows.example.com"


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(tmp_path, require_file=False)
    cfg.prefect.port = 4300
    write_config(cfg)
    assert load_config(tmp_path).prefect.port == 4300
    monkeypatch.setenv("FLOWYARD_PREFECT__PORT", "4400")
    assert load_config(tmp_path).prefect.port == 4400


def test_invalid_value_names_field_value_and_rule(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text("[proxy]\nhttps_port = 70000\n")
    with pytest.raises(FlowyardError) as err:
        load_config(tmp_path)
    text = str(err.value)
    assert "proxy.https_port" in text and "70000" in text and "65535" in text


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text("[proxy]\nhttps_prot = 9443\n")
    with pytest.raises(FlowyardError, match="https_prot"):
        load_config(tmp_path)


def test_malformed_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text("[proxy\n")
    with pytest.raises(FlowyardError, match="not valid TOML"):
        load_config(tmp_path)


def test_port_clash_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text("[prefect]\nport = 8443\n")
    with pytest.raises(
        FlowyardError, match=r"proxy.https_port and prefect.port|prefect.port and proxy"
    ):
        load_config(tmp_path)


def test_worker_pool_must_exist(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text('[worker]\npool = "gpu"\n')
    with pytest.raises(FlowyardError, match=r"worker\.pool 'gpu'"):
        load_config(tmp_path)


def test_external_store_needs_endpoint(tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text('[object_store]\nkind = "external"\n')
    with pytest.raises(FlowyardError, match="endpoint_url is required"):
        load_config(tmp_path)


def test_missing_config_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(FlowyardError) as err:
        load_config(tmp_path)
    assert "flowyard init" in str(err.value)


def test_secrets_are_random_and_owner_only(tmp_path: Path) -> None:
    a, b = Secrets.generate(), Secrets.generate()
    assert set(a.values()).isdisjoint(b.values())
    assert all(len(v) >= 16 for v in a.values())
    path = tmp_path / "secrets.toml"
    write_secrets(path, a)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secrets(path) == a


def test_an_older_homes_secrets_get_the_missing_ones_added_and_nothing_else(
    tmp_path: Path,
) -> None:
    """A secrets.toml from before the flows' own credentials: loading adds them once, keeps
    every existing value byte for byte, and keeps the file owner-only."""
    old = Secrets.generate().model_copy(
        update={
            "s3_flows_access_key": None,
            "s3_flows_secret_key": None,
            "mlflow_flows_password": None,
        }
    )
    path = tmp_path / "secrets.toml"
    write_secrets(path, old)
    before = tomllib.loads(path.read_text())
    assert "s3_flows_access_key" not in before
    loaded = load_secrets(path)
    after = tomllib.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {k: after[k] for k in before} == before  # nothing existing changed
    assert set(after) - set(before) == {
        "s3_flows_access_key",
        "s3_flows_secret_key",
        "mlflow_flows_password",
    }
    assert loaded.plain() == after and not loaded.missing()
    # Loaded again: the added values stay what they were.
    assert load_secrets(path) == loaded
    # A file that has them all is not rewritten.
    mtime = path.stat().st_mtime_ns
    load_secrets(path)
    assert path.stat().st_mtime_ns == mtime


def test_readable_secrets_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    write_secrets(path, Secrets.generate())
    path.chmod(0o644)
    with pytest.raises(FlowyardError, match="chmod 600"):
        load_secrets(path)


def test_damaged_secrets_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    write_secrets(path, Secrets.generate())
    path.write_text("postgres_superuser_password = 'x'\n")
    with pytest.raises(FlowyardError, match="damaged"):
        load_secrets(path)
