"""Redis clients built from the settings: the one place that knows redis://, rediss://,
the embedded Redis and Sentinel.

With a `sentinel://` URL a client asks the Sentinels for the current primary whenever it
opens a connection, and a connection that finds its server demoted is dropped: after a
failover each client follows the new primary by itself, with no restart.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from emailq import embedded_redis
from emailq.settings import SentinelUrl, Settings


def resolve_redis_url(settings: Settings) -> str:
    """`EMAILQ_REDIS_URL`, or else the embedded Redis: started if need be by the `emailq`
    command, used only if already running by a web app (raises ConfigError otherwise)."""
    if settings.redis_url is not None:
        return str(settings.redis_url)
    return embedded_redis.url(settings.data_dir)


def is_sentinel(settings: Settings) -> bool:
    return isinstance(settings.redis_url, SentinelUrl)


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client for the Redis that holds the queue: the URL's server, or, on Sentinel, the
    current primary of `EMAILQ_REDIS_SENTINEL_MASTER`. `options` are redis-py connection
    options (timeouts, retry, health checks)."""
    url = settings.redis_url
    if isinstance(url, SentinelUrl):
        return sentinel(settings, **options).master_for(_master(settings), redis_class=redis.Redis)
    return redis.Redis.from_url(resolve_redis_url(settings), **options)


def sentinel(settings: Settings, **options: Any) -> Sentinel:
    """The Sentinels of a `sentinel://` URL. `options` apply to the primary's connections
    (with the URL's password and database); the Sentinels get the same timeouts, their own
    password (`EMAILQ_REDIS_SENTINEL_PASSWORD`) and no retries of their own: asking the
    next Sentinel is the retry."""
    url = settings.redis_url
    assert isinstance(url, SentinelUrl)
    to_sentinels: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    to_sentinels["retry"] = Retry(NoBackoff(), 0)
    if settings.redis_sentinel_password is not None:
        to_sentinels["password"] = settings.redis_sentinel_password.get_secret_value()
    primary = {"username": url.username, "password": url.password, "db": url.db, **options}
    return Sentinel(list(url.sentinels), sentinel_kwargs=to_sentinels, **primary)


def _master(settings: Settings) -> str:
    assert settings.redis_sentinel_master is not None  # the settings check it
    return settings.redis_sentinel_master


def primary_pool(settings: Settings, **options: Any) -> tuple[Sentinel, SentinelConnectionPool]:
    """The Sentinels and a connection pool that follows the primary (for kombu's channel)."""
    manager = sentinel(settings, **options)
    pool = manager.master_for(_master(settings), redis_class=redis.Redis).connection_pool
    return manager, pool


def primary_address(client: redis.Redis) -> str | None:
    """`host:port` of the primary a Sentinel-managed client talks to now; None for a
    client of a plain URL."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    host, port = pool.get_master_address()
    return f"{host}:{port}"


def confirm_writes(client: redis.Redis, replicas: int, timeout: float) -> int:
    """`WAIT replicas timeout`: how many replicas hold every write this client made (on a
    client used by one thread, which reuses one connection). 0 wanted: no wait."""
    if replicas <= 0:
        return 0
    return int(client.execute_command("WAIT", replicas, max(1, int(timeout * 1000))))
