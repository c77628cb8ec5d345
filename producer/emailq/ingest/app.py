"""The HTTP ingest's ASGI app (`emailq serve`): what Logto's HTTP email connector POSTs
to. What a POST answers is `accept.py`'s; this module serves it.

`POST /` is the hot path, inside a user's sign-in: it is answered by a lean ASGI layer
in front of FastAPI, with no routing, request object or thread hop per email. FastAPI
serves everything else (the OpenAPI document, `/healthz`, `/readyz`, `/metrics`) and
declares `POST /` for the document, with the same `Accept` behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emailq.enqueue import connect
from emailq.enqueue_async import AsyncProducer
from emailq.ingest import metrics
from emailq.ingest.accept import IDEMPOTENCY_KEY_PATTERN, Accept, Answer
from emailq.message import Email
from emailq.settings import Settings
from emailq.store.depth_metrics import watch_depths
from emailq.store.keys import Keys

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Enqueue this email at most once per key (for EMAILQ_MESSAGE_TTL_SECONDS): "
    "a repeat answers 202 with the first id; the same key with another email, 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
}


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


_JSON = (b"content-type", b"application/json")
_READ = frozenset({b"authorization", b"idempotency-key", b"content-length"})


class FastPost:
    """ASGI middleware: answers `POST /` with `accept` directly; the rest goes to `app`."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], accept: Accept):
        self.app = app
        self.accept = accept

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        # Only the headers `Accept` reads (ASGI servers give their names in lower case).
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in _READ}

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        answer = await self.accept(headers, chunks())
        body = answer.render()
        raw_headers = [_JSON, (b"content-length", b"%d" % len(body))]
        raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


def _response(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def create_app(settings: Settings, producer: AsyncProducer | None = None) -> FastAPI:
    """The ingest's ASGI app. Emails are enqueued on the event loop (`AsyncProducer`), with
    no thread hop per request, and the writes of requests that arrive together share one
    round trip (`emailq.ingest.coalesce`); `/metrics` reads the depths with a blocking client of its
    own, in FastAPI's thread pool (prometheus-client's collectors are synchronous).
    `emailq serve` puts `FastPost` in front of it (`serve_app`)."""
    producer = producer or AsyncProducer(settings)
    accept = Accept(settings, producer)
    probes = connect(settings)
    watch_depths(probes, Keys.of(settings), metrics.REGISTRY)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await accept.writes.wait_closed()
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
        return _response(await accept(request.headers, request.stream()))

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

    app.state.accept = accept
    return app


def serve_app(settings: Settings) -> FastPost:
    """What `emailq serve` runs: `create_app`'s app behind `FastPost`, outside FastAPI's own
    middleware, so that an email's POST costs little more than its enqueue."""
    app = create_app(settings)
    return FastPost(app, app.state.accept)
