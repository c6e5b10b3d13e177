"""`flowyard user add|list|remove` and `flowyard audit`: team access (docs/access.md)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flowyard.cli._common import HomeOption, console, handle_errors, print_json, resolve_home
from flowyard.client.profile import MLFLOW_PREFIX
from flowyard.config.context import load_context
from flowyard.config.users import PERSON_ROLES, ensure_users_file
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.ops import access
from flowyard.platform import identities

app = typer.Typer(help="People's logins and roles.", no_args_is_help=True)


@app.command("add")
@handle_errors
def add(
    name: str = typer.Argument(..., help="The login name (lower-case)."),
    role: str = typer.Option(..., "--role", help=f"One of: {', '.join(PERSON_ROLES)}."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    prefect_only: bool = typer.Option(
        False,
        "--prefect-only",
        help="Only the Prefect login: no S3 keys, no MLflow login (a compose stack's home, "
        "whose S3 and MLflow have no per-user identities; needs nothing running).",
    ),
    home: Path | None = HomeOption,
) -> None:
    """Create a person: Prefect login, S3 keys and MLflow login, printed once."""
    if role not in PERSON_ROLES:
        raise FlowyardError(
            f"Unknown role {role!r} for a person.",
            fix=f"Use one of: {', '.join(PERSON_ROLES)} (workers get theirs from "
            "`flowyard worker join-file`).",
        )
    ctx = load_context(resolve_home(home))
    minted = identities.add(ctx, name, role, prefect_only)
    user, login = minted.user, minted.prefect_auth_string
    out: dict[str, str] = {"name": name, "role": role, "prefect_auth_string": login}
    if user.s3_access_key:
        out |= {
            "s3_endpoint_url": ctx.config.proxy.s3_url,
            "s3_access_key_id": user.s3_access_key,
            "s3_secret_access_key": user.s3_secret_key,
        }
    if minted.mlflow_password is not None:
        out |= {
            "mlflow_tracking_uri": f"{ctx.config.proxy.url}{MLFLOW_PREFIX}",
            "mlflow_username": name,
            "mlflow_password": minted.mlflow_password,
        }
    if as_json:
        print_json(out)
        return
    console.print(f"[green]Added[/] {name} ({role}). Their credentials, shown this once:")
    console.print(f"  PREFECT_API_AUTH_STRING={login}")
    console.print(f"  UI: user and password are the two halves of {name}:<key>")
    if user.s3_access_key:
        console.print(f"  AWS_ENDPOINT_URL_S3={out['s3_endpoint_url']}")
        console.print(f"  AWS_ACCESS_KEY_ID={user.s3_access_key}")
        console.print(f"  AWS_SECRET_ACCESS_KEY={user.s3_secret_key}")
    if minted.mlflow_password is not None:
        console.print(f"  MLFLOW_TRACKING_URI={out['mlflow_tracking_uri']}")
        console.print(f"  MLFLOW_TRACKING_USERNAME={name}")
        console.print(f"  MLFLOW_TRACKING_PASSWORD={minted.mlflow_password}")


@app.command("list")
@handle_errors
def list_users(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    home: Path | None = HomeOption,
) -> None:
    """Every login: name, role, created, when it expires (SSO sessions), what it can log in to."""
    ctx = load_context(resolve_home(home))
    users = ensure_users_file(
        ctx.paths.users_file, ctx.secrets.prefect_auth_string.get_secret_value()
    )
    # SSO sessions (docs/access.md, "SSO") are listed too, with the time they end.
    rows: list[dict[str, Any]] = [
        {
            "name": u.name,
            "role": u.role,
            "created": u.created,
            "expires": u.expires or "",
            "identities": u.identities(),
        }
        for u in users.values()
    ]
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("name", "role", "created", "expires", "identities"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["role"], r["created"], r["expires"], ", ".join(r["identities"]))
    console.print(table)


@app.command("sso-secret")
@handle_errors
def sso_secret(home: Path | None = HomeOption) -> None:
    """Store the OpenID Connect client secret ([access.sso]), read from standard input (never
    an argument, which other users can see); takes effect at the next `flowyard up`."""
    ctx = load_context(resolve_home(home))
    value = sys.stdin.readline().strip() if not sys.stdin.isatty() else ""
    if not value:
        value = typer.prompt("Client secret", hide_input=True).strip()
    if not value:
        raise FlowyardError(
            "No client secret given.",
            fix="Pipe it in (`flowyard user sso-secret < file`) or type it at the prompt.",
        )
    write_private(ctx.paths.sso_client_secret, value + "\n")
    console.print(f"[green]Stored[/] the SSO client secret in {ctx.paths.sso_client_secret}.")


@app.command("remove")
@handle_errors
def remove(name: str = typer.Argument(...), home: Path | None = HomeOption) -> None:
    """Revoke a user's Prefect login, S3 keys and MLflow login: refused within seconds."""
    ctx = load_context(resolve_home(home))
    user = identities.remove(ctx, name)
    console.print(f"[green]Removed[/] {user.name} ({user.role}): {', '.join(user.identities())}.")


def _since(value: str | None) -> datetime | None:
    """`--since`: an ISO time, or an age such as 30m, 2h, 7d."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise FlowyardError(
            f"--since {value!r} is neither an ISO time nor an age.",
            fix="Use e.g. --since 2h, --since 7d or --since 2026-01-31T12:00:00+00:00.",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@handle_errors
def audit(
    since: str | None = typer.Option(None, "--since", help="From this time or age (2h, 7d)."),
    user: str | None = typer.Option(None, "--user", help="Only this login."),
    limit: int = typer.Option(1000, "--limit", help="At most this many (the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    home: Path | None = HomeOption,
) -> None:
    """Who changed what, and who was refused (the audit log, oldest first)."""
    ctx = load_context(resolve_home(home))
    rows = access.audit_rows(ctx, _since(since), user, limit)
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("time", "user", "method", "route", "object", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["at"].isoformat(timespec="seconds"),
            r["username"],
            r["method"],
            r["route"],
            r["object_id"] or "",
            str(r["status"]),
        )
    console.print(table)
