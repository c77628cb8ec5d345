"""How each HTTP client names what went wrong, driven against real sockets on loopback:
the endpoint's doing is a NetworkError (retried), the client's own an HttpClientError
(not retried), and the library's error is kept as `__cause__`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pycurl
import pytest

import raw_endpoints
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.errors import (
    ConnectError,
    ConnectTimeout,
    HttpClientError,
    NetworkError,
    ReadTimeout,
    RemoteProtocolError,
)
from emailq.worker.delivery.http_client import HttpClient
from emailq.worker.delivery.httpx_client import HttpxClient

CONNECT, TIMEOUT = 0.3, 0.6
# How far past the request timeout an attempt may end: thread wake-ups, not trickles.
SLACK = 0.4

CLIENTS: dict[str, Callable[[], HttpClient]] = {
    "curl": lambda: CurlClient(max_body_bytes=1024),
    "httpx": lambda: HttpxClient(max_body_bytes=1024, pool_size=4),
}


@pytest.fixture(params=sorted(CLIENTS))
def client(request) -> Iterator[HttpClient]:
    made = CLIENTS[request.param]()
    yield made
    made.close()


def post(client: HttpClient, url: str) -> None:
    client.post(url, ["Idempotency-Key: k"], b"{}", connect=CONNECT, timeout=TIMEOUT)


def failure(client: HttpClient, url: str) -> Exception:
    """The error `client` raises for one POST to `url`, which must end within the timeout."""
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        post(client, url)
    assert time.monotonic() - started < TIMEOUT + SLACK
    return caught.value


def test_a_closed_port_is_a_connect_error(client):
    error = failure(client, raw_endpoints.closed_port())
    assert type(error) is ConnectError
    assert error.__cause__ is not None


def test_a_port_that_never_accepts_is_a_connect_timeout(client):
    with raw_endpoints.full_backlog() as url:
        assert type(failure(client, url)) is ConnectTimeout


def test_a_port_that_accepts_and_never_answers_is_a_read_timeout(client):
    with raw_endpoints.raw_endpoint(raw_endpoints.never_answers) as url:
        assert type(failure(client, url)) is ReadTimeout


@pytest.mark.parametrize(
    "handler",
    [
        raw_endpoints.closes_without_answering,
        raw_endpoints.resets,
        raw_endpoints.answers_garbage,
        raw_endpoints.closes_mid_body,
    ],
    ids=lambda handler: handler.__name__,
)
def test_an_exchange_broken_off_is_a_remote_protocol_error(client, handler):
    with raw_endpoints.raw_endpoint(handler) as url:
        error = failure(client, url)
    assert type(error) is RemoteProtocolError
    assert error.__cause__ is not None


@pytest.mark.parametrize("handler", [raw_endpoints.trickles_headers, raw_endpoints.trickles_body], ids=lambda handler: handler.__name__)
def test_a_trickled_answer_cannot_stretch_the_attempt(client, handler):
    with raw_endpoints.raw_endpoint(handler) as url:
        assert type(failure(client, url)) is ReadTimeout


def test_every_network_error_is_retryable_and_no_client_error_is(client):
    with raw_endpoints.raw_endpoint(raw_endpoints.never_answers) as url:
        assert isinstance(failure(client, url), NetworkError)
    assert not issubclass(HttpClientError, NetworkError)


def test_a_url_that_is_not_http_is_refused_by_the_client(client):
    with pytest.raises(HttpClientError):
        post(client, "ftp://127.0.0.1/send")


def test_an_unknown_libcurl_code_is_an_http_client_error_not_an_outage(monkeypatch):
    # A CA file that cannot be read: libcurl's code 77, a local fault no retry will fix.
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    client = CurlClient(max_body_bytes=1024)
    try:
        with raw_endpoints.raw_endpoint(raw_endpoints.never_answers) as url:
            with pytest.raises(HttpClientError) as caught:
                post(client, url.replace("http:", "https:"))
    finally:
        client.close()
    assert str(caught.value).startswith("libcurl error 77:")
    assert isinstance(caught.value.__cause__, pycurl.error)
    assert not isinstance(caught.value, NetworkError)
