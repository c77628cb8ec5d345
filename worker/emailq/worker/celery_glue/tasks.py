"""The `emailq.deliver` task: one attempt, then the email moves on in one atomic step.

Delivered: acked. A retryable failure: into the retry schedule with one more attempt
spent, and the thread is free at once. Anything else: the DLQ, with every attempt's
outcome; Flower lists it as a failed task with the reason (`failure_events.py`), and the
task raises `DeadLettered`, which either path that runs it (`strategy.py`) expects. An
unexpected exception in the delivery dead-letters the email as `error` too.
If Redis cannot take the move yet (full, unreachable), the email stays in this worker's
in-flight list and the worker repeats the move until Redis takes it: it is never acked
unmoved, and no thread waits for it.

Each move goes through the in-flight record the consumer handed the task with the
message (`strategy.TAKEN`), never through a lookup by the message's headers. An envelope
in a format newer than this worker's is neither sent nor dead-lettered: it waits in the
schedule, as it was, for an upgraded worker (`emailq.message.newer_format`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import signals
from pydantic import ValidationError

from emailq.errors import EmailqError
from emailq.store.keys import Keys
from emailq.message import ENVELOPE_FORMAT, Envelope, newer_format
from emailq.task_message import TASK_NAME, task_message
from emailq.worker import metrics, runtime
from emailq.worker.places import taking
from emailq.worker.celery_glue.app import app
from emailq.worker.places.dead_letters import RAW_LIMIT, DeadLetter
from emailq.worker.delivery.deliverer import Outcome
from emailq.worker.celery_glue.failure_events import FailureEvents
from emailq.worker.celery_glue.strategy import TAKEN
from emailq.worker.places.housekeeping import Housekeeper
from emailq.worker.places.in_flight import Taken

log = logging.getLogger("emailq.worker")


class DeadLettered(EmailqError):
    """The email could not be delivered and is now in the dead-letter queue."""


# How long an email in a newer envelope format waits before a worker takes it again.
NEWER_FORMAT_RETRY_SECONDS = 10

_failure_events = FailureEvents(app)
_housekeeper: Housekeeper | None = None


# Celery runs it on emailq's lean path (`strategy.py`), or its own with the masked request.
@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    throws=(DeadLettered,),
    Strategy="emailq.worker.celery_glue.strategy:lean",
    Request="emailq.worker.celery_glue.strategy:MaskedRequest",
)
def deliver(task: Any, envelope: Any) -> None:
    rt = runtime.get()
    # The record of this very message, handed over by the consumer (`strategy.py`).
    taken: Taken | None = getattr(task.request, TAKEN, None)
    if taken is None:
        # Nothing to settle it through, so not sent: an ack of a message without a record
        # changes nothing in Redis, and an email left in this worker's in-flight list
        # without a record goes back to its lane at the Housekeeper's next scans.
        rt.breaker.skipped()
        log.error("%s[%s]: this worker holds no in-flight record of the message; not delivered here", task.name, task.request.id)
        return
    if taken.lost:
        # Taken back while this worker was taken for dead (`heartbeat.py`): another
        # worker has it now, and posting it from here too would only send it twice.
        log.info("%s is no longer this worker's (taken back while it was taken for dead): not sent from here", task.request.id)
        return
    version = newer_format(envelope)
    if version is not None:
        _give_back_for_a_newer_worker(task, taken, version)
        return
    try:
        parsed = Envelope.model_validate(envelope, context={"from_queue": True})
    except ValidationError as error:
        rt.breaker.skipped()
        first = error.errors()[0]
        detail = f"invalid envelope: {error.error_count()} problem(s), first: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        # The queue item as it was: what `dlq replay` puts back.
        raw = taken.item.decode("utf-8", errors="replace")[:RAW_LIMIT]
        _dead_letter(task, taken, DeadLetter(id=_id_of(task, envelope), reason="malformed", detail=detail, raw=raw))
        return
    try:
        outcome = rt.deliverer.deliver(parsed)
    except Exception as error:  # a bug must not lose the email: keep it, say what happened
        detail = f"{type(error).__name__}: {_redacted(str(error))}"[:300]
        # The message redacted; the traceback (which repeats the raw message) only at debug.
        log.error("delivery of %s failed unexpectedly: %s", parsed.id, detail)
        log.debug("the unexpected failure of %s", parsed.id, exc_info=True)
        rt.breaker.skipped()
        entry = DeadLetter(
            id=parsed.id,
            reason="error",
            detail=detail,
            attempts=parsed.attempts,
            history=parsed.history,
            envelope=parsed.dump(),
        )
        _dead_letter(task, taken, entry)
        return
    _follow(task, taken, parsed, outcome)


def _follow(task: Any, taken: Taken, envelope: Envelope, outcome: Outcome) -> None:
    rt = runtime.get()
    if not outcome.sent:
        rt.breaker.skipped()
    elif outcome.outage:
        rt.breaker.failed(envelope.id, envelope.attempts + 1)
    else:
        rt.breaker.succeeded()
    if outcome.status == 429 and rt.settings.rate_limit:
        taking.slow_down(rt.redis, Keys.of(rt.settings))
    if outcome.earlier:
        metrics.FAILED_OVER.inc()
    if outcome.delivered:
        metrics.DELIVERED.labels(outcome.endpoint).inc()
        metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - envelope.created_at))
        log.info("delivered %s in %d attempt(s)%s", envelope.id, envelope.attempts + len(outcome.attempts), _by(outcome))
        return
    if outcome.retry_in is not None:
        assert outcome.attempt is not None  # a retry follows an attempt
        retry = envelope
        for attempt in outcome.attempts:  # a failed primary's attempt, then the fallback's
            retry = retry.after(attempt)
        # Back to the lane it came from (the task message's routing key says which).
        message = task_message(retry, taken.lane)
        why = _why(envelope.attempts, outcome)
        if _settle(taken, "retry", lambda t: rt.schedule.add(t.inflight_key, t.item, message, outcome.retry_in or 0, why)):
            metrics.RETRIED.labels(outcome.endpoint).inc()
            log.info(
                "attempt %d of %s failed (%s%s): retrying in %.1fs",
                retry.attempts,
                envelope.id,
                outcome.error,
                _by(outcome, " from the "),
                outcome.retry_in,
            )
        return
    _dead_letter(task, taken, _entry(envelope, outcome))


def _give_back_for_a_newer_worker(task: Any, taken: Taken, version: int) -> None:
    """An envelope of a format newer than this worker's (a producer upgraded before its
    workers): not this worker's to judge. Back to its lane as it was, through the retry
    schedule, so that an upgraded worker takes it, and a cluster of older workers only
    sees it every `NEWER_FORMAT_RETRY_SECONDS`; no attempt is spent."""
    rt = runtime.get()
    rt.breaker.skipped()
    delay = NEWER_FORMAT_RETRY_SECONDS
    why = f"envelope format {version}, for an upgraded worker"
    if _settle(taken, "give-back", lambda t: rt.schedule.add(t.inflight_key, t.item, t.item, delay, why)):
        log.warning(
            "%s is in envelope format %d, newer than this worker's %d: back to its lane in %ds for an upgraded worker (upgrade this one)",
            task.request.id,
            version,
            ENVELOPE_FORMAT,
            delay,
        )


def _dead_letter(task: Any, taken: Taken, entry: DeadLetter) -> None:
    rt = runtime.get()
    if not _settle(taken, "dead-lettering", lambda t: rt.dead_letters.add(entry, taken_from=(t.inflight_key, t.item))):
        return
    metrics.DEAD_LETTERED.labels(entry.reason).inc()
    error = DeadLettered(entry.summary())
    log.warning("dead-lettered %s: %s", entry.id, error)
    if rt.settings.task_events == "failures":
        _failure_events.announce(task.request, repr(error))
    raise error


def _settle(taken: Taken, what: str, move: Callable[[Taken], bool]) -> bool:
    """Move the email out of this worker's in-flight list (into the schedule or the DLQ).
    False when that did not happen now: Redis refused it (the worker repeats it until it
    can; the email stays owned meanwhile), or the email was taken back after a stall."""
    taken.settled = True
    moved: list[bool] = []

    def step(t: Taken) -> None:
        moved.append(move(t))
        if not moved[-1]:
            log.warning("%s was taken back from this worker before its outcome was written", t.message_id)

    return runtime.get().in_flight.move(taken, what, step) and moved[-1]


def _why(before: int, outcome: Outcome) -> str:
    """What `emailq trace` shows of a retry: each attempt of this delivery (two when it
    failed over), its number, what it met and, with a fallback, which endpoint."""
    parts = []
    for number, attempt in enumerate(outcome.attempts, start=before + 1):
        met = f"HTTP {attempt['status']}" if attempt.get("status") is not None else str(attempt.get("error", "")).partition(":")[0][:80]
        parts.append(f"attempt {number}: {met}" + (f" from the {attempt['endpoint']}" if "endpoint" in attempt else ""))
    return "; ".join(parts)


def _by(outcome: Outcome, word: str = " by the ") -> str:
    """Which endpoint, in a log line; nothing when there is no fallback to tell apart."""
    return f"{word}{outcome.endpoint}" if outcome.attempt and "endpoint" in outcome.attempt else ""


def _entry(envelope: Envelope, outcome: Outcome) -> DeadLetter:
    history = [*envelope.history, *outcome.attempts]
    return DeadLetter(
        id=envelope.id,
        reason=outcome.reason or "exhausted",
        detail=outcome.error,
        status=outcome.status,
        response_excerpt=outcome.excerpt,
        attempts=len(history),
        first_attempt_at=history[0]["at"] if history else None,
        last_attempt_at=history[-1]["at"] if history else None,
        history=history,
        envelope=envelope.dump(),
    )


def _redacted(text: str) -> str:
    settings = runtime.get().settings
    for secret in (
        settings.endpoint_authorization,
        settings.signing_secret,
        settings.fallback_endpoint_authorization,
        settings.fallback_signing_secret,
    ):
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text


def _id_of(task: Any, envelope: Any) -> str:
    if isinstance(envelope, dict) and isinstance(envelope.get("id"), str):
        return envelope["id"]
    return str(task.request.id)


@signals.worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    global _housekeeper
    _housekeeper = Housekeeper(runtime.get())
    _housekeeper.start()


@signals.worker_shutdown.connect
def _leave(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()
        _housekeeper.leave()
