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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from emailq.errors import ConfigError
from emailq.message import Envelope
from emailq.settings import Settings
from emailq.worker.delivery import endpoints
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.endpoints import Endpoint
from emailq.worker.delivery.errors import HttpClientError, RejectedStatus, RetryableStatus
from emailq.worker.delivery.failover import Failover
from emailq.worker.delivery.http_client import HttpClient
from emailq.worker.delivery.httpx_client import HttpxClient
from emailq.worker.delivery.retry_policy import RetryPolicy, is_retryable_status

EXCERPT_CHARS = 300
USER_AGENT = endpoints.USER_AGENT


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
    # The endpoint of `attempt` (primary or fallback); None when no attempt was made.
    endpoint: str | None = None
    # Attempts made before `attempt` in the same delivery: a failed primary's, failing over.
    earlier: tuple[dict[str, Any], ...] = ()

    @property
    def sent(self) -> bool:
        return self.attempt is not None

    @property
    def attempts(self) -> tuple[dict[str, Any], ...]:
        """Every attempt of this delivery, oldest first, as the DLQ keeps them."""
        return (*self.earlier, *([self.attempt] if self.attempt is not None else []))


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
    """POSTs emails to `EMAILQ_ENDPOINT_URL` (and, when set, `EMAILQ_FALLBACK_ENDPOINT_URL`,
    as `failover.py` routes them) through `client` (by default the one
    `EMAILQ_HTTP_CLIENT` names; a worker's is chosen in `emailq.worker.runtime`), with
    keep-alive connections; one per worker process, shared by its threads. `deliver`
    never raises for anything the endpoint or the network does: every such failure comes
    back as an `Outcome`. `stopping()` says the worker is shutting down: then no POST
    begins after the primary's failed, so a worker still stops within one request
    timeout."""

    def __init__(
        self,
        settings: Settings,
        client: HttpClient | None = None,
        failover: Failover | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ):
        self.settings = settings
        self.policy = RetryPolicy(settings)
        self._primary = endpoints.primary(settings)
        fallback = endpoints.fallback(settings)
        self._endpoints = {self._primary.name: self._primary}
        self.failover: Failover | None = None
        if fallback is not None:
            self._endpoints[fallback.name] = fallback
            self.failover = failover or Failover(settings.breaker_threshold, settings.breaker_probe_seconds, settings.fallback_only)
        self._stopping = stopping
        self._client = client if client is not None else build_client(settings)

    def deliver(self, envelope: Envelope) -> Outcome:
        """Make attempt number `envelope.attempts + 1` (and, failing over, the next one
        too), unless the email expired."""
        if envelope.expired():
            return Outcome(reason="expired", error="expired before this attempt")
        body = json.dumps(envelope.message.body(), separators=(",", ":")).encode()
        if self.failover is None:
            return self._attempt(self._primary, envelope, envelope.attempts + 1, body)
        return self._fail_over(self.failover, envelope, body)

    def _fail_over(self, failover: Failover, envelope: Envelope, body: bytes) -> Outcome:
        """Along the route: the first endpoint that admits the email; then, if it failed
        with an outage or a 429, the next at once. The last answer decides."""
        route = failover.route()
        done: list[Outcome] = []
        for name in route:
            if done and (self._stopping() or envelope.expired()):
                break  # the failure stands: retried after its backoff (by another worker)
            if not failover.breaker(name).admit(envelope.id):
                continue
            done.append(self._judged(failover, name, envelope, envelope.attempts + len(done) + 1, body))
            if not _fails_over(done[-1]):
                break
        if not done:
            # Every breaker on the route is open and none owes a probe: an email taken
            # before they opened. Sent to the first, as a worker with one endpoint does.
            done.append(self._judged(failover, route[0], envelope, envelope.attempts + 1, body))
        earlier = tuple(o.attempt for o in done[:-1] if o.attempt is not None)
        return replace(done[-1], earlier=earlier)

    def _judged(self, failover: Failover, name: str, envelope: Envelope, number: int, body: bytes) -> Outcome:
        """One POST to `name`, told to its breaker."""
        breaker = failover.breaker(name)
        try:
            outcome = self._attempt(self._endpoints[name], envelope, number, body, labelled=True)
        except BaseException:
            breaker.released(envelope.id)
            raise
        if not outcome.sent:
            breaker.released(envelope.id)
        elif outcome.outage:
            breaker.failed(envelope.id)
        else:
            breaker.answered(envelope.id)
        return outcome

    def _attempt(self, endpoint: Endpoint, envelope: Envelope, number: int, body: bytes, labelled: bool = False) -> Outcome:
        """Attempt number `number`, a POST to `endpoint`; with `labelled`, the attempt as
        the DLQ keeps it names the endpoint."""
        named = {"endpoint": endpoint.name} if labelled else {}
        started = time.time()
        try:
            status = self._post(endpoint, envelope.id, body)
        except RejectedStatus as error:
            return Outcome(
                reason="rejected",
                status=error.status,
                excerpt=error.excerpt,
                error=f"HTTP {error.status}",
                attempt={"at": started, "status": error.status, **named},
                endpoint=endpoint.name,
            )
        except (RetryableStatus, httpx.TransportError) as error:
            return self._failed(envelope, number, started, error, named, endpoint.name)
        except HttpClientError as error:
            # The client's own failure says nothing about the endpoint: no attempt is
            # recorded, so the circuit breaker neither counts it nor closes on it.
            return Outcome(reason="error", error=_describe(error))
        return Outcome(delivered=True, status=status, attempt={"at": started, "status": status, **named}, endpoint=endpoint.name)

    def _failed(
        self,
        envelope: Envelope,
        number: int,
        started: float,
        error: RetryableStatus | httpx.TransportError,
        named: dict[str, str],
        endpoint: str,
    ) -> Outcome:
        if isinstance(error, RetryableStatus):
            status, excerpt, detail = error.status, error.excerpt, f"HTTP {error.status}"
            attempt: dict[str, Any] = {"at": started, "status": status, **named}
            outage = status >= 500
        else:
            status, excerpt, detail = None, "", _describe(error)
            attempt = {"at": started, "error": detail, **named}
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
            endpoint=endpoint,
        )

    def close(self) -> None:
        self._client.close()

    def _post(self, endpoint: Endpoint, message_id: str, body: bytes) -> int:
        headers = endpoint.request_headers(message_id, body)
        answer = self._client.post(endpoint.url, headers, body, self.settings.connect_timeout, self.settings.request_timeout)
        if 200 <= answer.status < 300:
            return answer.status
        excerpt = _excerpt(answer.body)
        if is_retryable_status(answer.status):
            raise RetryableStatus(answer.status, excerpt, answer.retry_after)
        raise RejectedStatus(answer.status, excerpt)


def _fails_over(outcome: Outcome) -> bool:
    """An outage or a 429 says the provider cannot take it now; any other answer is
    about the email, and the other provider would say the same."""
    return outcome.sent and (outcome.outage or outcome.status == 429)


def _excerpt(raw: bytes) -> str:
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:EXCERPT_CHARS]


def _describe(error: Exception) -> str:
    detail = str(error) or "no detail"
    return f"{type(error).__name__}: {detail}"[:EXCERPT_CHARS]
