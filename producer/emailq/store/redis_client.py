"""Redis clients built from the settings: the one place that knows redis://, rediss://,
the embedded Redis and Sentinel.

With a `sentinel://` URL a client asks the Sentinels for the current primary whenever it
opens a connection, and a connection that finds its server demoted is dropped: after a
failover each client follows the new primary by itself, with no restart.

TLS (`EMAILQ_REDIS_TLS*`) is applied here too, to the Redis servers and to the Sentinels,
so that no client of emailq (producer, ingest, worker, commands, Flower) can miss it.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from emailq.store import embedded_redis
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
    if settings.redis_server_tls():
        options = {**tls_options(settings), **options}
    return redis.Redis.from_url(resolve_redis_url(settings), **options)


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's options for a TLS connection to any server of the settings (a Redis
    server or a Sentinel): the certificate verified, against `EMAILQ_REDIS_TLS_CA_FILE` or
    the system's CAs, and the client certificate, if any. Also kombu's `broker_use_ssl`."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": settings.redis_tls_check_hostname}
    for option, path in (
        ("ssl_ca_certs", settings.redis_tls_ca_file),
        ("ssl_certfile", settings.redis_tls_cert_file),
        ("ssl_keyfile", settings.redis_tls_key_file),
    ):
        if path is not None:
            options[option] = str(path)
    return options


def sentinel_options(settings: Settings, options: dict[str, Any], retry: Any = None) -> dict[str, Any]:
    """redis-py's options for the connections to the Sentinels: the `socket_*` ones of
    `options`, their own password (`EMAILQ_REDIS_SENTINEL_PASSWORD`), TLS if on, and
    `retry` if given (a no-retry policy of the caller's flavour of redis-py: asking the
    next Sentinel is the retry)."""
    to_sentinels: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if retry is not None:
        to_sentinels["retry"] = retry
    if settings.redis_sentinel_password is not None:
        to_sentinels["password"] = settings.redis_sentinel_password.get_secret_value()
    if settings.sentinel_tls():
        to_sentinels.update(ssl=True, **tls_options(settings))
    return to_sentinels


def primary_options(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """redis-py's options for the connections to the Sentinel primary: `options`, with the
    URL's user, password and database, and TLS if on."""
    url = settings.redis_url
    assert isinstance(url, SentinelUrl)
    primary = {"username": url.username, "password": url.password, "db": url.db, **options}
    if settings.redis_server_tls():
        connection_class = options.get("connection_class", redis.SSLConnection)
        # A plain connection class given with ssl=True would quietly win: refuse it.
        if not issubclass(connection_class, redis.SSLConnection):
            raise TypeError(f"EMAILQ_REDIS_TLS is on, but the connection class {connection_class.__name__} is not a TLS one")
        primary.update(ssl=True, **tls_options(settings))
    return primary


def sentinel(settings: Settings, **options: Any) -> Sentinel:
    """The Sentinels of a `sentinel://` URL. `options` apply to the primary's connections
    (`primary_options`); the Sentinels get the same timeouts (`sentinel_options`)."""
    url = settings.redis_url
    assert isinstance(url, SentinelUrl)
    to_sentinels = sentinel_options(settings, options, Retry(NoBackoff(), 0))
    return Sentinel(list(url.sentinels), sentinel_kwargs=to_sentinels, **primary_options(settings, options))


def async_redis_client(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """`redis_client` for asyncio code (the asyncio producer, the ingest, Flower's Broker
    page): the same server, Sentinels, passwords and TLS as the other clients."""
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    url = settings.redis_url
    if isinstance(url, SentinelUrl):
        to_sentinels = sentinel_options(settings, options, AsyncRetry(NoBackoff(), 0))
        manager = AsyncSentinel(list(url.sentinels), sentinel_kwargs=to_sentinels, **primary_options(settings, options))
        return manager.master_for(_master(settings), redis_class=redis.asyncio.Redis)
    if settings.redis_server_tls():
        options = {**tls_options(settings), **options}
    return redis.asyncio.Redis.from_url(resolve_redis_url(settings), **options)


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
