"""Prometheus metrics of the ingest and the worker, and the queue/DLQ depth gauges.

Each process exposes its own registry: the ingest on its `/metrics` route, the worker on
`EMAILQ_METRICS_PORT`. Depths are read from Redis at scrape time, so any process that can
reach Redis reports the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from emailq import census
from emailq.keys import Keys

REGISTRY = CollectorRegistry(auto_describe=False)

ENQUEUED = Counter("emailq_enqueued", "Emails accepted onto the queue.", ["source"], registry=REGISTRY)
REJECTED_INPUT = Counter("emailq_ingest_rejected", "Ingest requests refused, by HTTP status.", ["status"], registry=REGISTRY)
DELIVERED = Counter("emailq_delivered", "Emails the endpoint accepted (2xx).", registry=REGISTRY)
RETRIED = Counter("emailq_retried", "Delivery attempts that failed and were retried.", registry=REGISTRY)
DEAD_LETTERED = Counter("emailq_dead_lettered", "Emails moved to the dead-letter queue, by reason.", ["reason"], registry=REGISTRY)
DLQ_DROPPED = Counter(
    "emailq_dlq_dropped",
    "Dead letters dropped by the retention policy, by why: count or age.",
    ["why"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge("emailq_breaker_open", "1 while deliveries are held because the endpoint looks down.", registry=REGISTRY)
DELIVERY_SECONDS = Histogram(
    "emailq_delivery_seconds",
    "From enqueue to the endpoint's 2xx.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)


class DepthCollector(Collector):
    """Queue, in-flight, schedule and DLQ depths, read from Redis when scraped."""

    def __init__(self, client: redis.Redis, queue: str):
        self._redis = client
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            now = census.count(self._redis, self._queue)
        except redis.RedisError:
            return  # Redis down: no depth rather than a wrong one
        depth = GaugeMetricFamily("emailq_queue_depth", "Emails waiting on the queue, by lane.", labels=["lane"])
        depth.add_metric(["interactive"], now.queued - now.queued_bulk)
        depth.add_metric(["bulk"], now.queued_bulk)
        yield depth
        oldest = GaugeMetricFamily("emailq_queue_oldest_seconds", "Age of the oldest email waiting, by lane.", labels=["lane"])
        keys = Keys(self._queue)
        try:
            oldest.add_metric(["interactive"], census.oldest_age(self._redis, keys.queue))
            oldest.add_metric(["bulk"], census.oldest_age(self._redis, keys.bulk))
        except redis.RedisError:
            return
        yield oldest
        yield GaugeMetricFamily("emailq_in_flight", "Emails taken by workers, not yet settled.", value=now.in_flight)
        yield GaugeMetricFamily("emailq_scheduled", "Emails waiting in the retry schedule.", value=now.scheduled)
        yield GaugeMetricFamily("emailq_dlq_depth", "Emails in the dead-letter queue.", value=now.dead_lettered)


def watch_depths(client: redis.Redis, queue: str) -> None:
    REGISTRY.register(DepthCollector(client, queue))
