"""The configuration reference in the README, generated from the model so it cannot drift.

`python -m flowyard.config.reference` prints it; a unit test checks the README holds it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from flowyard.config.model import FlowyardConfig, GlobalLimitSpec, PoolSpec, QueueSpec


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return ""
        if isinstance(value, list):
            return "see below" if value else "[]"
        return repr(value)
    if field.is_required():
        return "required"
    if field.default is None:
        return "unset"
    value = field.default
    return (
        f"`{value!r}`".replace("'", '"')
        if not isinstance(value, bool)
        else f"`{str(value).lower()}`"
    )


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    found = []
    for name, field in model.model_fields.items():
        if name == "home":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += rows(annotation, f"{prefix}{name}.")
            continue
        found.append((f"{prefix}{name}", _default(field), field.description or ""))
    return found


def markdown() -> str:
    lines = ["| setting | default | meaning |", "| --- | --- | --- |"]
    table = [
        *rows(FlowyardConfig),
        *rows(PoolSpec, "pools[]."),
        *rows(QueueSpec, "pools[].queues[]."),
        *rows(GlobalLimitSpec, "global_limits[]."),
    ]
    for key, default, meaning in table:
        lines.append(f"| `{key}` | {default} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
