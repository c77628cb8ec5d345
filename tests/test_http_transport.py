"""Both HTTP clients under the worker's POSTs (libcurl, httpx), held to the same promises
(`emailq.worker.delivery.http_client`) against a real endpoint on loopback."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate

import httpx
import pytest
import trustme

from conftest import Endpoint, Reply
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.errors import ConnectError, HttpClientError, ReadTimeout
from emailq.worker.delivery.http_client import Answer, HttpClient
from emailq.worker.delivery.httpx_client import HttpxClient

CLIENTS: dict[str, Callable[[int], HttpClient]] = {
    "curl": lambda max_body_bytes: CurlClient(max_body_bytes),
    "httpx": lambda max_body_bytes: HttpxClient(max_body_bytes, pool_size=16),
}


@pytest.fixture(params=sorted(CLIENTS))
def make_client(request) -> Iterator[Callable[..., HttpClient]]:
    """Builds the client under test (each test runs once per client); closes what it built."""
    built: list[HttpClient] = []

    def make(max_body_bytes: int = 1024) -> HttpClient:
        built.append(CLIENTS[request.param](max_body_bytes))
        return built[-1]

    yield make
    for client in built:
        client.close()


def post(client: HttpClient, url: str, headers: list[str] | None = None, timeout: float = 2.0) -> Answer:
    return client.post(url, headers or [], b'{"to":"a@b.co"}', connect=1.0, timeout=timeout)


def test_keeps_one_connection_alive_across_requests(make_client, endpoint):
    client = make_client()
    endpoint.behave = lambda headers, body: Reply(503, body=b"busy", headers={"Retry-After": "7"})
    answers = [post(client, endpoint.url, [f"Idempotency-Key: {n}"]) for n in range(3)]

    assert [(a.status, a.retry_after, a.body) for a in answers] == [(503, 7, b"busy")] * 3
    assert [r.key for r in endpoint.received] == ["0", "1", "2"]
    assert len({r.peer for r in endpoint.received}) == 1


def test_sends_the_body_and_the_headers_as_given(make_client, endpoint):
    post(make_client(), endpoint.url, ["Authorization: Bearer a b c", "Idempotency-Key: k-1"])

    [request] = endpoint.received
    assert request.body == b'{"to":"a@b.co"}'
    assert (request.headers["authorization"], request.key) == ("Bearer a b c", "k-1")
    assert "accept-encoding" not in request.headers  # an excerpt is never compressed bytes


def test_retry_after_as_an_http_date_is_read_as_seconds_from_now(make_client, endpoint):
    endpoint.behave = lambda headers, body: Reply(429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)})
    answer = post(make_client(), endpoint.url)
    assert answer.status == 429
    assert 28 <= answer.retry_after <= 31


def test_no_retry_after_header_means_none(make_client, endpoint):
    endpoint.behave = lambda headers, body: Reply(500)
    assert post(make_client(), endpoint.url).retry_after is None


def test_a_body_longer_than_the_cap_is_cut_not_read_to_the_end(make_client, endpoint):
    endpoint.behave = lambda headers, body: Reply(400, endless=True)
    answer = post(make_client(max_body_bytes=2048), endpoint.url)
    assert (answer.status, len(answer.body)) == (400, 2048)


def test_an_endless_2xx_counts_once_its_body_is_cut(make_client, endpoint):
    endpoint.behave = lambda headers, body: Reply(200, endless=True)
    started = time.monotonic()
    answer = post(make_client(max_body_bytes=100_000), endpoint.url)
    assert (answer.status, len(answer.body)) == (200, 100_000)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_returned_not_followed(make_client, endpoint, status):
    elsewhere = Endpoint()
    try:
        endpoint.behave = lambda headers, body: Reply(status, headers={"Location": elsewhere.url})
        assert post(make_client(), endpoint.url).status == status
        assert elsewhere.received == []
    finally:
        elsewhere.close()


def test_a_slow_answer_is_a_read_timeout_within_the_request_timeout(make_client, endpoint):
    endpoint.behave = lambda headers, body: Reply(200, delay=1.5)
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as caught:
        post(make_client(), endpoint.url, timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert caught.value.__cause__ is not None  # the library's own error, kept for the log


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(make_client, endpoint):
    with pytest.raises(HttpClientError):
        post(make_client(), endpoint.url, ["Authorization: Bearer x\r\nX-Injected: 1"])
    assert endpoint.received == []


def test_a_closed_port_is_a_connect_error(make_client, endpoint):
    endpoint.go_down()
    with pytest.raises(ConnectError) as caught:
        post(make_client(), endpoint.url)
    assert isinstance(caught.value, httpx.ConnectError)  # httpx's vocabulary still applies


def test_threads_share_one_client(make_client, endpoint):
    client = make_client()
    answers: list[int] = []

    def send(n: int) -> None:
        for i in range(5):
            answers.append(post(client, endpoint.url, [f"Idempotency-Key: {n}-{i}"]).status)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 40
    assert len({r.key for r in endpoint.received}) == 40


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_endpoint(authority) -> Iterator[Endpoint]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = Endpoint(tls=context)
    yield server
    server.close()


def test_an_untrusted_certificate_is_never_accepted(make_client, tls_endpoint):
    with pytest.raises(ConnectError) as caught:
        post(make_client(), tls_endpoint.url)
    assert "TLS" in str(caught.value) and "certificate" in str(caught.value)
    assert tls_endpoint.received == []


def test_a_certificate_from_ssl_cert_file_is_trusted(make_client, tls_endpoint, authority, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert post(make_client(), tls_endpoint.url).status == 200
