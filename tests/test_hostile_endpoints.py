"""Endpoints that misbehave: each has a defined outcome, and none can hold a worker.

First through `emailq worker`; then the same endpoints in process, through `Deliverer`
with each HTTP client (libcurl and httpx)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from conftest import Endpoint, Reply, wait_for
from helpers import KEYS, SIGN_IN

from emailq.message import Email, Envelope
from emailq.settings import Settings
from emailq.worker.places.dead_letters import DeadLetters
from emailq.worker.delivery.deliverer import Deliverer, build_client


def store(redis_client) -> DeadLetters:
    return DeadLetters(redis_client, KEYS)


def test_slow_endpoint_times_out_and_is_dead_lettered_after_retries(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(200, delay=1.5)
    start_worker(env={"EMAILQ_REQUEST_TIMEOUT": "0.3", "EMAILQ_MAX_ATTEMPTS": "2"})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: store(redis_client).count(), 20, "a dead letter")
    entry = store(redis_client).get(message_id)
    assert (entry.reason, entry.attempts) == ("exhausted", 2)
    assert "ReadTimeout" in entry.detail


def test_a_2xx_after_the_timeout_is_retried_under_the_same_key(producer, endpoint, start_worker):
    replies = iter([Reply(200, delay=1.5), Reply(200)])
    endpoint.behave = lambda headers, body: next(replies)
    start_worker(env={"EMAILQ_REQUEST_TIMEOUT": "0.3"})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: len(endpoint.delivered_keys()) == 2, 20, "the late 2xx and the retry")
    assert endpoint.delivered_keys() == [message_id, message_id]  # the endpoint dedupes by key


def test_endless_response_is_cut_off(producer, endpoint, start_worker, redis_client):
    replies = iter([Reply(503, endless=True), Reply(200, endless=True)])
    endpoint.behave = lambda headers, body: next(replies)
    worker = start_worker(env={"EMAILQ_MAX_RESPONSE_BYTES": "100000"})
    message_id = producer.send(SIGN_IN)

    # The second (2xx) reply never ends either; reading stops at the cap and it counts.
    wait_for(lambda: f"delivered {message_id}" in worker.output(), 20, "the delivery despite endless bodies")
    assert store(redis_client).count() == 0


def test_huge_error_body_is_kept_only_as_a_short_excerpt(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(400, body=b"E" * 5_000_000)
    start_worker()
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: store(redis_client).count(), 20, "a dead letter")
    entry = store(redis_client).get(message_id)
    assert entry.status == 400
    assert 0 < len(entry.response_excerpt) <= 300


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(producer, endpoint, start_worker, redis_client, status):
    elsewhere = Endpoint()
    try:
        endpoint.behave = lambda headers, body: Reply(status, headers={"Location": elsewhere.url})
        start_worker()
        message_id = producer.send(SIGN_IN)

        wait_for(lambda: store(redis_client).count(), 20, "a dead letter")
        entry = store(redis_client).get(message_id)
        assert (entry.reason, entry.status, entry.attempts) == ("rejected", status, 1)
        assert elsewhere.received == []
    finally:
        elsewhere.close()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_endpoint(authority):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    server = Endpoint(tls=context)
    yield server
    server.close()


def test_untrusted_certificate_is_never_downgraded(producer, tls_endpoint, start_worker, redis_client):
    start_worker(env={"EMAILQ_ENDPOINT_URL": tls_endpoint.url, "EMAILQ_MAX_ATTEMPTS": "2"})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: store(redis_client).count(), 20, "a dead letter")
    entry = store(redis_client).get(message_id)
    assert entry.reason == "exhausted"
    assert "TLS" in entry.detail and "certificate" in entry.detail
    assert tls_endpoint.received == []


def test_trusted_certificate_delivers_over_tls(producer, tls_endpoint, start_worker, authority, tmp_path):
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    start_worker(env={"EMAILQ_ENDPOINT_URL": tls_endpoint.url, "SSL_CERT_FILE": str(bundle)})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: tls_endpoint.delivered_keys() == [message_id], 20, "a delivery over TLS")


def test_emailq_http_client_httpx_delivers_through_httpx(producer, tls_endpoint, start_worker, redis_client):
    if "http_client" not in Settings.model_fields:
        pytest.skip("EMAILQ_HTTP_CLIENT is not a setting yet: the worker would ignore it")
    start_worker(env={"EMAILQ_ENDPOINT_URL": tls_endpoint.url, "EMAILQ_MAX_ATTEMPTS": "1", "EMAILQ_HTTP_CLIENT": "httpx"})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: store(redis_client).count(), 20, "a dead letter")
    # Python's ssl module words it so; libcurl's OpenSSL message does not.
    assert "CERTIFICATE_VERIFY_FAILED" in store(redis_client).get(message_id).detail


# The same endpoints in process, once with each HTTP client: `Deliverer` over a real client
# and a real endpoint, without Redis or a worker.


@pytest.fixture(params=["curl", "httpx"])
def deliverer(request) -> Iterator[Callable[..., Deliverer]]:
    built: list[Deliverer] = []

    def make(url: str, **settings: Any) -> Deliverer:
        tuned = Settings(
            _env_file=None,
            endpoint_url=url,
            max_attempts=3,
            retry_base_seconds=0.05,
            retry_max_seconds=1,
            concurrency=4,
            **settings,
        )
        built.append(Deliverer(tuned, client=build_client(tuned.model_copy(update={"http_client": request.param}))))
        return built[-1]

    yield make
    for made in built:
        made.close()


def fresh(attempts: int = 0) -> Envelope:
    return Envelope.wrap(Email.model_validate(SIGN_IN), 900).model_copy(update={"attempts": attempts})


def test_in_process_a_slow_endpoint_is_retried_then_exhausted(deliverer, endpoint):
    endpoint.behave = lambda headers, body: Reply(200, delay=1.5)
    deliver = deliverer(endpoint.url, request_timeout=0.3).deliver

    first, last = deliver(fresh()), deliver(fresh(attempts=2))
    assert first.retry_in is not None and first.outage and first.error.startswith("ReadTimeout")
    assert (last.reason, last.retry_in) == ("exhausted", None)


def test_in_process_a_2xx_after_the_timeout_is_retried_under_the_same_key(deliverer, endpoint):
    replies = iter([Reply(200, delay=1.0), Reply(200)])
    endpoint.behave = lambda headers, body: next(replies)
    deliver = deliverer(endpoint.url, request_timeout=0.3).deliver
    envelope = fresh()

    timed_out = deliver(envelope)
    assert timed_out.retry_in is not None
    assert deliver(envelope.after(timed_out.attempt)).delivered
    wait_for(lambda: len(endpoint.delivered_keys()) == 2, 5, "the late 2xx")
    assert endpoint.delivered_keys() == [envelope.id, envelope.id]


@pytest.mark.parametrize("status", [503, 200])
def test_in_process_an_endless_answer_is_cut_off(deliverer, endpoint, status):
    endpoint.behave = lambda headers, body: Reply(status, endless=True)
    outcome = deliverer(endpoint.url, max_response_bytes=100_000).deliver(fresh())
    assert outcome.status == status
    assert outcome.delivered if status == 200 else (outcome.retry_in is not None and len(outcome.excerpt) <= 300)


def test_in_process_a_huge_error_body_is_kept_only_as_a_short_excerpt(deliverer, endpoint):
    endpoint.behave = lambda headers, body: Reply(400, body=b"E" * 5_000_000)
    outcome = deliverer(endpoint.url).deliver(fresh())
    assert (outcome.reason, outcome.status) == ("rejected", 400)
    assert 0 < len(outcome.excerpt) <= 300


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_in_process_redirects_are_rejected_not_followed(deliverer, endpoint, status):
    elsewhere = Endpoint()
    try:
        endpoint.behave = lambda headers, body: Reply(status, headers={"Location": elsewhere.url})
        outcome = deliverer(endpoint.url).deliver(fresh())
        assert (outcome.reason, outcome.status) == ("rejected", status)
        assert elsewhere.received == []
    finally:
        elsewhere.close()


def test_in_process_an_untrusted_certificate_is_retried_never_downgraded(deliverer, tls_endpoint):
    deliver = deliverer(tls_endpoint.url).deliver
    first, last = deliver(fresh()), deliver(fresh(attempts=2))
    assert first.retry_in is not None and "TLS" in first.error and "certificate" in first.error
    assert last.reason == "exhausted"
    assert tls_endpoint.received == []


def test_in_process_a_trusted_certificate_delivers_over_tls(deliverer, tls_endpoint, authority, tmp_path, monkeypatch):
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    envelope = fresh()
    assert deliverer(tls_endpoint.url).deliver(envelope).delivered
    assert tls_endpoint.delivered_keys() == [envelope.id]
