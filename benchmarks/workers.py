"""The worker kinds the dispatch and throughput benchmarks compare, and running one.

- `platform`: the worker exactly as Flowyard runs it (`flowyard.services.local_worker`), pointed
  at a benchmark pool of the default pool's type: whatever the platform ships, this
  measures (the fast `flowyard` worker since the default pool uses it).
- `process`: stock `prefect worker start --type process`, Prefect's defaults (10 s poll).
- `flowyard`: `prefect worker start --type flowyard`, the fast worker (docs/workers.md) by its
  Prefect worker type, in the platform worker's environment.
- `auto` (default candidate): `flowyard` when that type is registered, else `platform`.

Each kind runs with its own defaults unless `--worker-limit` forces one `--limit` on both:
stock Prefect has no limit, the platform allows one run per CPU.
We start each worker ourselves, in its own session, so its CPU can be read from its process
tree and every process it leaves behind can be killed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import procs
from flowyard.client.api import api_client
from flowyard.client.env import platform_client_env
from flowyard.config.context import Context
from flowyard.config.model import DEFAULT_POOL_TYPE, WorkerConfig, default_pools
from flowyard.platform.lifecycle import tail
from flowyard.services import local_worker as worker_service
from flowyard.services.base import binary
from flowyard.waiting import wait_until

KINDS = ("auto", "platform", "process", "flowyard")


@dataclass(frozen=True)
class WorkerKind:
    key: str
    pool_type: str
    label: str
    # --limit when the plan does not force one: each kind's own default (0 = none).
    default_limit: int

    def limit(self, forced: int | None) -> int:
        return self.default_limit if forced is None else forced

    def describe(self, forced: int | None) -> str:
        return f"{self.label}, --limit {self.limit(forced) or 'none'}"


def platform_pool_type() -> str:
    """The worker type of the pool the platform's own worker serves, by default."""
    pool = WorkerConfig.model_fields["pool"].default
    return next(p.type or DEFAULT_POOL_TYPE for p in default_pools() if p.name == pool)


def flowyard_type_registered() -> bool:
    from prefect.workers.base import BaseWorker

    return BaseWorker.get_worker_class_from_type("flowyard") is not None


def resolve(key: str) -> WorkerKind:
    # The platform runs its worker with one run per CPU unless configured otherwise.
    platform_limit = WorkerConfig().effective_concurrency
    if key == "auto":
        key = "flowyard" if flowyard_type_registered() else "platform"
    if key == "process":
        # Prefect's defaults: no --limit, 10 s poll interval, 10 s prefetch.
        return WorkerKind("process", "process", "stock Prefect process worker (defaults)", 0)
    if key == "flowyard":
        if not flowyard_type_registered():
            raise SystemExit(
                "Worker kind 'flowyard' asked for, but no Prefect worker type 'flowyard' is "
                "registered (is flowyard installed in this environment?). Use --candidate process."
            )
        label = "flowyard worker (type flowyard, the platform's worker environment)"
        return WorkerKind("flowyard", "flowyard", label, platform_limit)
    if key == "platform":
        pool_type = platform_pool_type()
        label = f"platform worker (flowyard.services.local_worker, type {pool_type})"
        return WorkerKind("platform", pool_type, label, platform_limit)
    raise SystemExit(f"unknown worker kind {key!r}; choose from {', '.join(KINDS)}")


def pool_name(role: str) -> str:
    return f"bench-{role}"


@dataclass
class RunningWorker:
    kind: WorkerKind
    pool: str
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _command(
    ctx: Context, kind: WorkerKind, pool: str, limit: int, home: Path
) -> tuple[list[str], dict[str, str], Path, str]:
    """(argv, environment, working directory, worker name) for one worker."""
    if kind.key == "process":
        name = "bench-process"
        argv = [binary("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
        argv += ["--name", name] + (["--limit", str(limit)] if limit else [])
        env = {
            **platform_client_env(ctx),
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        }
        return argv, env, home, name
    # The platform's worker service, pointed at the benchmark pool with the chosen limit.
    config = ctx.config.model_copy(deep=True)
    config.worker.pool = pool
    config.worker.concurrency = limit or None
    wctx = Context(config=config, secrets=ctx.secrets)
    service = worker_service.service(wctx)
    if service.prepare:
        service.prepare()
    cwd = service.cwd or home
    if kind.key == "platform":
        argv = list(service.command)
        if not limit and "--limit" in argv:
            i = argv.index("--limit")
            del argv[i : i + 2]
        return argv, service.env, cwd, worker_service.worker_name(wctx)
    # flowyard: the worker type by Prefect's own CLI, in the environment the platform gives
    # its worker, so it can be measured before the platform's default pool switches to it.
    name = "bench-flowyard"
    argv = [binary("prefect"), "worker", "start", "--pool", pool, "--type", kind.pool_type]
    argv += ["--name", name] + (["--limit", str(limit)] if limit else [])
    return argv, service.env, cwd, name


def registered(ctx: Context, pool: str, name: str) -> bool:
    """The worker has announced itself for its pool (Prefect's own readiness signal)."""
    try:
        with api_client(ctx) as client:
            r = client.post(f"/work_pools/{pool}/workers/filter", json={})
            return r.status_code == 200 and any(w["name"] == name for w in r.json())
    except httpx.HTTPError:
        return False


def _forget_workers(ctx: Context, pool: str) -> None:
    """Delete the pool's worker records, so readiness means *this* worker registered."""
    try:
        with api_client(ctx) as client:
            r = client.post(f"/work_pools/{pool}/workers/filter", json={})
            for w in r.json() if r.status_code == 200 else []:
                client.delete(f"/work_pools/{pool}/workers/{w['name']}")
    except httpx.HTTPError:
        pass


@contextmanager
def running_worker(
    ctx: Context,
    kind: WorkerKind,
    pool: str,
    limit: int,
    workdir: Path,
    ready_timeout: float = 90,
    api: dict[str, str] | None = None,
) -> Iterator[RunningWorker]:
    """Start one worker for `pool`, wait until it registered, stop it (and its runs) after.
    `api`: Prefect client settings that replace the worker's own (its runs inherit them),
    e.g. another way to the same API (benchmarks/gate_path.py)."""
    home = workdir / f"worker-{kind.key}-{pool}"
    home.mkdir(parents=True, exist_ok=True)
    argv, env, cwd, name = _command(ctx, kind, pool, limit, home)
    env = {**env, **(api or {})}
    _forget_workers(ctx, pool)
    log = home / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            env={**procs.clean_env(), **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    worker = RunningWorker(kind, pool, name, process, log)
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{kind.key} worker exited ({process.returncode}):\n{tail(log)}")
            return registered(ctx, pool, name)

        if not wait_until(up, ready_timeout):
            raise RuntimeError(f"{kind.key} worker not registered after {ready_timeout} s")
        yield worker
    finally:
        # INT is what stops a Prefect 3.9 worker (it ignores TERM), as the platform does.
        procs.stop_tree(process.pid)
        process.poll()
