"""Celery's consumer, with undecodable and unknown messages dead-lettered, not dropped.

Celery acks (or rejects) such a message and only logs it; we move it to the DLQ as
`malformed` first, in one step out of the in-flight list, so that "delivered or in the
DLQ" holds for every message.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

import redis

from celery.worker.consumer import Consumer as CeleryConsumer

from emailq.worker import runtime
from emailq.worker.places.dead_letters import RAW_LIMIT, DeadLetter

log = logging.getLogger("emailq.worker")

# Seconds between a worker's attempts to reach Redis again. Celery's own wait starts at
# 2 s and grows by 2 s up to 30 s, so after a Sentinel failover (30 s of down-after by
# default) or a Redis restart a worker could sit idle up to 30 s beside a working primary.
# One attempt is one connect (and one question to a Sentinel): cheap enough every second.
RECONNECT_SECONDS = 1.0


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        # Celery calls conn.ensure_connection with kombu's default intervals.
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RECONNECT_SECONDS, interval_step=0, interval_max=RECONNECT_SECONDS
        )
        return super().ensure_connected(conn)

    # Celery's own handlers log a traceback per item and ack or reject it; here each item
    # gets one line, and the ack comes after the DLQ holds it.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if _decodes(message):
            # The exception was not the message's: one raised into the main thread while it
            # decoded, by a signal handler (as Celery's cold shutdown did, before
            # `MaskedRequest.cancel`): back to its lane, not the DLQ.
            log.warning("a message that decodes was reported undecodable (%s); it goes back on the queue", exc)
            runtime.get().in_flight.release(message.delivery_tag)
            message.ack()
            return
        _dead_letter(message, f"undecodable message: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _dead_letter(message, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        _dead_letter(message, f"unknown task {message.headers.get('task')!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _dead_letter(message, f"invalid task message: {exc}")


def _decodes(message: Any) -> bool:
    """Whether kombu decodes `message` now, without errors of its own."""
    try:
        message.decode()
    except Exception:
        return False
    return not getattr(message, "errors", None)


def _dead_letter(message: Any, detail: str) -> None:
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    rt = runtime.get()
    taken = rt.in_flight.get(message.delivery_tag)
    # The queue item as it was (what `dlq replay` puts back), or else the body kombu read.
    raw = taken.item if taken is not None else message.body
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    entry = DeadLetter(id=str(headers.get("id") or uuid.uuid4()), reason="malformed", detail=detail[:300], raw=text[:RAW_LIMIT])
    if taken is None or taken.settled:
        rt.dead_letters.add(entry)
        message.ack()
        return
    try:
        rt.dead_letters.add(entry, taken_from=(taken.inflight_key, taken.item))
    except redis.RedisError as error:
        # Back to the queue rather than acked: it is dead-lettered once Redis has room.
        log.warning("could not dead-letter a malformed message (%s); it goes back on the queue", error)
        rt.in_flight.release(message.delivery_tag)
        message.ack()
        return
    taken.settled = True
    log.warning("dead-lettered %s: malformed: %s", entry.id, entry.detail)
    message.ack()
