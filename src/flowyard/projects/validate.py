"""Checks made before anything is pushed or registered, so a bad deployment leaves nothing
half-made: pool and queue exist, schedules parse, parameters fit the flow's signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound
from prefect.flows import Flow, load_flow_from_entrypoint
from pydantic import ValidationError

from flowyard.projects.project import DeploymentSpec


async def problems(client: PrefectClient, root: Path, spec: DeploymentSpec) -> list[str]:
    found: list[str] = []
    where = f"deployment {spec.name!r}"
    if not spec.pool:
        found.append(f"{where}: no work pool (set work_pool.name or pass --pool)")
    else:
        try:
            await client.read_work_pool(spec.pool)
        except ObjectNotFound:
            pools = ", ".join(p.name for p in await client.read_work_pools()) or "none"
            found.append(f"{where}: unknown work pool {spec.pool!r} (pools: {pools})")
        else:
            if spec.queue:
                queues = await client.read_work_queues(work_pool_name=spec.pool)
                names = [q.name for q in queues]
                if spec.queue not in names:
                    found.append(
                        f"{where}: unknown work queue {spec.queue!r} in pool {spec.pool!r} "
                        f"(queues: {', '.join(names)}; declare it under pools in flowyard.toml "
                        "and run `flowyard apply`)"
                    )
    for cron, tz in spec.crons:
        try:
            CronSchedule(cron=cron, timezone=tz)
        except ValidationError as exc:
            found.append(f"{where}: invalid schedule cron={cron!r}: {exc.errors()[0]['msg']}")
    flow_file = root / spec.flow_file
    if not flow_file.exists():
        found.append(f"{where}: entrypoint file {flow_file} does not exist")
        return found
    try:
        flow: Flow[..., Any] = load_flow_from_entrypoint(str(root / spec.entrypoint))
    except Exception as exc:
        found.append(f"{where}: cannot load flow {spec.entrypoint!r}: {exc}")
        return found
    try:
        flow.validate_parameters(spec.parameters)
    except Exception as exc:
        found.append(f"{where}: parameters {spec.parameters!r} do not fit {flow.name}(): {exc}")
    return found
