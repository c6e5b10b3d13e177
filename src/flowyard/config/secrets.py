"""Secrets generated at `flowyard init`, kept in one owner-only (0600) file.

Nothing here has a default: a platform that ships a password ships it to everyone.
"""

from __future__ import annotations

import re
import secrets
import stat
import tomllib
from pathlib import Path
from urllib.parse import quote

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from flowyard.errors import FlowyardError
from flowyard.files import write_private

# The login name of the platform's own workers (`prefect_worker_auth_string`): reserved.
PLATFORM_WORKER = "platform-worker"


def _token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


class Secrets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    postgres_superuser_password: SecretStr = Field(description="PostgreSQL `postgres` role.")
    prefect_db_password: SecretStr = Field(description="PostgreSQL `prefect` role.")
    mlflow_db_password: SecretStr = Field(description="PostgreSQL `mlflow` role.")
    redis_password: SecretStr = Field(description="Redis `default` user.")
    prefect_auth_string: SecretStr = Field(
        description="`user:password` for the Prefect API and UI."
    )
    s3_access_key: SecretStr = Field(description="Object store access key.")
    s3_secret_key: SecretStr = Field(description="Object store secret key.")
    mlflow_admin_password: SecretStr = Field(description="MLflow `admin` user.")
    # Flow runs' own credentials (least privilege). Added after the first release, so a home
    # made before has none: they are optional here and `load_secrets` generates the missing
    # ones once (see `complete`).
    s3_flows_access_key: SecretStr | None = Field(
        None, description="Object store access key of flow runs (scoped to their buckets)."
    )
    s3_flows_secret_key: SecretStr | None = Field(
        None, description="Object store secret key of flow runs."
    )
    mlflow_flows_password: SecretStr | None = Field(
        None, description="MLflow `flows` user (not an admin), the login of flow runs."
    )
    # Behind the access gate (docs/access.md) Prefect's own auth string is this one, held only
    # by the proxy (and the platform's direct calls on the API's socket); people and workers
    # log in with their own logins (users.toml), `prefect_auth_string` being the first admin's.
    prefect_internal_auth_string: SecretStr | None = Field(
        None, description="`user:password` Prefect's API checks behind the access gate."
    )

    # The platform's own workers (the local one, its Dask workers, Kubernetes pods): a login
    # with the `worker` role in users.toml, so flow runs never hold the admin login.
    prefect_worker_auth_string: SecretStr | None = Field(
        None, description="`user:key` of the platform's own workers (role `worker`)."
    )

    @classmethod
    def generate(cls) -> Secrets:
        return cls(**{**cls._generate_required(), **cls._generate_added()})

    @staticmethod
    def _generate_required() -> dict[str, SecretStr]:
        return dict(
            postgres_superuser_password=SecretStr(_token()),
            prefect_db_password=SecretStr(_token()),
            mlflow_db_password=SecretStr(_token()),
            redis_password=SecretStr(_token()),
            prefect_auth_string=SecretStr(f"admin:{_token()}"),
            # S3 access keys are conventionally upper-case alphanumerics; some clients check.
            s3_access_key=SecretStr("FY" + secrets.token_hex(9).upper()),
            s3_secret_key=SecretStr(_token(30)),
            mlflow_admin_password=SecretStr(_token()),
        )

    @staticmethod
    def _generate_added() -> dict[str, SecretStr]:
        """Secrets added after the first release; `complete` fills in the missing ones."""
        return dict(
            s3_flows_access_key=SecretStr("FL" + secrets.token_hex(9).upper()),
            s3_flows_secret_key=SecretStr(_token(30)),
            mlflow_flows_password=SecretStr(_token()),
            prefect_internal_auth_string=SecretStr(f"internal:{_token()}"),
            prefect_worker_auth_string=SecretStr(f"{PLATFORM_WORKER}:{_token()}"),
        )

    def missing(self) -> list[str]:
        return [name for name, value in self if value is None]

    def complete(self) -> Secrets:
        """These secrets with every missing one generated. Only ever ADDS: an existing value
        is never changed (it may be what a database, a store or a join file already uses)."""
        added = {k: v for k, v in self._generate_added().items() if getattr(self, k) is None}
        return self.model_copy(update=added) if added else self

    def get(self, name: str) -> str:
        """One secret's value; a clear error for one this home's file lacks."""
        value = getattr(self, name)
        if value is None:
            raise FlowyardError(
                f"secrets.toml has no {name}.",
                fix="Run `flowyard up` once: it adds the secrets a newer version needs.",
            )
        return str(value.get_secret_value())

    @property
    def prefect_user(self) -> str:
        return self.prefect_auth_string.get_secret_value().split(":", 1)[0]

    def plain(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self if v is not None}

    def values(self) -> list[str]:
        """Every secret value, for tests that prove none leaked into a rendered file."""
        return list(self.plain().values())


def compose_fields() -> list[str]:
    """The `Secrets` fields a compose deployment's .env carries: all of them (the stack runs
    the access gate too, so Prefect's internal credential is one of them)."""
    return list(Secrets.model_fields)


def url_quote(secret: str) -> str:
    """A secret as it goes into a URL's user-info: percent-encoded (`@`, `/`, `:` ... in a
    hand-set password would otherwise end the field). A compose reference (`${VAR:?}`) is
    kept: compose substitutes it later."""
    if re.fullmatch(r"\$\{[A-Za-z0-9_]+:\?\}", secret):
        return secret
    return quote(secret, safe="")


def write_secrets(path: Path, value: Secrets) -> None:
    """Create the file 0600 from the first byte; never widen an existing file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Flowyard secrets: generated by `flowyard init`. Keep this file 0600.\n"
    write_private(path, header + tomli_w.dumps(value.plain()))


def require_private(path: Path, holds: str) -> None:
    """Refuse a file another local user could read; `holds` says what it would give away."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FlowyardError(
            f"{path} is readable by others (mode {mode:o}); it holds {holds}.",
            fix=f"chmod 600 {path}",
        )


def load_secrets(path: Path) -> Secrets:
    if not path.exists():
        raise FlowyardError(
            f"No secrets file at {path}.",
            fix="Run `flowyard init` to generate the platform's secrets.",
        )
    require_private(path, "every platform password")
    try:
        data = tomllib.loads(path.read_text())
        loaded = Secrets.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise FlowyardError(
            f"{path} is damaged: {exc}",
            fix="Restore it from a backup (`flowyard restore`); regenerating it would lock you "
            "out of the existing database and object store.",
        ) from exc
    if not loaded.missing():
        return loaded
    # A home made by an earlier version lacks the secrets added since: generate them once and
    # write them back (owner-only). Only missing keys are added; existing ones are kept as
    # they are, since databases, the object store and join files already use them.
    completed = loaded.complete()
    try:
        write_secrets(path, completed)
    except OSError as exc:
        raise FlowyardError(
            f"{path} lacks {', '.join(loaded.missing())} and cannot be updated: {exc.strerror}.",
            fix=f"Run flowyard as the owner of {path} once, so it can add them.",
        ) from exc
    return completed
