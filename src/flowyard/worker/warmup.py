"""One-time work done in the zygote that every run would otherwise repeat after the fork.

Each item was found by profiling forked runs (py-spy over the zygote and its children):
whatever a run does before its own code that does not depend on the run is done here
once, and shared copy-on-write. Nothing here may start a thread, open a socket or keep
per-run state: the results are inherited by runs of any deployment.
"""

from __future__ import annotations

import contextlib
from typing import Any

# Integrations whose import starts a thread, so the zygote must not import them: prefect-dask
# imports distributed, which imports numpy, whose OpenBLAS starts its thread pool at import.
# Neither registers a block or worker type a run needs; flows that use it import it.
THREAD_STARTING_COLLECTIONS = frozenset({"prefect_dask"})


def load_collections() -> None:
    """Prefect imports every installed integration the first time it resolves a block (the
    results storage block, in every run): prefect-redis alone is ~0.5 CPU-s."""
    from flowyard.worker.prefect_private import load_collections_except

    load_collections_except(THREAD_STARTING_COLLECTIONS)


def complete_pydantic_models() -> int:
    """Build the validators Prefect's API models defer until first use (reading a flow run,
    a deployment, a block document...): ~0.05 CPU-s per run otherwise."""
    from pydantic import BaseModel

    built = 0
    seen: set[type] = set()
    stack: list[type[BaseModel]] = list(BaseModel.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if not cls.__module__.startswith(("prefect", "flowyard")):
            continue
        if getattr(cls, "__pydantic_complete__", True) and not _deferred(cls):
            continue
        with contextlib.suppress(Exception):
            cls.model_rebuild(raise_errors=False)
            built += 1
    return built


def _deferred(cls: Any) -> bool:
    from pydantic._internal._mock_val_ser import MockValSer

    return isinstance(cls.__dict__.get("__pydantic_validator__"), MockValSer)


def share_botocore_models() -> None:
    """Parse botocore's S3 data files once. Every run that persists its result to S3 (the
    platform's default) creates a boto3 client, and each new boto3 session re-reads and
    re-parses those JSON files: ~0.1 CPU-s per run. botocore already shares one parsed copy
    between all clients of a session and never mutates it; this shares it between sessions.
    """
    try:
        import boto3
        import botocore.loaders
        import botocore.session
    except ImportError:
        return
    session = boto3.session.Session(
        aws_access_key_id="warmup", aws_secret_access_key="warmup", region_name="us-east-1"
    )
    session.client("s3")
    parsed = dict(session._session.get_component("data_loader")._cache)
    create_loader = botocore.loaders.create_loader

    def create_warm_loader(search_path_string: str | None = None) -> Any:
        loader = create_loader(search_path_string)
        if search_path_string is None:
            # A custom AWS_DATA_PATH may hold other models: only the default path shares.
            loader._cache.update(parsed)
        return loader

    botocore.session.create_loader = create_warm_loader


def warm_up() -> dict[str, Any]:
    """Run every warm-up; a failing one is reported, never fatal."""
    report: dict[str, Any] = {}
    for step in (load_collections, complete_pydantic_models, share_botocore_models):
        try:
            report[step.__name__] = step()
        except Exception as exc:
            report[step.__name__] = f"failed: {type(exc).__name__}: {exc}"
    return report
