"""Deploy a flow project and trigger deployments, from the flowyard process.

Both run Prefect in a child process with the platform's client environment (see
`client_env.child_env`), going through the proxy exactly as a user's laptop would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from flowyard.client.env import child_env
from flowyard.config.context import Context
from flowyard.errors import FlowyardError


def _run_module(ctx: Context, module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(ctx),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = result.stdout.strip().splitlines()
    try:
        payload: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise FlowyardError(
            f"{module} failed:\n{tail}", fix="Is the platform up? `flowyard status`"
        ) from None
    return payload


def deploy_project(
    ctx: Context, path: Path, pool: str | None = None, queue: str | None = None
) -> list[dict[str, Any]]:
    payload = _run_module(
        ctx, "flowyard.projects.run", str(path), json.dumps({"pool": pool, "queue": queue})
    )
    if not payload["ok"]:
        raise FlowyardError(
            "Deployment refused:\n  - " + "\n  - ".join(payload["problems"]),
            fix="Correct prefect.yaml (or the --pool/--queue options); nothing was deployed "
            "for the deployments named above.",
        )
    return list(payload["deployments"])


def trigger(
    ctx: Context, name: str, parameters: dict[str, Any], timeout: float, queue: str | None = None
) -> dict[str, Any]:
    return _run_module(
        ctx,
        "flowyard.projects.trigger",
        name,
        json.dumps(parameters),
        str(timeout),
        queue or "",
        timeout=timeout + 120,
    )
