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
    lines = [f"Invalid configuration in {source}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"  - {field}{shown}: {err['msg']}")
    return "\n".join(lines)


def load_config(home: Path | None = None, *, require_file: bool = True) -> FlowyardConfig:
    """The config for `home` (default: FLOWYARD_HOME), file then FLOWYARD_* overrides."""
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
        return FlowyardConfig(home=home)
    except ValidationError as exc:
        env = sorted(k for k in os.environ if k.startswith("FLOWYARD_") and k != "FLOWYARD_HOME")
        source = str(toml_file or "defaults") + (
            f" and environment ({', '.join(env)})" if env else ""
        )
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
