"""What the ingest answers to one `POST /`, whatever server or framework carries it.

Logto sends `POST <url>` with `Authorization: <configured value>` and the JSON body
`{"to", "type", "payload"}`, and needs a 2xx at once; we validate, enqueue and answer
`202 {"id": ...}`. Refusals are JSON `{"error": ...}`: 400 bad JSON or Idempotency-Key,
401 wrong Authorization, 409 Idempotency-Key reused for another email, 413 too large,
422 not a valid email, 503 Redis unavailable (saying whether the email may have been
enqueued).

A client that retries (a timeout, a 503) sends an `Idempotency-Key` header to have each
email enqueued at most once: a repeat within EMAILQ_MESSAGE_TTL_SECONDS answers 202
with the first id and enqueues nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from emailq.enqueue_async import AsyncProducer
from emailq.errors import IdempotencyConflict, InvalidMessage, QueueUnavailable
from emailq.ingest import metrics
from emailq.ingest.coalesce import CoalescedPush
from emailq.settings import Settings

log = logging.getLogger("emailq.ingest")

# Room for JSON whitespace around a maximal message; anything larger is refused unread.
_BODY_SLACK = 4096

# Visible ASCII with inner spaces, as Stripe's keys or the IETF draft's quoted UUIDs are.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)

# One log line per email while that is cheap; beyond this many a second, one line a second
# says how many more were enqueued (a line costs about as much as validating the email).
LINES_PER_SECOND = 20


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def render(self) -> bytes:
        """The body as Starlette's JSONResponse renders it."""
        return _render(self.body).encode()


# Built once: `json.dumps` with options builds an encoder per call.
_render = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _refuse(status: int, error: str, **extra: object) -> Answer:
    metrics.REJECTED_INPUT.labels(str(status)).inc()
    return Answer(status, {"error": error, **extra})


def _unavailable(error: QueueUnavailable, keyed: bool) -> str:
    if not error.maybe_enqueued:
        return "the queue is unavailable; nothing was enqueued; retry later"
    if keyed:
        return "the queue did not answer in time: the email may have been enqueued; retry with the same Idempotency-Key"
    return (
        "the queue did not answer in time: the email may have been enqueued, and a retry may "
        "send it twice (send an Idempotency-Key header to retry safely)"
    )


class Accept:
    """Answers one POST: `await accept(headers, chunks)`, with `headers` keyed in lower case
    and `chunks` the body as it arrives (it is not read past the size limit)."""

    def __init__(self, settings: Settings, producer: AsyncProducer):
        self.producer = producer
        self.limit = settings.max_message_bytes + _BODY_SLACK
        self._expected = settings.ingest_authorization.get_secret_value().encode() if settings.ingest_authorization else None
        if self._expected is None:
            log.warning("EMAILQ_INGEST_AUTHORIZATION is not set: anyone who can reach this port can send email")
        self._log = SampledLog()
        self._enqueued = metrics.ENQUEUED.labels("ingest")
        self.writes = CoalescedPush(producer)

    async def __call__(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> Answer:
        if self._expected is not None:
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                return _refuse(401, "wrong or missing Authorization header")
        key = headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return _refuse(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
        limit = self.limit
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _refuse(413, f"body larger than {limit} bytes")
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                return _refuse(413, f"body larger than {limit} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _refuse(400, "body is not valid JSON (UTF-8)")
        try:
            if key is None:
                message_id, enqueued = await self._send(data), True
            else:
                message_id, enqueued = await self.producer.send_once(data, key)
        except InvalidMessage as error:
            return _refuse(422, "invalid email", problems=error.problems)
        except IdempotencyConflict:
            return _refuse(409, "this Idempotency-Key was already used for a different email")
        except QueueUnavailable as error:
            return _refuse(503, _unavailable(error, key is not None))
        if not enqueued:
            return Answer(202, {"id": message_id}, {"Idempotent-Replayed": "true"})
        self._enqueued.inc()
        self._log.enqueued(message_id)
        return Answer(202, {"id": message_id})

    async def _send(self, data: Any) -> str:
        """`AsyncProducer.send`: the same validation, envelope, lane and errors, with the
        write coalesced with other requests' (`CoalescedPush`)."""
        [message_id], [email] = self.producer._batch([data], False)
        await self.writes.push(email)
        return message_id


class SampledLog:
    """`enqueued <id>` for each email, up to LINES_PER_SECOND a second; past that, one
    line a second with how many more were enqueued."""

    def __init__(self) -> None:
        self._second = 0
        self._lines = 0
        self._unlogged = 0

    def enqueued(self, message_id: str) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines < LINES_PER_SECOND:
            self._lines += 1
            log.info("enqueued %s", message_id)
            return
        if self._unlogged == 0:
            asyncio.get_running_loop().call_later(1.0, self._summary)
        self._unlogged += 1

    def _summary(self) -> None:
        log.info("enqueued %d more emails (%d a second are logged one by one)", self._unlogged, LINES_PER_SECOND)
        self._unlogged = 0
