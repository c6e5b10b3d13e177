"""Reading a flow project's `prefect.yaml` into the few facts `flowyard deploy` checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowyard.errors import FlowyardError


@dataclass
class DeploymentSpec:
    name: str
    entrypoint: str
    pool: str | None
    queue: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    crons: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def flow_file(self) -> str:
        return self.entrypoint.rsplit(":", 1)[0]


def load_project(path: Path) -> list[DeploymentSpec]:
    prefect_file = path / "prefect.yaml"
    if not prefect_file.exists():
        raise FlowyardError(
            f"{path} has no prefect.yaml.",
            fix="Point `flowyard deploy` at a flow project folder (see flows/ for an example).",
        )
    try:
        data = yaml.safe_load(prefect_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FlowyardError(f"{prefect_file} is not valid YAML: {exc}", fix="Correct it.") from exc
    specs = []
    for raw in data.get("deployments") or []:
        if not raw.get("name") or not raw.get("entrypoint"):
            raise FlowyardError(
                f"A deployment in {prefect_file} lacks `name` or `entrypoint`: {raw!r}",
                fix="Give every deployment a name and an entrypoint (file.py:flow_function).",
            )
        pool = raw.get("work_pool") or {}
        specs.append(
            DeploymentSpec(
                name=raw["name"],
                entrypoint=raw["entrypoint"],
                pool=pool.get("name"),
                queue=pool.get("work_queue_name"),
                parameters=raw.get("parameters") or {},
                crons=[
                    (s["cron"], s.get("timezone"))
                    for s in (raw.get("schedules") or [])
                    if isinstance(s, dict) and "cron" in s
                ],
            )
        )
    if not specs:
        raise FlowyardError(
            f"{prefect_file} defines no deployments.", fix="Add one under `deployments:`."
        )
    return specs
