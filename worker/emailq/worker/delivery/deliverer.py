"""One delivery attempt: POST an email to the endpoint and decide what comes next.

The outcome of an attempt is decided here and only here: delivered; retried after a wait
(the retry policy's answer); or a reason for the dead-letter queue (`rejected`,
`exhausted`, `expired`, or `error` when the HTTP client itself failed) with the status and
an excerpt of what the endpoint said. Nothing here waits: the wait before a retry is spent
in the Redis schedule. The POST itself goes through an injected `HttpClient`
(`emailq.worker.delivery.http_client`), whose errors (`emailq.worker.delivery.errors`) are turned into
outcomes here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from emailq.errors import ConfigError
from emailq.message import Envelope
from emailq.settings import Settings
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.errors import HttpClientError, RejectedStatus, RetryableStatus
from emailq.worker.delivery.http_client import HttpClient
from emailq.worker.delivery.httpx_client import HttpxClient
from emailq.worker.delivery.retry_policy import RetryPolicy, is_retryable_status
from emailq.worker.delivery.signing import decode_secrets, signature_headers

EXCERPT_CHARS = 300
USER_AGENT = "emailq/0.1"


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. Exactly one of: `delivered`, `retry_in` (seconds) set, or
    `reason` set (the email goes to the DLQ)."""

    delivered: bool = False
    retry_in: float | None = None
    reason: str | None = None
    status: int | None = None
    excerpt: str = ""
    error: str = ""
    # This attempt as the DLQ keeps it; None when no attempt was made.
    attempt: dict[str, Any] | None = None
    # Whether the failure says the endpoint may be down (for the circuit breaker).
    outage: bool = False

    @property
    def sent(self) -> bool:
        return self.attempt is not None


def build_client(settings: Settings) -> HttpClient:
    """The HTTP client `EMAILQ_HTTP_CLIENT` names: `curl` (libcurl, the default) or `httpx`.
    A worker builds its client with this unless `emailq.worker.runtime.use_http_client`
    gave it another factory of the same signature."""
    name = settings.http_client
    if name == "curl":
        return CurlClient(settings.max_response_bytes)
    if name == "httpx":
        return HttpxClient(settings.max_response_bytes, pool_size=settings.concurrency)
    raise ConfigError(f"EMAILQ_HTTP_CLIENT: must be curl or httpx, not {name!r}")


class Deliverer:
    """POSTs emails to `EMAILQ_ENDPOINT_URL` through `client` (by default the one
    `EMAILQ_HTTP_CLIENT` names; a worker's is chosen in `emailq.worker.runtime`), with
    keep-alive connections; one per worker process, shared by its threads. `deliver`
    never raises for anything the endpoint or the network does: every such failure comes
    back as an `Outcome`."""

    def __init__(self, settings: Settings, client: HttpClient | None = None):
        if settings.endpoint_url is None:
            raise ValueError("EMAILQ_ENDPOINT_URL is required to deliver")
        self.settings = settings
        self.policy = RetryPolicy(settings)
        self._url = str(settings.endpoint_url)
        self._keys = decode_secrets(settings.signing_secret.get_secret_value()) if settings.signing_secret else []
        self._client = client if client is not None else build_client(settings)
        self._headers = ["Content-Type: application/json", f"User-Agent: {USER_AGENT}"]
        if settings.endpoint_authorization is not None:
            self._headers.append(f"Authorization: {settings.endpoint_authorization.get_secret_value()}")

    def deliver(self, envelope: Envelope) -> Outcome:
        """Make attempt number `envelope.attempts + 1`, unless the email expired."""
        if envelope.expired():
            return Outcome(reason="expired", error="expired before this attempt")
        body = json.dumps(envelope.message.body(), separators=(",", ":")).encode()
        started = time.time()
        try:
            status = self._post(envelope.id, body)
        except RejectedStatus as error:
            return Outcome(
                reason="rejected",
                status=error.status,
                excerpt=error.excerpt,
                error=f"HTTP {error.status}",
                attempt={"at": started, "status": error.status},
            )
        except (RetryableStatus, httpx.TransportError) as error:
            return self._failed(envelope, started, error)
        except HttpClientError as error:
            # The client's own failure says nothing about the endpoint: no attempt is
            # recorded, so the circuit breaker neither counts it nor closes on it.
            return Outcome(reason="error", error=_describe(error))
        return Outcome(delivered=True, status=status, attempt={"at": started, "status": status})

    def _failed(self, envelope: Envelope, started: float, error: RetryableStatus | httpx.TransportError) -> Outcome:
        number = envelope.attempts + 1
        if isinstance(error, RetryableStatus):
            status, excerpt, detail = error.status, error.excerpt, f"HTTP {error.status}"
            attempt: dict[str, Any] = {"at": started, "status": status}
            outage = status >= 500
        else:
            status, excerpt, detail = None, "", _describe(error)
            attempt = {"at": started, "error": detail}
            outage = True
        wait = self.policy.next_wait(number, envelope.created_at, envelope.expires_at, error)
        # Stopping short of the attempt budget means the next wait would outlive the TTL.
        reason = None if wait is not None else ("exhausted" if number >= self.policy.max_attempts else "expired")
        return Outcome(
            retry_in=wait,
            reason=reason,
            status=status,
            excerpt=excerpt,
            error=detail,
            attempt=attempt,
            outage=outage,
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, message_id: str, body: bytes) -> int:
        headers = [*self._headers, f"Idempotency-Key: {message_id}"]
        if self._keys:
            signed = signature_headers(self._keys, message_id, int(time.time()), body)
            headers.extend(f"{name}: {value}" for name, value in signed.items())
        answer = self._client.post(self._url, headers, body, self.settings.connect_timeout, self.settings.request_timeout)
        if 200 <= answer.status < 300:
            return answer.status
        excerpt = _excerpt(answer.body)
        if is_retryable_status(answer.status):
            raise RetryableStatus(answer.status, excerpt, answer.retry_after)
        raise RejectedStatus(answer.status, excerpt)


def _excerpt(raw: bytes) -> str:
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:EXCERPT_CHARS]


def _describe(error: Exception) -> str:
    detail = str(error) or "no detail"
    return f"{type(error).__name__}: {detail}"[:EXCERPT_CHARS]
