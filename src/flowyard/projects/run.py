"""`flowyard deploy` in a child process whose environment is the platform's client env.

Order matters for "nothing half-made": validate everything, then `prefect deploy` (push code
to S3, register), then prove every deployment's code can be fetched the way a worker will;
deployments whose code cannot be fetched are deleted again. Code goes to a folder named by its
content (`flowyard.projects.code`), uploaded before the deployment that points at it is
registered: a deployment never names code that is not (yet) in the bucket.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.deployments.steps.core import run_steps

from flowyard.projects.code import content_addressed
from flowyard.projects.project import DeploymentSpec, load_project
from flowyard.projects.validate import problems


async def _validate(root: Path, specs: list[DeploymentSpec]) -> list[str]:
    found: list[str] = []
    async with get_client() as client:
        for spec in specs:
            found += await problems(client, root, spec)
    return found


async def _fetchable(
    root: Path, specs: list[DeploymentSpec], flow_names: dict[str, str]
) -> list[str]:
    """Run each deployment's stored pull steps into an empty dir, as a worker would."""
    found = []
    async with get_client() as client:
        for spec in specs:
            deployment = await client.read_deployment_by_name(
                f"{flow_names[spec.name]}/{spec.name}"
            )
            with tempfile.TemporaryDirectory() as scratch:
                cwd = os.getcwd()
                os.chdir(scratch)
                try:
                    await run_steps(deployment.pull_steps or [])
                    present = Path(os.getcwd(), spec.flow_file).exists()
                except Exception as exc:
                    present = False
                    found.append(f"{spec.name}: pull steps failed: {exc}")
                finally:
                    os.chdir(cwd)
            if not present:
                await client.delete_deployment(deployment.id)
                found.append(
                    f"{spec.name}: code is not fetchable by a worker (entrypoint missing after "
                    "pull); the deployment was removed"
                )
    return found


def with_overrides(root: Path, overrides: dict[str, str | None]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((root / "prefect.yaml").read_text())
    for raw in data.get("deployments") or []:
        pool = dict(raw.get("work_pool") or {})
        if overrides.get("pool"):
            pool["name"] = overrides["pool"]
        if overrides.get("queue"):
            pool["work_queue_name"] = overrides["queue"]
        raw["work_pool"] = pool
    return content_addressed(data)


def main() -> None:
    root = Path(sys.argv[1]).absolute()
    overrides = json.loads(sys.argv[2])
    specs = load_project(root)
    for spec in specs:
        spec.pool = overrides.get("pool") or spec.pool
        spec.queue = overrides.get("queue") or spec.queue
    sys.path.insert(0, str(root))
    found = asyncio.run(_validate(root, specs))
    if found:
        print(json.dumps({"ok": False, "problems": found}))
        sys.exit(2)
    flow_names = {}
    for spec in specs:
        from prefect.flows import load_flow_from_entrypoint

        flow_names[spec.name] = load_flow_from_entrypoint(str(root / spec.entrypoint)).name
    # `prefect deploy --all` ignores --pool/--work-queue, so overrides (and the content-addressed
    # push step) go into a copy of prefect.yaml, outside the project so it is not uploaded.
    with tempfile.TemporaryDirectory() as scratch:
        prefect_file = Path(scratch) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(with_overrides(root, overrides)))
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "prefect"),
                "--no-prompt",
                "deploy",
                "--all",
                "--prefect-file",
                str(prefect_file),
            ],
            cwd=root,
            capture_output=True,
            text=True,
        )
    if result.returncode != 0:
        output = result.stdout[-3000:] + result.stderr[-3000:]
        print(json.dumps({"ok": False, "problems": ["prefect deploy failed", output]}))
        sys.exit(3)
    found = asyncio.run(_fetchable(root, specs, flow_names))
    if found:
        print(json.dumps({"ok": False, "problems": found}))
        sys.exit(4)
    print(
        json.dumps(
            {
                "ok": True,
                "deployments": [
                    {
                        "name": f"{flow_names[s.name]}/{s.name}",
                        "pool": s.pool,
                        "queue": s.queue,
                        "schedules": [c for c, _ in s.crons],
                        "parameters": s.parameters,
                    }
                    for s in specs
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
