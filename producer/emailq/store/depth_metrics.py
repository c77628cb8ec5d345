"""The queue, in-flight, schedule and DLQ depth gauges, read from Redis at scrape time.

Any process that can reach Redis reports the same numbers, so the ingest and the worker
each register them in their own registry (`emailq.ingest.metrics`, `emailq.worker.metrics`).
Needs prometheus-client (the `worker` and `ingest` extras).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from emailq.store import census
from emailq.store.keys import Keys


class DepthCollector(Collector):
    """Queue, in-flight, schedule and DLQ depths, read from Redis when scraped."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._redis = client
        self._keys = keys

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            now = census.count(self._redis, self._keys)
        except redis.RedisError:
            return  # Redis down: no depth rather than a wrong one
        depth = GaugeMetricFamily("emailq_queue_depth", "Emails waiting on the queue, by lane.", labels=["lane"])
        depth.add_metric(["interactive"], now.queued - now.queued_bulk)
        depth.add_metric(["bulk"], now.queued_bulk)
        yield depth
        oldest = GaugeMetricFamily("emailq_queue_oldest_seconds", "Age of the oldest email waiting, by lane.", labels=["lane"])
        try:
            oldest.add_metric(["interactive"], census.oldest_age(self._redis, self._keys.interactive))
            oldest.add_metric(["bulk"], census.oldest_age(self._redis, self._keys.bulk))
        except redis.RedisError:
            return
        yield oldest
        yield GaugeMetricFamily("emailq_in_flight", "Emails taken by workers, not yet settled.", value=now.in_flight)
        yield GaugeMetricFamily("emailq_scheduled", "Emails waiting in the retry schedule.", value=now.scheduled)
        yield GaugeMetricFamily("emailq_dlq_depth", "Emails in the dead-letter queue.", value=now.dead_lettered)


def watch_depths(client: redis.Redis, keys: Keys, registry: CollectorRegistry) -> None:
    """Report the depths of the queue `keys` names in `registry`."""
    registry.register(DepthCollector(client, keys))
