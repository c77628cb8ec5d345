"""The pattern emailq replaces, as the benchmark's peer.

Celery's defaults (prefork pool, one process per core, early acks, prefetch x4) and a task
that calls `httpx.post(url, json=...)` and `raise_for_status()`, retried by
`autoretry_for=(httpx.HTTPError,)`. Configured by BENCH_REDIS_URL, BENCH_QUEUE and
BENCH_ENDPOINT_URL.

    celery -A benchmarks.naive:app worker --concurrency 2
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery

from benchmarks.messages import NAIVE_TASK

app = Celery("naive", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "bench-naive")


@app.task(name=NAIVE_TASK, autoretry_for=(httpx.HTTPError,))
def send_email(message: dict[str, Any]) -> None:
    response = httpx.post(os.environ["BENCH_ENDPOINT_URL"], json=message)
    response.raise_for_status()
