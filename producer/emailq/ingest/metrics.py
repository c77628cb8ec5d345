"""Prometheus metrics of the ingest, served on its `/metrics` route: what it accepted and
refused, and the depth gauges (`emailq.store.depth_metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=False)

ENQUEUED = Counter("emailq_enqueued", "Emails accepted onto the queue.", ["source"], registry=REGISTRY)
REJECTED_INPUT = Counter("emailq_ingest_rejected", "Ingest requests refused, by HTTP status.", ["status"], registry=REGISTRY)
