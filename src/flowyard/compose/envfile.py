"""The compose env file: `.env.example` (every referenced variable, documented, no values)
and `.env` (this home's values, for `--env-file`)."""

from __future__ import annotations

import base64
import re

from flowyard.compose import view as c
from flowyard.config.context import Context
from flowyard.config.model import FlowyardConfig
from flowyard.config.secrets import Secrets, compose_fields

_REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)")


def env_variables() -> dict[str, str]:
    """Every variable the compose files may reference, with its meaning."""
    described = {
        c.secret_var(name): f"{Secrets.model_fields[name].description} Required; URL-safe "
        "characters only."
        for name in compose_fields()
    }
    described[c.USERS_VAR] = (
        "FLOWYARD_HOME/users.toml (logins and roles, `flowyard user add`), base64url-encoded; "
        "`--env-file` writes it. Required."
    )
    described[c.MLFLOW_FLASK_KEY_VAR] = (
        "Signs MLflow's CSRF tokens. Required with MLflow; `--env-file` derives it from "
        "the MLflow admin password as native mode does."
    )
    described[c.DOMAIN_VAR] = (
        "Production only: the public DNS name (A/AAAA record to this VM); it is in every "
        "URL and the ACME certificate."
    )
    described[c.ACME_EMAIL_VAR] = "Production only: contact e-mail for the ACME certificates."
    return described


def env_example(compose_files: list[str]) -> str:
    used = sorted({m for text in compose_files for m in _REFERENCE.findall(text)})
    described = env_variables()
    unknown = [v for v in used if v not in described]
    if unknown:
        raise AssertionError(f"compose references undocumented variables: {unknown}")
    width = max(len(v) for v in used)
    lines = [
        "# Flowyard compose environment. Copy to .env (chmod 600) and fill in every value, or",
        "# let `flowyard render compose --env-file` write .env from FLOWYARD_HOME/secrets.toml.",
        "# Compose reads .env from this directory; a variable left empty stops `up` with its",
        "# name. No variable has a default: a shipped default password is everyone's password.",
        "#",
        f"# {'Variable'.ljust(width)}  Meaning",
        *(f"# {v.ljust(width)}  {described[v]}" for v in used),
        "",
        *(f"{v}=" for v in used),
        "",
    ]
    return "\n".join(lines)


def env_file(config: FlowyardConfig, secrets: Secrets, users: str) -> str:
    """`.env` with this home's real values (written 0600, never committed); `users` is the
    home's users.toml."""
    from flowyard.services import mlflow

    values = {c.secret_var(k): v for k, v in secrets.plain().items()}
    values[c.USERS_VAR] = base64.urlsafe_b64encode(users.encode()).decode()
    values[c.MLFLOW_FLASK_KEY_VAR] = mlflow.flask_secret_key(Context(config, secrets))
    if config.proxy.tls == "acme":
        values[c.DOMAIN_VAR] = config.proxy.host
        values[c.ACME_EMAIL_VAR] = config.proxy.acme_email or ""
    lines = ["# Written by `flowyard render compose --env-file`: secrets, keep it 0600."]
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
