"""The worker process's shared objects, built once from the settings.

The consumer (the kombu transport, on Celery's event loop) and the tasks (in the pool's
threads) meet here: both see the same in-flight records, circuit breaker and Redis
client, whichever reconnects or restarts around them.
"""

from __future__ import annotations

import functools
import threading

from emailq.redis_client import redis_client
from emailq.settings import Settings, get_settings
from emailq.worker import metrics
from emailq.worker.circuit_breaker import CircuitBreaker
from emailq.worker.dead_letters import DeadLetters
from emailq.worker.delivery import Deliverer
from emailq.worker.in_flight import InFlight
from emailq.worker.retry_schedule import RetrySchedule

_lock = threading.Lock()


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
        )
        self.in_flight = InFlight(self.redis)
        self.schedule = RetrySchedule(self.redis, settings.queue)
        self.dead_letters = DeadLetters(
            self.redis,
            settings.queue,
            max_entries=settings.dlq_max_entries,
            max_age_seconds=settings.dlq_max_age_seconds,
        )
        self.breaker = CircuitBreaker(
            settings.breaker_threshold,
            settings.breaker_probe_seconds,
            on_change=lambda is_open: metrics.BREAKER_OPEN.set(int(is_open)),
        )

    @functools.cached_property
    def deliverer(self) -> Deliverer:
        return Deliverer(self.settings)


_runtime: Runtime | None = None


def get() -> Runtime:
    """This process's runtime; the pool's threads start together, hence the lock."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(get_settings())
    return _runtime
