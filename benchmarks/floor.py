"""Celery's own floor: a task that does no HTTP.

It sleeps for the endpoint's latency (BENCH_SLEEP_SECONDS: 0 or 0.05) and notes when it
ran, so it is the best any HTTP client could do inside the same Celery setup.

BENCH_FLOOR_CONFIG picks the setup:

- `emailq` (default): exactly emailq's Celery configuration, `worker.app.celery_config`
  (threads pool at EMAILQ_CONCURRENCY, late acks, prefetch x1, task events, emailq's
  transport and consumer), read from the same EMAILQ_* variables. emailq's worker and this
  floor then differ in the task body, and in the path Celery runs it on: this task takes
  Celery's own (Request, tracer), emailq's its lean one (`emailq.worker.celery_glue.strategy`).
- `celery`: Celery's defaults, as the naive app has them (prefork, early acks, prefetch x4).

Each process appends `<bid> <unix time>` lines to BENCH_RECORD_DIR/floor-<pid>.log.

    celery -A benchmarks.floor:app worker
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from benchmarks.messages import FLOOR_TASK


def _app() -> Celery:
    if os.environ.get("BENCH_FLOOR_CONFIG", "emailq") == "celery":
        app = Celery("floor", broker=os.environ["BENCH_REDIS_URL"])
        app.conf.task_default_queue = os.environ["BENCH_QUEUE"]
        return app
    from emailq.settings import get_settings
    from emailq.worker.celery_glue.app import celery_config

    # emailq's heartbeat and sweeps (started on `worker_ready`): its transport takes
    # nothing without them, and emailq's worker pays for them too.
    import emailq.worker.celery_glue.tasks  # noqa: F401

    app = Celery("floor")
    app.conf.update(celery_config(get_settings()))
    # Experiments only (benchmarks.tune): Celery settings emailq's code would have to change.
    app.conf.update(json.loads(os.environ.get("BENCH_CELERY_OVERRIDES", "{}")))
    return app


app = _app()
_sleep = float(os.environ.get("BENCH_SLEEP_SECONDS", "0"))
_record_fd: int | None = None


@app.task(name=FLOOR_TASK)
def floor(message: dict[str, Any]) -> None:
    if _sleep:
        time.sleep(_sleep)
    _record(message["payload"]["bid"])


def _record(bid: str) -> None:
    # One O_APPEND file per process: a write this small is atomic (threads may share it)
    # and costs one syscall, far less than the HTTP round trip it stands in for.
    global _record_fd
    if _record_fd is None:
        path = os.path.join(os.environ["BENCH_RECORD_DIR"], f"floor-{os.getpid()}.log")
        _record_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_record_fd, f"{bid} {time.time()!r}\n".encode())
