"""The worker's Prometheus metrics, served on `EMAILQ_METRICS_PORT` (`observability`).

The worker has its own registry: its counters say what this process delivered, retried
and dead-lettered. The queue/DLQ depth gauges are the producer's (`emailq.store.depth_metrics`),
read from Redis at scrape time, registered here too so that either process reports them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=False)

# `endpoint` is primary or fallback (`EMAILQ_FALLBACK_ENDPOINT_URL`): the one that answered.
DELIVERED = Counter("emailq_delivered", "Emails an endpoint accepted (2xx), by endpoint.", ["endpoint"], registry=REGISTRY)
RETRIED = Counter("emailq_retried", "Deliveries that failed and were retried, by the endpoint of the last attempt.", ["endpoint"], registry=REGISTRY)
FAILED_OVER = Counter(
    "emailq_failed_over",
    "Attempts on the primary that failed with an outage or a 429 and were made again on the fallback at once.",
    registry=REGISTRY,
)
DEAD_LETTERED = Counter("emailq_dead_lettered", "Emails moved to the dead-letter queue, by reason.", ["reason"], registry=REGISTRY)
DLQ_DROPPED = Counter(
    "emailq_dlq_dropped",
    "Dead letters dropped by the retention policy, by why: count or age.",
    ["why"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "emailq_breaker_open",
    "1 while the endpoint's circuit breaker is open (it looks down: emails go to the other one, or wait).",
    ["endpoint"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "emailq_delivery_seconds",
    "From enqueue to the endpoint's 2xx.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
