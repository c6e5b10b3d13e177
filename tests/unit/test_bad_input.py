"""Issue 13, item 10: bad input is refused by the real CLI with one line naming the value,
a fix, no traceback, and nothing half-written.

Every case runs the real `flowyard` app in-process (typer's CliRunner; no mocks) against a
real temporary FLOWYARD_HOME, and compares the home before and after: a refused command
leaves every file as it was (the lock file, which holds no state, aside).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from flowyard.cli.app import app
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.paths import Paths
from flowyard.config.secrets import Secrets, write_secrets
from flowyard.platform.lock import LOCK_NAME
from flowyard.services.caddyfile import Upstreams, render_caddyfile

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_flowyard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLOWYARD_"):
            monkeypatch.delenv(key)


def snapshot(root: Path) -> dict[str, str] | None:
    if not root.exists():
        return None
    state = {}
    for path in sorted(root.rglob("*")):
        if path.name == LOCK_NAME:
            continue
        rel = str(path.relative_to(root))
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def initialised(home: Path, config: dict[str, object] | None = None) -> Path:
    """A home as `flowyard init` leaves it; `config` replaces flowyard.toml's content."""
    result = runner.invoke(app, ["init", "--home", str(home)])
    assert result.exit_code == 0, result.output
    if config is not None:
        Paths(home).config_file.write_text(tomli_w.dumps(config))
    return home


@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]
    # The bad value, as the error line must show it.
    value: str
    setup: Callable[[Path], object] = lambda tmp: None
    env: dict[str, str] = field(default_factory=dict)


def home_of(tmp: Path) -> Path:
    return tmp / "home"


def init_with(*opts: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["init", "--home", str(home_of(tmp)), *opts]


def up_with_config(config: dict[str, object]) -> tuple[Callable[[Path], object], Callable]:
    return (lambda tmp: initialised(home_of(tmp), config)), (
        lambda tmp: ["up", "--home", str(home_of(tmp))]
    )


def cfg_case(id: str, config: dict[str, object], value: str) -> Case:
    setup, args = up_with_config(config)
    return Case(id, args, value, setup)


def fake_ca(tmp: Path) -> None:
    initialised(home_of(tmp))
    ca = Paths(home_of(tmp)).ca_cert
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")


def users_home(tmp: Path) -> None:
    """A user's home that happens to hold a valid Flowyard config and secrets."""
    home = home_of(tmp)
    home.mkdir()
    (home / ".bashrc").write_text("export PS1='$ '\n")
    (home / "files").mkdir()
    (home / "files" / "thesis.tex").write_text("\\documentclass{article}\n")
    (home / "flowyard.toml").write_text("")
    write_secrets(home / "secrets.toml", Secrets.generate())


def link_into_home(tmp: Path) -> None:
    initialised(home_of(tmp))
    (tmp / "link").symlink_to(home_of(tmp))


def a_project(tmp: Path) -> None:
    (tmp / "project").mkdir()
    (tmp / "project" / "main.py").write_text("")


CASES = [
    # `flowyard init` options: refused before the home is even created.
    Case("init-port-too-high", init_with("--https-port", "70000"), "70000"),
    Case("init-port-zero", init_with("--https-port", "0"), "= 0"),
    Case("init-host-space", init_with("--host", "a b"), "'a b'"),
    Case("init-https-clashes-http", init_with("--https-port", "8080"), "8080"),
    Case("init-https-clashes-admin", init_with("--https-port", "2019"), "2019"),
    Case("init-host-url", init_with("--host", "https://flows.example.com"), "https://"),
    Case("init-host-with-port", init_with("--host", "flows.example.com:8443"), ":8443"),
    Case("init-host-bad-ip", init_with("--host", "999.1.1.1"), "999.1.1.1"),
    Case("init-host-unspecified", init_with("--host", "0.0.0.0"), "0.0.0.0"),
    Case("init-host-leading-hyphen", init_with("--host", "-x.example.com"), "-x.example.com"),
    Case("init-host-empty-label", init_with("--host", "a..example.com"), "a..example.com"),
    Case("init-host-long-label", init_with("--host", "a" * 64 + ".com"), "a" * 64),
    Case("init-host-newline", init_with("--host", "flows\nevil"), "'flows\\nevil'"),
    Case("init-host-empty", init_with("--host", ""), "''"),
    Case(
        "init-options-on-existing-config",
        init_with("--host", "flows.example.com"),
        "--host flows.example.com",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "init-home-is-a-file",
        lambda tmp: ["init", "--home", str(tmp / "file")],
        "file",
        setup=lambda tmp: (tmp / "file").write_text("x"),
    ),
    # flowyard.toml (read by every command; `up` here).
    cfg_case("acme-email-newline", {"proxy": {"acme_email": "ops@example.com\nevil"}}, "\\n"),
    cfg_case("acme-email-no-at", {"proxy": {"acme_email": "ops.example.com"}}, "ops.example"),
    cfg_case("acme-email-two-at", {"proxy": {"acme_email": "a@@example.com"}}, "a@@example"),
    cfg_case("acme-email-space", {"proxy": {"acme_email": "a b@example.com"}}, "a b@"),
    cfg_case("acme-email-braces", {"proxy": {"acme_email": "{$X}@example.com"}}, "{$X}"),
    cfg_case("acme-on-localhost", {"proxy": {"tls": "acme"}}, "'localhost'"),
    cfg_case("bind-not-an-ip", {"proxy": {"bind": "everywhere"}}, "'everywhere'"),
    cfg_case("config-host-space", {"proxy": {"host": "my host"}}, "'my host'"),
    cfg_case("bucket-two-chars", {"object_store": {"results_bucket": "ab"}}, "'ab'"),
    cfg_case("bucket-uppercase", {"object_store": {"code_bucket": "Code"}}, "'Code'"),
    cfg_case("bucket-ip-like", {"object_store": {"code_bucket": "192.168.1.1"}}, "192.168"),
    cfg_case("bucket-double-dot", {"object_store": {"code_bucket": "a..b"}}, "'a..b'"),
    cfg_case("bucket-trailing-hyphen", {"object_store": {"code_bucket": "abc-"}}, "'abc-'"),
    cfg_case("bucket-too-long", {"object_store": {"code_bucket": "b" * 64}}, "b" * 64),
    cfg_case(
        "buckets-not-distinct",
        {"object_store": {"results_bucket": "shared", "code_bucket": "shared"}},
        "'shared'",
    ),
    cfg_case(
        "endpoint-no-scheme",
        {"object_store": {"kind": "external", "endpoint_url": "x"}},
        "'x'",
    ),
    cfg_case(
        "endpoint-ftp",
        {"object_store": {"kind": "external", "endpoint_url": "ftp://s3.example.com"}},
        "ftp://",
    ),
    cfg_case(
        "endpoint-credentials",
        {"object_store": {"kind": "external", "endpoint_url": "https://k:s@s3.example.com"}},
        "k:s@",
    ),
    cfg_case(
        "endpoint-bad-port",
        {"object_store": {"kind": "external", "endpoint_url": "https://s3.example.com:99999"}},
        "99999",
    ),
    cfg_case(
        "endpoint-no-host",
        {"object_store": {"kind": "external", "endpoint_url": "https://"}},
        "'https://'",
    ),
    cfg_case("region-spaces", {"object_store": {"region": "US EAST"}}, "'US EAST'"),
    cfg_case("system-user", {"postgres": {"system_user": "Root Bad"}}, "'Root Bad'"),
    cfg_case("port-clash-in-file", {"prefect": {"port": 8443}}, "8443"),
    cfg_case("port-wrong-type", {"redis": {"port": "abc"}}, "'abc'"),
    cfg_case("unknown-key", {"proxy": {"https_prot": 9443}}, "https_prot"),
    Case(
        "env-port-too-high",
        lambda tmp: ["up", "--home", str(home_of(tmp))],
        "70000",
        setup=lambda tmp: initialised(home_of(tmp)),
        env={"FLOWYARD_PROXY__HTTPS_PORT": "70000"},
    ),
    # Other commands.
    Case(
        "deploy-missing-folder",
        lambda tmp: ["deploy", str(tmp / "nonexistent"), "--home", str(home_of(tmp))],
        "nonexistent",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "deploy-folder-without-prefect-yaml",
        lambda tmp: ["deploy", str(tmp), "--home", str(home_of(tmp))],
        "prefect.yaml",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "deploy-a-file",
        lambda tmp: ["deploy", str(tmp / "flow.py"), "--home", str(home_of(tmp))],
        "flow.py",
        setup=lambda tmp: (initialised(home_of(tmp)), (tmp / "flow.py").write_text("")),
    ),
    Case(
        "join-file-before-first-up",
        lambda tmp: [
            "worker",
            "join-file",
            "--out",
            str(tmp / "j.toml"),
            "--home",
            str(home_of(tmp)),
        ],
        "root.crt",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "join-file-unknown-pool",
        lambda tmp: [
            "worker",
            "join-file",
            "--pool",
            "gpu",
            "--out",
            str(tmp / "j.toml"),
            "--home",
            str(home_of(tmp)),
        ],
        "'gpu'",
        setup=fake_ca,
    ),
    Case(
        "join-file-out-in-missing-folder",
        lambda tmp: [
            "worker",
            "join-file",
            "--out",
            str(tmp / "no" / "j.toml"),
            "--home",
            str(home_of(tmp)),
        ],
        "j.toml",
        setup=fake_ca,
    ),
    Case(
        "backup-into-published-files",
        lambda tmp: [
            "backup",
            "--to",
            str(home_of(tmp) / "files" / "x"),
            "--home",
            str(home_of(tmp)),
        ],
        "files/x",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "backup-into-data",
        lambda tmp: [
            "backup",
            "--to",
            str(home_of(tmp) / "data" / "b"),
            "--home",
            str(home_of(tmp)),
        ],
        "data/b",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "backup-through-a-symlink-into-home",
        lambda tmp: ["backup", "--to", str(tmp / "link" / "b"), "--home", str(home_of(tmp))],
        "link/b",
        setup=lambda tmp: link_into_home(tmp),
    ),
    Case(
        "restore-force-into-a-users-home",
        lambda tmp: ["restore", str(tmp / "backup"), "--force", "--home", str(home_of(tmp))],
        ".bashrc",
        setup=users_home,
    ),
    Case(
        "restore-force-into-a-project",
        lambda tmp: ["restore", str(tmp / "backup"), "--force", "--home", str(tmp / "project")],
        "flowyard.toml and secrets.toml",
        setup=lambda tmp: a_project(tmp),
    ),
    Case(
        "restore-into-non-empty-without-force",
        lambda tmp: ["restore", str(tmp / "backup"), "--home", str(home_of(tmp))],
        str(Path("home")),
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "run-param-not-key-value",
        lambda tmp: ["run", "x/y", "-p", "novalue", "--home", str(home_of(tmp))],
        "'novalue'",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
    Case(
        "logs-unknown-service",
        lambda tmp: ["logs", "nginx", "--home", str(home_of(tmp))],
        "'nginx'",
        setup=lambda tmp: initialised(home_of(tmp)),
    ),
]


def test_at_least_thirty_bad_inputs() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_with_a_fix(case: Case, tmp: Path) -> None:
    case.setup(tmp)
    before = snapshot(tmp)
    result = runner.invoke(app, case.args(tmp), env=case.env)
    # Exit 1 through the one error handler, not an exception escaping it.
    assert result.exit_code == 1, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 2, result.stderr
    error, fix = lines
    assert error.startswith("Error: ") and fix.startswith("Fix: ") and len(fix) > 10
    assert case.value in error, (case.value, error)
    # Nothing half-written: the directory is exactly as it was.
    assert snapshot(tmp) == before


def test_the_real_executable_gives_no_traceback(tmp_path: Path) -> None:
    """The reported tracebacks, through the installed `flowyard` command itself."""
    flowyard = str(Path(sys.executable).parent / "flowyard")
    home = initialised(tmp_path / "home")
    for args in (
        ["init", "--home", str(tmp_path / "new"), "--https-port", "70000"],
        ["init", "--home", str(tmp_path / "new"), "--host", "a b"],
        ["worker", "join-file", "--out", str(tmp_path / "j.toml"), "--home", str(home)],
        ["deploy", "/nonexistent", "--home", str(home)],
    ):
        result = subprocess.run([flowyard, *args], capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("Error: ") and "\nFix: " in result.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "j.toml").exists()


@pytest.mark.parametrize(
    ("host", "url", "listen"),
    [
        ("::1", "https://[::1]:8443", "::1"),
        ("[::1]", "https://[::1]:8443", "::1"),
        ("LOCALHOST", "https://LOCALHOST:8443", "127.0.0.1"),
        ("localhost", "https://localhost:8443", "127.0.0.1"),
        ("127.0.0.2", "https://127.0.0.2:8443", "127.0.0.2"),
        ("2001:db8::1", "https://[2001:db8::1]:8443", "0.0.0.0"),
        ("flows.example.com", "https://flows.example.com:8443", "0.0.0.0"),
    ],
)
def test_loopback_hosts_bind_loopback_and_ipv6_is_bracketed(
    tmp_path: Path, host: str, url: str, listen: str
) -> None:
    result = runner.invoke(app, ["init", "--home", str(tmp_path), "--host", host])
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path)
    assert config.proxy.url == url and config.proxy.listen_address == listen
    caddyfile = render_caddyfile(
        config, Upstreams.from_context(Context(config, Secrets.generate()))
    )
    assert f"{url} {{" in caddyfile and f"default_bind {listen}" in caddyfile
    assert f"http://{url.removeprefix('https://').rsplit(':', 1)[0]}:8080 {{" in caddyfile


def test_credentials_are_percent_encoded_in_urls(tmp_path: Path) -> None:
    from flowyard.config.context import Context
    from flowyard.services import postgres, redis

    initialised(tmp_path)
    plain = Secrets.generate().plain()
    plain.update(prefect_db_password="p@ss/w:rd?#%", redis_password="r@d:s/x")
    ctx = Context(config=load_config(tmp_path), secrets=Secrets.model_validate(plain))
    # Natively both are Unix sockets; the user-info is encoded all the same.
    assert "prefect:p%40ss%2Fw%3Ard%3F%23%25@/prefect?host=" in postgres.database_url(
        ctx, "prefect"
    )
    assert redis.url(ctx, 0).startswith("unix://:r%40d%3As%2Fx@/")
