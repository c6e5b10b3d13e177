"""Reading and writing `flowyard.toml`, with errors that name the field, value and rule."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from flowyard.config.model import TOML_FILE, FlowyardConfig
from flowyard.config.paths import Paths, default_home
from flowyard.errors import FlowyardError
from flowyard.files import write_private


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the field, the value and the rule; one problem, one line."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) else f" = {value!r}"
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field rules name their fields themselves.
        problems.append(f"{field}{shown}: {msg}" if field and field not in msg else msg)
    if len(problems) == 1:
        return f"Invalid configuration in {source}: {problems[0]}"
    return "\n".join([f"Invalid configuration in {source}:", *(f"  - {p}" for p in problems)])


def load_config(
    home: Path | None = None,
    *,
    require_file: bool = True,
    overrides: dict[str, Any] | None = None,
) -> FlowyardConfig:
    """The config for `home` (default: FLOWYARD_HOME), file then FLOWYARD_* overrides;
    `overrides` (e.g. `flowyard init --host`) beat both and are validated with the rest."""
    home = (home or default_home()).absolute()
    paths = Paths(home)
    toml_file = paths.config_file
    if not toml_file.exists():
        if require_file:
            raise FlowyardError(
                f"No Flowyard configuration at {toml_file}.",
                fix=f"Run `flowyard init` (FLOWYARD_HOME={home}).",
            )
        toml_file = None  # type: ignore[assignment]
    elif toml_file is not None:
        try:
            tomllib.loads(toml_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise FlowyardError(
                f"{toml_file} is not valid TOML: {exc}", fix="Correct the line named above."
            ) from exc
    token = TOML_FILE.set(toml_file)
    try:
        return FlowyardConfig(home=home, **(overrides or {}))
    except ValidationError as exc:
        env = sorted(k for k in os.environ if k.startswith("FLOWYARD_") and k != "FLOWYARD_HOME")
        source = str(toml_file or "defaults") + (
            f" and environment ({', '.join(env)})" if env else ""
        )
        if overrides:
            source += " and the command's options"
        raise FlowyardError(
            format_validation_error(exc, source),
            fix="Correct the value in flowyard.toml or the FLOWYARD_* variable.",
        ) from exc
    finally:
        TOML_FILE.reset(token)


def write_config(config: FlowyardConfig, overrides: dict[str, Any] | None = None) -> Path:
    paths = Paths(config.home)
    data = config.to_toml_dict()
    if overrides:
        data.update(overrides)
    header = (
        "# Flowyard configuration. Every key is documented in the README's configuration\n"
        "# reference; FLOWYARD_<SECTION>__<KEY> environment variables override it.\n"
        "# Secrets are not here: they are in secrets.toml (0600).\n\n"
    )
    write_private(paths.config_file, header + tomli_w.dumps(data))
    return paths.config_file
