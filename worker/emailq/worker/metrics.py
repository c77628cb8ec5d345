"""The worker's Prometheus metrics, served on `EMAILQ_METRICS_PORT` (`observability`).

The worker has its own registry: its counters say what this process delivered, retried
and dead-lettered. The queue/DLQ depth gauges are the producer's (`emailq.store.depth_metrics`),
read from Redis at scrape time, registered here too so that either process reports them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=False)

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
