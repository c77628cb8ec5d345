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

from emailq.message import Envelope
from emailq.settings import Settings
from emailq import metrics
from emailq.worker.http_transport import CurlTransport
from emailq.worker.circuit_breaker import CircuitBreaker, Expired
from emailq.worker.retry_policy import RetryableStatus, build_retrying, is_retryable_status
from emailq.worker.signing import decode_secrets, signature_headers

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
    """POSTs emails to `EMAILQ_ENDPOINT_URL` with keep-alive connections; one per worker
    process, shared by its threads."""

    def __init__(self, settings: Settings, breaker: CircuitBreaker | None = None):
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
        self._transport = CurlTransport(settings.max_response_bytes)
        self._headers = ["Content-Type: application/json", f"User-Agent: {USER_AGENT}"]
        if settings.endpoint_authorization is not None:
            self._headers.append(f"Authorization: {settings.endpoint_authorization.get_secret_value()}")

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
        headers = [*self._headers, f"Idempotency-Key: {message_id}"]
        if self._keys:
            signed = signature_headers(self._keys, message_id, int(time.time()), body)
            headers.extend(f"{name}: {value}" for name, value in signed.items())
        answer = self._transport.post(
            self._url, headers, body, self.settings.connect_timeout, self.settings.request_timeout
        )
        if 200 <= answer.status < 300:
            return answer.status
        excerpt = _excerpt(answer.body)
        if is_retryable_status(answer.status):
            raise RetryableStatus(answer.status, excerpt, answer.retry_after)
        raise _Rejected(answer.status, excerpt)


def _excerpt(raw: bytes) -> str:
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:EXCERPT_CHARS]


def _describe(error: httpx.TransportError) -> str:
    detail = str(error) or "no detail"
    return f"{type(error).__name__}: {detail}"[:EXCERPT_CHARS]
