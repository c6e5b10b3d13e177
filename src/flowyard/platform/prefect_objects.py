"""Declarative Prefect objects: the results block, work pools, queues and global limits.

Runs as `python -m flowyard.platform.prefect_objects` in a child process whose environment
points the Prefect client at the platform, so the caller's own Prefect settings never mix in.
Every step is create-or-update, so `flowyard apply` can run any number of times.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectNotFound
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

from flowyard.config.model import DEFAULT_POOL_TYPE, FlowyardConfig, GlobalLimitSpec, PoolSpec
from flowyard.kubernetes.pods import SETTINGS_VARIABLE, job_template, pool_namespace

KUBERNETES = "kubernetes"


def save_results_block(slug: str, bucket: str) -> None:
    # No keys or endpoint in the block: each machine's own AWS_* environment supplies them,
    # so the same block works for the local worker, remote workers and laptops.
    S3Bucket(
        bucket_name=bucket,
        credentials=AwsCredentials(
            aws_client_parameters=AwsClientParameters(config={"s3": {"addressing_style": "path"}})
        ),
    ).save(slug, overwrite=True)


async def base_job_template(kind: str, spec: PoolSpec, config: FlowyardConfig) -> dict[str, Any]:
    template = await get_default_base_job_template_for_infrastructure_type(kind)
    if template is None:
        raise SystemExit(
            f"Unknown worker type {kind!r} for pool {spec.name!r}: install its Prefect "
            "integration (e.g. prefect-kubernetes) or use type 'flowyard' or 'process'."
        )
    if kind == KUBERNETES:
        # Flow-run pods get the platform's environment: these settings, the worker
        # Secret and the CA (`flowyard render kubernetes` writes both for the cluster).
        if SETTINGS_VARIABLE not in os.environ:
            # Run by hand or by the compose `apply` job: neither passes the settings that
            # `flowyard.platform.apply` computes from the platform's client profile.
            raise SystemExit(
                f"Pool {spec.name!r} is of type kubernetes: its job template carries the "
                "platform's client settings, which only `flowyard apply` on the platform's "
                "host knows. Run `flowyard apply` there."
            )
        settings = json.loads(os.environ[SETTINGS_VARIABLE])
        ca = config.proxy.tls == "internal"
        template = job_template(template, settings, ca, pool_namespace(spec))
    return template


async def apply_pool(
    client: PrefectClient, spec: PoolSpec, log: list[str], config: FlowyardConfig
) -> None:
    try:
        pool = await client.read_work_pool(spec.name)
        if spec.type and pool.type != spec.type:
            raise SystemExit(
                f"Work pool {spec.name!r} exists with type {pool.type!r}, config says "
                f"{spec.type!r}. A pool's type cannot change: create a new pool of type "
                f"{spec.type!r} and move the deployments to it, or set pools[].type = "
                f"{pool.type!r}."
            )
        update = WorkPoolUpdate(concurrency_limit=spec.concurrency_limit)
        what = ""
        if pool.type == KUBERNETES and SETTINGS_VARIABLE in os.environ:
            # Kept in step with the platform (its URL, CA, settings), as the Secret is.
            update.base_job_template = await base_job_template(KUBERNETES, spec, config)
            what = " (job template)"
        await client.update_work_pool(spec.name, update)
        # type unset: a pool made before the fast worker became the default keeps its type
        # (Prefect cannot change it, and recreating the pool would drop its queues).
        kept = f", kept type {pool.type!r}" if pool.type != (spec.type or DEFAULT_POOL_TYPE) else ""
        log.append(f"work pool {spec.name}: updated{what}{kept}")
    except ObjectNotFound:
        kind = spec.type or DEFAULT_POOL_TYPE
        template = await base_job_template(kind, spec, config)
        await client.create_work_pool(
            WorkPoolCreate(
                name=spec.name,
                type=kind,
                base_job_template=template,
                concurrency_limit=spec.concurrency_limit,
            )
        )
        log.append(f"work pool {spec.name}: created ({kind})")
    for queue in spec.queues:
        fields: dict[str, Any] = {
            "priority": queue.priority,
            "concurrency_limit": queue.concurrency_limit,
        }
        try:
            existing = await client.read_work_queue_by_name(queue.name, work_pool_name=spec.name)
            await client.update_work_queue(existing.id, **fields)
            log.append(f"  queue {spec.name}/{queue.name}: updated")
        except ObjectNotFound:
            await client.create_work_queue(name=queue.name, work_pool_name=spec.name, **fields)
            log.append(f"  queue {spec.name}/{queue.name}: created")


async def apply_limit(client: PrefectClient, spec: GlobalLimitSpec, log: list[str]) -> None:
    try:
        await client.read_global_concurrency_limit_by_name(spec.name)
        await client.update_global_concurrency_limit(
            spec.name,
            GlobalConcurrencyLimitUpdate(
                limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second
            ),
        )
        log.append(f"global limit {spec.name}: updated")
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(
                name=spec.name, limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second
            )
        )
        log.append(f"global limit {spec.name}: created")


async def apply(config: FlowyardConfig, results_slug: str) -> list[str]:
    log: list[str] = []
    await asyncio.to_thread(save_results_block, results_slug, config.object_store.results_bucket)
    log.append(f"block s3-bucket/{results_slug}: saved")
    async with get_client() as client:
        for pool in config.pools:
            await apply_pool(client, pool, log, config)
        for limit in config.global_limits:
            await apply_limit(client, limit, log)
        from flowyard.platform.hygiene import apply_automations

        await apply_automations(client, config, log)
    return log


def main() -> None:
    config = FlowyardConfig.model_validate_json(os.environ["FLOWYARD_SETUP_CONFIG"])
    log = asyncio.run(apply(config, sys.argv[1]))
    print(json.dumps(log))


if __name__ == "__main__":
    main()
