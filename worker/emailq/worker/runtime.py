"""The worker process's shared objects, built once from the settings.

The consumer (the kombu transport, on Celery's event loop) and the tasks (in the pool's
threads) meet here: both see the same in-flight records, circuit breaker and Redis
client, whichever reconnects or restarts around them.

The HTTP client is chosen here too: the one `EMAILQ_HTTP_CLIENT` names
(`delivery.build_client`), unless a program that runs the worker in its own process
(a benchmark, an embedding) brings its own `HttpClient` with `use_http_client` first.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from emailq.store.keys import Keys
from emailq.store.trace import TraceLimits
from emailq.store.redis_client import redis_client
from emailq.settings import Settings, get_settings
from emailq.worker import metrics
from emailq.worker.delivery.circuit_breaker import CircuitBreaker
from emailq.worker.delivery.endpoints import FALLBACK, PRIMARY
from emailq.worker.delivery.failover import Failover
from emailq.worker.places.dead_letters import DeadLetters
from emailq.worker.delivery.deliverer import Deliverer, build_client
from emailq.worker.delivery.http_client import HttpClient
from emailq.worker.places.in_flight import InFlight
from emailq.worker.places.retry_schedule import RetrySchedule

_lock = threading.Lock()

# Connections the Redis client may open beyond one per pool thread (each thread moves its
# email in one command, at any moment): the housekeeper, the acker, the consumer's own
# calls (registration, dead-lettering what is no email), metrics. redis-py's default cap
# (100) made a pool of 256 threads, all moving failed emails at once, meet
# "Too many connections", and their moves waited for the housekeeper's next round.
SPARE_CONNECTIONS = 16
_pool_threads = 0  # the pool's size, once it exists (`emailq worker -c` may differ from the setting)

HttpClientFactory = Callable[[Settings], HttpClient]
_http_client_factory: HttpClientFactory = build_client


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        # A short socket timeout: a Redis that stalls must not hang a thread for long. On
        # Sentinel, the client follows the primary across a failover.
        self.redis = redis_client(
            settings,
            socket_timeout=5,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=10,
            max_connections=max(settings.concurrency, _pool_threads) + SPARE_CONNECTIONS,
        )
        keys = Keys.of(settings)
        trace = TraceLimits.of(settings)
        self.in_flight = InFlight(self.redis, settings.redis_key_prefix, trace=trace)
        self.schedule = RetrySchedule(self.redis, keys, trace=trace)
        self.dead_letters = DeadLetters(
            self.redis,
            keys,
            max_entries=settings.dlq_max_entries,
            max_age_seconds=settings.dlq_max_age_seconds,
            trace=trace,
        )
        # One endpoint: the breaker counts failed attempts per email, as it always has.
        # With a fallback, each endpoint's breaker is judged on its own POSTs, and this
        # gates the consumer only while every endpoint is open (`failover.py`).
        self.failover: Failover | None = None
        self.breaker: CircuitBreaker | Failover
        if settings.fallback_endpoint_url is None:
            self.breaker = CircuitBreaker(
                settings.breaker_threshold,
                settings.breaker_probe_seconds,
                on_change=lambda is_open: metrics.BREAKER_OPEN.labels(PRIMARY).set(int(is_open)),
            )
        else:
            self.failover = self.breaker = Failover(
                settings.breaker_threshold,
                settings.breaker_probe_seconds,
                settings.fallback_only,
                on_change=lambda name, is_open: metrics.BREAKER_OPEN.labels(name).set(int(is_open)),
            )

        for name in (PRIMARY,) if self.failover is None else (PRIMARY, FALLBACK):
            metrics.BREAKER_OPEN.labels(name).set(0)  # shown from the start, not once it first opens

    @functools.cached_property
    def deliverer(self) -> Deliverer:
        """Built at the first delivery, with the client `use_http_client` chose."""
        return Deliverer(self.settings, client=_http_client_factory(self.settings), failover=self.failover, stopping=_stopping)


def _stopping() -> bool:
    """Whether Celery began a warm or cold shutdown: its signal handlers set these to the
    exit code, 0 included (so not a truth test: Celery's own `maybe_shutdown` reads them so)."""
    from celery.worker import state

    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


_runtime: Runtime | None = None


def use_http_client(factory: HttpClientFactory) -> None:
    """Make this process POST through `factory(settings)`, an `HttpClient`
    (`emailq.worker.delivery.http_client`), instead of the client `EMAILQ_HTTP_CLIENT` names.
    Call it before the worker starts in this process (`emailq.worker.commands.cli.main`); once the
    first delivery built the Deliverer, it raises RuntimeError rather than be ignored."""
    global _http_client_factory
    if _runtime is not None and "deliverer" in vars(_runtime):
        raise RuntimeError("use_http_client: this process has already built its HTTP client")
    _http_client_factory = factory


def reserve_threads(threads: int) -> None:
    """Room in the Redis client's connection pool for `threads` pool threads moving emails
    at once (the worker's pool calls it with its size)."""
    global _pool_threads
    with _lock:
        _pool_threads = max(_pool_threads, threads)
        if _runtime is not None:
            pool = _runtime.redis.connection_pool
            pool.max_connections = max(pool.max_connections, threads + SPARE_CONNECTIONS)


def get() -> Runtime:
    """This process's runtime; the pool's threads start together, hence the lock."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(get_settings())
    return _runtime
