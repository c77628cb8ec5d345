"""The seam between a delivery and the HTTP library that POSTs it.

`Deliverer` takes any `HttpClient` as a constructor argument (httpx's `BaseTransport` is
the model): libcurl's (`emailq.worker.delivery.curl_client.CurlClient`, the default for its speed),
httpx's (`emailq.worker.delivery.httpx_client.HttpxClient`), or a benchmark's or a test's own.
Whatever the library, a client keeps the same promises, and the hostile-endpoint tests
hold both built-in ones to them:

- `post` sends one POST and returns the endpoint's `Answer`, whatever its status; it never
  follows a redirect (a 3xx is returned as it is), never uses a proxy from the
  environment, and always verifies TLS certificates.
- The whole attempt, connecting included, ends within `timeout` seconds, however slowly
  the endpoint trickles its answer; connecting alone within `connect`.
- At most `max_body_bytes` of the response body are read; the rest is never read.
- Failures are `emailq.worker.delivery.errors.NetworkError`s (no whole answer: retried) or
  `HttpClientError` (the client's own failure: not retried), mapped from the library's
  own errors in one place, with the original as `__cause__`.
- It may be called from many threads at once; `close` releases its connections.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from emailq.worker.delivery.errors import HttpClientError


class Answer(NamedTuple):
    """What the endpoint answered."""

    status: int
    retry_after: float | None  # seconds, from a Retry-After header (delta or date); None if absent or past
    body: bytes  # at most the client's `max_body_bytes`


class HttpClient(Protocol):
    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        """POST `body` to the http(s) `url` with `headers` as `Name: value` lines."""
        ...

    def close(self) -> None:
        """Close every connection; the client is not used afterwards."""
        ...


def refuse_unsendable(url: str, headers: list[str]) -> None:
    """Raise HttpClientError, before anything is sent, for a request no client may send:
    a URL that is not http(s), or a header line break (it would split the request)."""
    if not url.startswith(("http://", "https://")):
        raise HttpClientError("only http:// and https:// URLs are sent")
    if any("\r" in line or "\n" in line for line in headers):
        raise HttpClientError("a header value holds a line break")
