"""One delivery: POST an email to the endpoint, retrying per the retry policy.

The outcome of a delivery is decided here and only here: delivered, or a reason for the
dead-letter queue (`rejected`, `exhausted`, `expired`) with the last status and an
excerpt of what the endpoint said.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from producer.message import Envelope
from producer.settings import Settings
from producer import metrics
from worker.http_transport import CurlTransport
from worker.circuit_breaker import CircuitBreaker, Expired
from worker.retry_policy import RetryableStatus, build_retrying, is_retryable_status, parse_retry_after
from worker.signing import decode_secrets, signature_headers

EXCERPT_CHARS = 300
USER_AGENT = "emailq/0.1"


@dataclass(frozen=True)
class Outcome:
    reason: str | None  # None when delivered
    status: int | None = None
    excerpt: str = ""
    error: str = ""
    attempts: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None

    @property
    def delivered(self) -> bool:
        return self.reason is None


class _Rejected(Exception):
    """A status that retrying will not change (a 3xx or a 4xx other than 408/425/429)."""

    def __init__(self, status: int, excerpt: str):
        self.status = status
        self.excerpt = excerpt


class Deliverer:
    """POSTs emails to `EMAILQ_ENDPOINT_URL` over one keep-alive connection pool, shared
    by all the worker's threads."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        breaker: CircuitBreaker | None = None,
    ):
        if settings.endpoint_url is None:
            raise ValueError("EMAILQ_ENDPOINT_URL is required to deliver")
        self.settings = settings
        self._url = str(settings.endpoint_url)
        self._keys = (
            decode_secrets(settings.signing_secret.get_secret_value())
            if settings.signing_secret
            else []
        )
        self._breaker = breaker or CircuitBreaker(
            settings.breaker_threshold,
            settings.breaker_probe_seconds,
            on_change=lambda is_open: metrics.BREAKER_OPEN.set(int(is_open)),
        )
        # The transport directly, not an httpx.Client: the client's per-request work
        # (URL merging, cookies, auth and hook machinery) costs more CPU than the POST.
        self._transport = transport or CurlTransport(settings.max_response_bytes)
        self._request_url = httpx.URL(self._url)
        timeout = settings.request_timeout
        self._extensions = {
            "timeout": {"connect": settings.connect_timeout, "read": timeout, "write": timeout, "pool": timeout}
        }

    def deliver(self, envelope: Envelope) -> Outcome:
        if envelope.expired():
            return Outcome(reason="expired", error="expired before the first attempt")
        body = json.dumps(envelope.message.body(), separators=(",", ":")).encode()
        retrying = build_retrying(self.settings, envelope.expires_at - time.time())
        attempts, first, last, status = 0, None, None, None
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    last = time.time()
                    first = first or last
                    status = self._breaker.call(
                        lambda: self._post(envelope.id, body), envelope.expires_at
                    )
        except Expired as error:
            return Outcome("expired", None, "", str(error), attempts, first, last)
        except _Rejected as error:
            return Outcome("rejected", error.status, error.excerpt, f"HTTP {error.status}", attempts, first, last)
        except RetryableStatus as error:
            return Outcome(self._gave_up(envelope, attempts), error.status, error.excerpt, f"HTTP {error.status}", attempts, first, last)
        except httpx.TransportError as error:
            return Outcome(self._gave_up(envelope, attempts), None, "", _describe(error), attempts, first, last)
        return Outcome(None, status, "", "", attempts, first, last)

    def close(self) -> None:
        self._transport.close()

    def _gave_up(self, envelope: Envelope, attempts: int) -> str:
        # Stopping short of the attempt budget means the next wait would outlive the TTL.
        return "exhausted" if attempts >= self.settings.max_attempts else "expired"

    def _post(self, message_id: str, body: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message_id,
            "User-Agent": USER_AGENT,
        }
        if self.settings.endpoint_authorization is not None:
            headers["Authorization"] = self.settings.endpoint_authorization.get_secret_value()
        if self._keys:
            headers.update(signature_headers(self._keys, message_id, int(time.time()), body))
        request = httpx.Request(
            "POST", self._request_url, headers=headers, content=body, extensions=self._extensions
        )
        response = self._transport.handle_request(request)
        try:
            raw = self._read_capped(response)
        finally:
            response.close()
        status = response.status_code
        if 200 <= status < 300:
            return status
        excerpt = _excerpt(raw)
        if is_retryable_status(status):
            raise RetryableStatus(status, excerpt, parse_retry_after(response.headers.get("Retry-After")))
        raise _Rejected(status, excerpt)

    def _read_capped(self, response: httpx.Response) -> bytes:
        # An endless or huge body must not hold the worker: keep the first bytes only.
        limit = self.settings.max_response_bytes
        chunks, size = [], 0
        for chunk in response.stream:  # type: ignore[union-attr]
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
        return b"".join(chunks)[:limit]


def _excerpt(raw: bytes) -> str:
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:EXCERPT_CHARS]


def _describe(error: httpx.TransportError) -> str:
    detail = str(error) or "no detail"
    return f"{type(error).__name__}: {detail}"[:EXCERPT_CHARS]
