"""Endpoints that misbehave: each has a defined outcome, and none can hold a worker."""

from __future__ import annotations

import ssl

import pytest
import trustme

from conftest import Endpoint, Reply, wait_for
from emailq.worker.dead_letters import DeadLetters

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}


def store(redis_client) -> DeadLetters:
    return DeadLetters(redis_client, "emailq")


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
