"""The HTTP ingest: what Logto's HTTP email connector POSTs to.

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

import hmac
import json
import logging
import re

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emailq.ingest import metrics
from emailq.store.depth_metrics import watch_depths
from emailq.enqueue import connect
from emailq.enqueue_async import AsyncProducer
from emailq.errors import IdempotencyConflict, InvalidMessage, QueueUnavailable
from emailq.store.keys import Keys
from emailq.message import Email
from emailq.settings import Settings

log = logging.getLogger("emailq.ingest")

# Room for JSON whitespace around a maximal message; anything larger is refused unread.
_BODY_SLACK = 4096

# Visible ASCII with inner spaces, as Stripe's keys or the IETF draft's quoted UUIDs are.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Enqueue this email at most once per key (for EMAILQ_MESSAGE_TTL_SECONDS): "
    "a repeat answers 202 with the first id; the same key with another email, 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def _refuse(status: int, error: str, **extra: object) -> JSONResponse:
    metrics.REJECTED_INPUT.labels(str(status)).inc()
    return JSONResponse({"error": error, **extra}, status_code=status)


async def _unready(producer: AsyncProducer) -> str | None:
    """Why the ingest cannot take emails now, or None. A full Redis still answers PING but
    refuses every enqueue (`noeviction`), so memory is checked too."""
    try:
        memory = await producer.redis.info("memory")
    except redis.RedisError:
        return "redis unreachable"
    limit = int(memory.get("maxmemory") or 0)
    if limit and memory.get("maxmemory_policy") == "noeviction" and int(memory.get("used_memory", 0)) >= limit:
        return "redis is full"
    return None


def _unavailable(error: QueueUnavailable, keyed: bool) -> str:
    if not error.maybe_enqueued:
        return "the queue is unavailable; nothing was enqueued; retry later"
    if keyed:
        return "the queue did not answer in time: the email may have been enqueued; retry with the same Idempotency-Key"
    return (
        "the queue did not answer in time: the email may have been enqueued, and a retry may "
        "send it twice (send an Idempotency-Key header to retry safely)"
    )


def create_app(settings: Settings, producer: AsyncProducer | None = None) -> FastAPI:
    """The ingest's ASGI app. Emails are enqueued on the event loop (`AsyncProducer`), with
    no thread hop per request; `/metrics` reads the depths with a blocking client of its
    own, in FastAPI's thread pool (prometheus-client's collectors are synchronous)."""
    producer = producer or AsyncProducer(settings)
    probes = connect(settings)
    watch_depths(probes, Keys.of(settings), metrics.REGISTRY)
    expected = settings.ingest_authorization.get_secret_value().encode() if settings.ingest_authorization else None
    if expected is None:
        log.warning("EMAILQ_INGEST_AUTHORIZATION is not set: anyone who can reach this port can send email")
    limit = settings.max_message_bytes + _BODY_SLACK
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await producer.aclose()
        probes.close()

    app = FastAPI(
        lifespan=lifespan,
        title="emailq ingest",
        version="1",
        description="Accepts the request of Logto's HTTP email connector and queues the email.",
    )

    @app.post(
        "/",
        status_code=202,
        summary="Queue one email (Logto's SendMessageData)",
        openapi_extra={
            "parameters": [_IDEMPOTENCY_PARAMETER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Email.model_json_schema()}},
            },
        },
        responses={
            202: {"description": "Queued (or already queued under this Idempotency-Key); the id is the Idempotency-Key the endpoint will see"},
            400: {"description": "Not JSON, or a malformed Idempotency-Key"},
            401: {"description": "Wrong or missing Authorization"},
            409: {"description": "Idempotency-Key already used for a different email"},
            413: {"description": "Body too large"},
            422: {"description": "Not a valid email"},
            503: {"description": "Queue unavailable; retry (with the same Idempotency-Key if the error says the email may have been enqueued)"},
        },
    )
    async def send(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _refuse(401, "wrong or missing Authorization header")
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return _refuse(400, "Idempotency-Key must be 1 to 255 printable ASCII characters")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _refuse(413, f"body larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _refuse(413, f"body larger than {limit} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _refuse(400, "body is not valid JSON (UTF-8)")
        try:
            if key is None:
                message_id, enqueued = await producer.send(data), True
            else:
                message_id, enqueued = await producer.send_once(data, key)
        except InvalidMessage as error:
            return _refuse(422, "invalid email", problems=error.problems)
        except IdempotencyConflict:
            return _refuse(409, "this Idempotency-Key was already used for a different email")
        except QueueUnavailable as error:
            return _refuse(503, _unavailable(error, key is not None))
        if not enqueued:
            return JSONResponse({"id": message_id}, status_code=202, headers={"Idempotent-Replayed": "true"})
        metrics.ENQUEUED.labels("ingest").inc()
        log.info("enqueued %s", message_id)
        return JSONResponse({"id": message_id}, status_code=202)

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: Redis reachable and not full", responses={503: {"description": "Redis unreachable or full"}})
    async def readyz() -> Response:
        problem = await _unready(producer)
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": problem}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
