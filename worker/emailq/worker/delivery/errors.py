"""The worker's errors, under the one root every emailq error shares.

    EmailqError                      (emailq.errors) raised on purpose; a one-line message
    ├── ConfigError                  (emailq.errors) a setting is missing or invalid
    ├── InvalidMessage               (emailq.errors) an email refused before it was enqueued
    ├── QueueUnavailable             (emailq.errors) Redis could not take the email(s)
    ├── IdempotencyConflict          (emailq.errors) a key reused for a different email
    ├── NotFound                     (emailq.errors) no dead letter has that id
    ├── DeadLettered                 (emailq.worker.celery_glue.tasks) the email is now in the DLQ;
    │                                 the task raises it so Flower lists it as failed
    └── DeliveryError                one attempt did not deliver (below: this module)
        ├── StatusError              the endpoint answered, but not with a 2xx
        │   ├── RetryableStatus      5xx, 408, 425, 429: retried (Retry-After honoured)
        │   └── RejectedStatus       any other status (3xx, 4xx): DLQ, reason "rejected"
        ├── NetworkError             no whole answer: retried; a sign of an outage
        │   ├── ConnectError         refused, unresolvable, TLS handshake or certificate
        │   ├── ConnectTimeout       no connection within EMAILQ_CONNECT_TIMEOUT
        │   ├── ReadTimeout          connected, but no whole answer in EMAILQ_REQUEST_TIMEOUT
        │   └── RemoteProtocolError  the endpoint closed or reset the connection mid-way,
        │                             or answered with something that is not HTTP/1.x
        └── HttpClientError          the HTTP client itself failed (an error it has no
                                      name for, a request it refuses to send): not
                                      retried; DLQ, reason "error"

Who raises what: the HTTP clients (`emailq.worker.delivery.curl_client`, `emailq.worker.delivery.httpx_client`)
raise `NetworkError`s and `HttpClientError`, each mapping its library's errors in one place
with `raise ... from exc`; `Deliverer` raises the `StatusError`s from the answer and turns
every `DeliveryError` into an `Outcome`, so none leaves the worker.

Each `NetworkError` is also the httpx exception of the same name (`ConnectError` is an
`httpx.ConnectError`, and `NetworkError` an `httpx.TransportError`): code that catches
httpx's transport errors, as the retry policy did before these existed, still catches
them, and a client written against httpx's vocabulary is still understood.
`HttpClientError` deliberately is not one, so it is never retried.
"""

from __future__ import annotations

import httpx

from emailq.errors import EmailqError

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "DeliveryError",
    "EmailqError",
    "HttpClientError",
    "NetworkError",
    "ReadTimeout",
    "RejectedStatus",
    "RemoteProtocolError",
    "RetryableStatus",
    "StatusError",
]


class DeliveryError(EmailqError):
    """One delivery attempt did not deliver; `Deliverer` decides what follows."""


class StatusError(DeliveryError):
    """The endpoint answered with `status`; `excerpt` is a short, printable part of its body."""

    def __init__(self, status: int, excerpt: str = ""):
        self.status = status
        self.excerpt = excerpt
        super().__init__(f"HTTP {status}")


class RetryableStatus(StatusError):
    """A status worth trying again; `retry_after` is the endpoint's Retry-After in seconds
    (None when it sent none)."""

    def __init__(self, status: int, excerpt: str = "", retry_after: float | None = None):
        super().__init__(status, excerpt)
        self.retry_after = retry_after


class RejectedStatus(StatusError):
    """A status that trying again will not change: the email goes to the DLQ."""


class NetworkError(DeliveryError, httpx.TransportError):
    """No whole answer came back; the endpoint may be down, so the email is retried."""


class ConnectError(NetworkError, httpx.ConnectError):
    """No connection: refused, the host did not resolve, or TLS failed (the message then
    starts with `TLS:`; an untrusted certificate is never accepted)."""


class ConnectTimeout(NetworkError, httpx.ConnectTimeout):
    """The connection (TCP and TLS) was not made within the connect timeout."""


class ReadTimeout(NetworkError, httpx.ReadTimeout):
    """Connected, but the request timeout ran out before the whole answer arrived (sending
    the request counts too: one bound for the attempt)."""


class RemoteProtocolError(NetworkError, httpx.RemoteProtocolError):
    """The endpoint broke off the exchange: it closed or reset the connection before a
    whole answer, or sent something that is not an HTTP/1.x answer."""


class HttpClientError(DeliveryError):
    """The HTTP client failed in a way that says nothing about the endpoint (an error code
    it has no mapping for, a URL or header it refuses to send). Retrying would repeat it,
    and counting it as an outage would stop deliveries for a local fault: the email goes
    to the DLQ with reason `error` and this message."""
