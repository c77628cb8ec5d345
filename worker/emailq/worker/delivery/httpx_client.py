"""The httpx HTTP client (`EMAILQ_HTTP_CLIENT=httpx`): one `httpx.Client`, shared by threads.

Slower than libcurl under many threads (its pool costs about 3 ms of CPU per POST,
encode/httpx#3215; see `emailq.worker.delivery.curl_client`), but pure Python: no libcurl to
install, and the client most Python teams already know and trust.

It keeps the promises of `emailq.worker.delivery.http_client` as libcurl does: one connection pool
sized to the worker's threads, no redirects, no proxies or `.netrc` from the environment,
TLS verified (certifi's bundle, or `SSL_CERT_FILE` when set), a body read up to
`max_body_bytes`, Retry-After read as seconds or an HTTP date. httpx's timeouts bound
each socket operation, not the attempt, so an endpoint trickling its headers a byte a
second would never time out; a network backend of our own (`_DeadlineBackend`, plugged
into httpcore's pool through its public API) bounds every connect, read and write by what
is left of the attempt, so the whole attempt ends within the request timeout, as with
libcurl. httpcore's and httpx's errors become emailq's in `_mapped`, and only there.
"""

from __future__ import annotations

import email.utils
import os
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

import certifi
import httpcore
import httpx

from emailq.worker.delivery.errors import (
    ConnectError,
    ConnectTimeout,
    DeliveryError,
    HttpClientError,
    ReadTimeout,
    RemoteProtocolError,
)
from emailq.worker.delivery.http_client import Answer, refuse_unsendable

# Sends go out in pieces this big, each bounded by what is left of the attempt: a single
# large write to an endpoint that reads slowly cannot outlive the deadline by much.
_WRITE_PIECE = 65536

# What the libraries raise for a failed request (httpcore's errors share no base class).
_LIBRARY_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
    httpx.HTTPError,
)

# When the attempt under way in this thread must end (time.monotonic()); unset between
# attempts. Per thread, because each attempt runs in its caller's thread, whichever
# pooled connection it uses.
_attempt = threading.local()


class HttpxClient:
    """An `HttpClient` on httpx: one pool of up to `pool_size` keep-alive connections,
    shared by every thread (a worker needs one per delivery thread: EMAILQ_CONCURRENCY)."""

    def __init__(self, max_body_bytes: int, pool_size: int):
        self._max_body_bytes = max_body_bytes
        tls = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
        pool = httpcore.ConnectionPool(
            ssl_context=tls,
            max_connections=pool_size,
            max_keepalive_connections=pool_size,
            network_backend=_DeadlineBackend(),
        )
        self._client = httpx.Client(transport=_PoolTransport(pool), follow_redirects=False, trust_env=False)
        # libcurl asks for no compression: the body cap then counts what is on the wire,
        # and an error excerpt is never compressed bytes.
        del self._client.headers["Accept-Encoding"]
        del self._client.headers["Connection"]

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        refuse_unsendable(url, headers)
        _attempt.deadline = time.monotonic() + timeout
        try:
            with self._client.stream("POST", url, content=body, headers=_pairs(headers), timeout=httpx.Timeout(timeout, connect=connect)) as response:
                return Answer(
                    response.status_code,
                    retry_after_seconds(response.headers.get("Retry-After")),
                    self._read_capped(response),
                )
        except _LIBRARY_ERRORS as exc:
            raise _mapped(exc) from exc
        finally:
            _attempt.deadline = None

    def close(self) -> None:
        self._client.close()

    def _read_capped(self, response: httpx.Response) -> bytes:
        kept = bytearray()
        for chunk in response.iter_raw():
            kept += chunk[: self._max_body_bytes - len(kept)]
            if len(kept) >= self._max_body_bytes:
                break  # closing the response unread closes its connection: nothing more is read
        return bytes(kept)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from `now`: delta-seconds or an HTTP date. None
    when absent, unreadable, or not in the future (as libcurl reads it)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # "-0000" parses as naive; HTTP dates are GMT
        seconds = when.timestamp() - (time.time() if now is None else now)
    return seconds if seconds > 0 else None


def _pairs(headers: list[str]) -> list[tuple[str, str]]:
    # Outer whitespace is not part of a header value (RFC 9110), and h11 refuses it.
    return [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in headers)]


def _mapped(exc: Exception) -> DeliveryError:
    """The library's error as emailq's: the endpoint's doing as a NetworkError (retried),
    anything else as HttpClientError."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, (httpcore.ConnectTimeout, httpx.ConnectTimeout)):
        return ConnectTimeout(message)
    if isinstance(exc, (httpcore.ReadTimeout, httpcore.WriteTimeout, httpx.ReadTimeout, httpx.WriteTimeout)):
        return ReadTimeout(message)
    if isinstance(exc, (httpcore.ConnectError, httpx.ConnectError)):
        return ConnectError(f"TLS: {message}" if _caused_by_tls(exc) else message)
    if isinstance(
        exc, (httpcore.ReadError, httpcore.WriteError, httpcore.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
    ):
        return RemoteProtocolError(message)
    # Among these: a pool with no free connection (more threads than EMAILQ_CONCURRENCY),
    # a request h11 refuses to write.
    return HttpClientError(f"httpx {type(exc).__name__}: {message}")


def _caused_by_tls(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout` cut to what is left of this thread's attempt; `expired` once none is."""
    deadline = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the request timeout ran out")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the current attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), _WRITE_PIECE):
            self._inner.write(buffer[start : start + _WRITE_PIECE], _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        bound = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bound))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own blocking sockets, wrapped in `_DeadlineStream`."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bound = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bound, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PoolTransport(httpx.BaseTransport):
    """What `httpx.HTTPTransport` does, over a pool we build (it takes no network
    backend). Errors pass through as httpcore raises them, for `_mapped`."""

    def __init__(self, pool: httpcore.ConnectionPool):
        self._pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        answer = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        # A sync pool answers with a sync stream (httpx's own HTTPTransport asserts the same).
        assert isinstance(answer.stream, Iterable)
        return httpx.Response(status_code=answer.status, headers=answer.headers, stream=_Body(answer.stream), extensions=answer.extensions)

    def close(self) -> None:
        self._pool.close()


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
