"""`emailq worker` with changes that no setting or flag can make: for `benchmarks.experiments.tune`
only, to price a proposed code change to worker/ before anyone makes it. Nothing in
worker/ is edited; this module adjusts it at start-up.

- BENCH_CELERY_OVERRIDES: JSON of Celery settings applied over emailq's configuration
  (e.g. `{"worker_send_task_events": false}`).
- BENCH_SWITCH_INTERVAL: seconds for `sys.setswitchinterval` (the GIL hand-off interval,
  5 ms by default).
- BENCH_CLIENT: the HTTP client under `Deliverer._post`, instead of emailq's libcurl
  transport: `httpx-pool` (httpx's own pool, shared by all threads), `httpx-local` (one
  httpx pool per thread) or `aiohttp` (one asyncio loop in a background thread doing every
  POST; the task's thread waits for its result). The
  retry policy, circuit breaker and outcome logic stay emailq's own.

    python -m benchmarks.experiments.emailq_patched worker [emailq worker flags]
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
from typing import Any

import httpx

from emailq.worker import delivery, runtime
from emailq.worker.app import app
from emailq.worker.cli import main
from emailq.worker.retry_policy import RetryableStatus, is_retryable_status
from emailq.worker.signing import signature_headers


@app.on_after_configure.connect
def _overrides(sender: Any, **_: Any) -> None:
    sender.conf.update(json.loads(os.environ.get("BENCH_CELERY_OVERRIDES", "{}")))


class _OtherClient(delivery.Deliverer):
    """emailq's Deliverer with the POST itself done by another client."""

    def _header_dict(self, message_id: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": message_id, "User-Agent": delivery.USER_AGENT}
        if self.settings.endpoint_authorization is not None:
            headers["Authorization"] = self.settings.endpoint_authorization.get_secret_value()
        if self._keys:
            headers.update(signature_headers(self._keys, message_id, int(time.time()), body))
        return headers

    @staticmethod
    def _judge(status: int, raw: bytes, retry_after: str | None) -> int:
        # The benchmark's endpoint sends no Retry-After; delta-seconds is all it needs.
        if 200 <= status < 300:
            return status
        excerpt = delivery._excerpt(raw)
        if is_retryable_status(status):
            raise RetryableStatus(status, excerpt, float(retry_after) if retry_after and retry_after.isdigit() else None)
        raise delivery._Rejected(status, excerpt)


class AiohttpDeliverer(_OtherClient):
    def __init__(self, settings: Any):
        import aiohttp

        super().__init__(settings)
        self._aiohttp = aiohttp
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="http-loop", daemon=True).start()
        self._session = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    async def _open(self) -> Any:
        aiohttp = self._aiohttp
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.concurrency),
            timeout=aiohttp.ClientTimeout(sock_connect=self.settings.connect_timeout, sock_read=self.settings.request_timeout),
        )

    async def _apost(self, message_id: str, body: bytes) -> tuple[int, bytes, str | None]:
        async with self._session.post(self._url, data=body, headers=self._header_dict(message_id, body), allow_redirects=False) as response:
            raw = await response.content.read(self.settings.max_response_bytes)
            return response.status, raw, response.headers.get("Retry-After")

    def _post(self, message_id: str, body: bytes) -> int:
        future = asyncio.run_coroutine_threadsafe(self._apost(message_id, body), self._loop)
        try:
            status, raw, retry_after = future.result()
        except (self._aiohttp.ClientError, TimeoutError) as error:
            raise httpx.TransportError(str(error)) from None
        return self._judge(status, raw, retry_after)


class HttpxPoolDeliverer(_OtherClient):
    """emailq's Deliverer over one `httpx.Client`, whose pool (httpcore) all threads share."""

    def __init__(self, settings: Any):
        super().__init__(settings)
        self._timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
        self._shared = self._new_client()

    def _new_client(self) -> httpx.Client:
        limits = httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency)
        return httpx.Client(timeout=self._timeout, limits=limits, follow_redirects=False)

    def _client(self) -> httpx.Client:
        return self._shared

    def _post(self, message_id: str, body: bytes) -> int:
        with self._client().stream("POST", self._url, content=body, headers=self._header_dict(message_id, body)) as r:
            raw = b""
            for chunk in r.iter_raw():
                raw += chunk
                if len(raw) >= self.settings.max_response_bytes:
                    break
            return self._judge(r.status_code, raw, r.headers.get("Retry-After"))


class ThreadLocalHttpxDeliverer(HttpxPoolDeliverer):
    """As above, but one `httpx.Client` per thread: no shared pool to contend for."""

    def __init__(self, settings: Any):
        self._local = threading.local()
        super().__init__(settings)

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        return client


_CLIENTS = {"httpx-pool": HttpxPoolDeliverer, "aiohttp": AiohttpDeliverer, "httpx-local": ThreadLocalHttpxDeliverer}


def _patch() -> None:
    if os.environ.get("BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    client = os.environ.get("BENCH_CLIENT")
    if client:
        kind = _CLIENTS[client]
        # The runtime builds its Deliverer once, on first use: build this one instead.
        runtime.Runtime.deliverer = functools.cached_property(lambda self: kind(self.settings))
        runtime.Runtime.deliverer.__set_name__(runtime.Runtime, "deliverer")


if __name__ == "__main__":
    _patch()
    main(sys.argv[1:])
