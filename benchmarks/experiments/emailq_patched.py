"""`emailq worker` with changes that no setting or flag can make: for `benchmarks.experiments.tune`
only, to price a proposed code change to worker/ before anyone makes it. Nothing in
worker/ is edited or patched: this module sets it up at start through its public hooks
(Celery's signals, `emailq.worker.runtime.use_http_client`), then runs `emailq worker`.

- BENCH_CELERY_OVERRIDES: JSON of Celery settings applied over emailq's configuration
  (e.g. `{"worker_send_task_events": false}`).
- BENCH_SWITCH_INTERVAL: seconds for `sys.setswitchinterval` (the GIL hand-off interval,
  5 ms by default).
- BENCH_CLIENT: the HTTP client the Deliverer POSTs through, instead of emailq's libcurl
  one: `httpx-pool` (httpx's own pool, shared by all threads), `httpx-local` (one httpx
  pool per thread) or `aiohttp` (one asyncio loop in a background thread doing every POST;
  the task's thread waits for its result). Each is an `HttpClient`
  (`emailq.worker.delivery.http_client`) handed to the worker with
  `emailq.worker.runtime.use_http_client`: the headers, status handling, retry policy,
  circuit breaker and outcomes stay emailq's own.

    python -m benchmarks.experiments.emailq_patched worker [emailq worker flags]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from typing import Any

import httpx

from emailq.settings import Settings
from emailq.worker import runtime
from emailq.worker.celery_glue.app import app
from emailq.worker.commands.cli import main
from emailq.worker.delivery.errors import NetworkError
from emailq.worker.delivery.http_client import Answer, refuse_unsendable
from emailq.worker.delivery.httpx_client import retry_after_seconds


@app.on_after_configure.connect
def _overrides(sender: Any, **_: Any) -> None:
    sender.conf.update(json.loads(os.environ.get("BENCH_CELERY_OVERRIDES", "{}")))


def _pairs(headers: list[str]) -> list[tuple[str, str]]:
    """`Name: value` lines, as the Deliverer passes them, as (name, value) pairs."""
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in headers)]


class HttpxPoolClient:
    """POSTs through one `httpx.Client`, whose pool (httpcore) all threads share; httpx's
    own timeouts (per socket operation, not per attempt as emailq's clients keep)."""

    def __init__(self, settings: Settings):
        self._max_body_bytes = settings.max_response_bytes
        self._limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        self._shared = self._new_client()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(limits=self._limits, follow_redirects=False, trust_env=False)

    def _client(self) -> httpx.Client:
        return self._shared

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        refuse_unsendable(url, headers)
        try:
            with self._client().stream("POST", url, content=body, headers=_pairs(headers), timeout=httpx.Timeout(timeout, connect=connect)) as r:
                raw = b""
                for chunk in r.iter_raw():
                    raw += chunk
                    if len(raw) >= self._max_body_bytes:
                        break
                return Answer(r.status_code, retry_after_seconds(r.headers.get("Retry-After")), raw[: self._max_body_bytes])
        except httpx.TransportError as error:
            raise NetworkError(str(error) or type(error).__name__) from error

    def close(self) -> None:
        self._shared.close()


class ThreadLocalHttpxClient(HttpxPoolClient):
    """As above, but one `httpx.Client` per thread: no shared pool to contend for."""

    def __init__(self, settings: Settings):
        self._local = threading.local()
        super().__init__(settings)

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        return client


class AiohttpClient:
    """POSTs on one asyncio loop in a background thread; the calling thread waits."""

    def __init__(self, settings: Settings):
        import aiohttp  # the bench extra, needed by this variant only

        self._aiohttp = aiohttp
        self._max_body_bytes = settings.max_response_bytes
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="http-loop", daemon=True).start()
        self._session = asyncio.run_coroutine_threadsafe(self._open(settings), self._loop).result()

    async def _open(self, settings: Settings) -> Any:
        aiohttp = self._aiohttp
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.concurrency),
            timeout=aiohttp.ClientTimeout(sock_connect=settings.connect_timeout, sock_read=settings.request_timeout),
        )

    async def _post(self, url: str, headers: list[str], body: bytes) -> Answer:
        async with self._session.post(url, data=body, headers=_pairs(headers), allow_redirects=False) as response:
            raw = await response.content.read(self._max_body_bytes)
            return Answer(response.status, retry_after_seconds(response.headers.get("Retry-After")), raw)

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        refuse_unsendable(url, headers)
        future = asyncio.run_coroutine_threadsafe(self._post(url, headers, body), self._loop)
        try:
            return future.result()
        except (self._aiohttp.ClientError, TimeoutError) as error:
            raise NetworkError(str(error) or type(error).__name__) from error

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)


_CLIENTS: dict[str, runtime.HttpClientFactory] = {
    "httpx-pool": HttpxPoolClient,
    "httpx-local": ThreadLocalHttpxClient,
    "aiohttp": AiohttpClient,
}


def _configure() -> None:
    if os.environ.get("BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    client = os.environ.get("BENCH_CLIENT")
    if client:
        runtime.use_http_client(_CLIENTS[client])


if __name__ == "__main__":
    _configure()
    main(sys.argv[1:])
