"""The `emailq.deliver` task: one email from the queue to the endpoint, or to the DLQ.

A task that dead-letters raises `DeadLettered`, so Celery records it as failed and
Flower lists it with the reason; the message is acked either way (it is safe in the DLQ).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from pydantic import ValidationError

from emailq import metrics
from emailq.enqueue import resolve_redis_url
from emailq.message import Envelope
from emailq.settings import get_settings
from emailq.task_message import TASK_NAME
from emailq.worker.app import app
from emailq.worker.dead_letters import RAW_LIMIT, DeadLetter, DeadLetters
from emailq.worker.delivery import Deliverer, Outcome
from emailq.worker.failure_events import FailureEvents

log = logging.getLogger("emailq.worker")
T = TypeVar("T")


class DeadLettered(Exception):
    """The email could not be delivered and is now in the dead-letter queue."""


def _one_per_process(factory: Callable[[], T]) -> Callable[[], T]:
    # The pool's threads start together: without the lock each could build its own
    # client and circuit breaker.
    lock = threading.Lock()
    cached = functools.cache(factory)

    def get() -> T:
        with lock:
            return cached()

    return get


@_one_per_process
def deliverer() -> Deliverer:
    return Deliverer(get_settings())


@_one_per_process
def dead_letters() -> DeadLetters:
    settings = get_settings()
    client = redis.Redis.from_url(resolve_redis_url(settings), health_check_interval=10)
    return DeadLetters(client, settings.queue)


@_one_per_process
def failure_events() -> FailureEvents:
    return FailureEvents(app)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, throws=(DeadLettered,))
def deliver(task: Any, envelope: Any) -> None:
    try:
        parsed = Envelope.model_validate(envelope, context={"from_queue": True})
    except ValidationError as error:
        entry = DeadLetter(
            id=_id_of(envelope),
            reason="malformed",
            detail=f"invalid envelope: {error.error_count()} problem(s), first: "
            f"{'.'.join(map(str, error.errors()[0]['loc']))}: {error.errors()[0]['msg']}",
            raw=str(envelope)[:RAW_LIMIT],
        )
    else:
        outcome = deliverer().deliver(parsed)
        if outcome.attempts > 1:
            metrics.RETRIED.inc(outcome.attempts - 1)
        if outcome.delivered:
            metrics.DELIVERED.inc()
            metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - parsed.created_at))
            log.info("delivered %s in %d attempt(s)", parsed.id, outcome.attempts)
            return
        entry = _entry(parsed, outcome)
    dead_letters().add(entry)
    metrics.DEAD_LETTERED.labels(entry.reason).inc()
    error = DeadLettered(entry.summary())
    log.warning("dead-lettered %s: %s", entry.id, error)
    if get_settings().task_events == "failures":
        failure_events().announce(task.request, repr(error))
    raise error


def _entry(envelope: Envelope, outcome: Outcome) -> DeadLetter:
    return DeadLetter(
        id=envelope.id,
        reason=outcome.reason or "exhausted",
        detail=outcome.error,
        status=outcome.status,
        response_excerpt=outcome.excerpt,
        attempts=envelope.attempts + outcome.attempts,
        first_attempt_at=outcome.first_attempt_at,
        last_attempt_at=outcome.last_attempt_at,
        envelope=envelope.dump(),
    )


def _id_of(envelope: Any) -> str:
    if isinstance(envelope, dict) and isinstance(envelope.get("id"), str):
        return envelope["id"]
    return deliver.request.id
