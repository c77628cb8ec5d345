"""Delivery end to end: producer -> Redis -> `emailq worker` -> a real HTTP endpoint, or -> DLQ."""

from __future__ import annotations

import base64
import json
import time

import pytest

from conftest import Reply, wait_for
from helpers import KEYS

from emailq.worker.places.dead_letters import DeadLetters

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456", "locale": "en"}}
SECRET = "Bearer s3cr3t-token-value"


def dead_letters(redis_client) -> DeadLetters:
    return DeadLetters(redis_client, KEYS)


def test_posts_exactly_the_logto_body_with_auth_and_idempotency_key(producer, endpoint, start_worker):
    start_worker(env={"EMAILQ_ENDPOINT_AUTHORIZATION": SECRET})
    message_id = producer.send({**SIGN_IN, "ip": "203.0.113.9"})

    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery")
    [request] = endpoint.received
    assert request.json == {**SIGN_IN, "ip": "203.0.113.9"}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == SECRET
    assert request.key == message_id


def test_5xx_is_retried_with_the_same_idempotency_key(producer, endpoint, start_worker):
    replies = iter([Reply(503), Reply(500), Reply(200)])
    endpoint.behave = lambda headers, body: next(replies)
    start_worker()
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery after two 5xx")
    assert [r.status for r in endpoint.received] == [503, 500, 200]
    assert {r.key for r in endpoint.received} == {message_id}


def test_408_425_429_are_retried(producer, endpoint, start_worker, settings_env):
    replies = iter([Reply(408), Reply(425), Reply(429), Reply(202)])
    endpoint.behave = lambda headers, body: next(replies)
    start_worker(env={"EMAILQ_MAX_ATTEMPTS": "4"})
    producer.send(SIGN_IN)

    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery after 408, 425, 429")
    assert [r.status for r in endpoint.received] == [408, 425, 429, 202]


def test_retry_after_is_honoured(producer, endpoint, start_worker):
    replies = iter([Reply(429, headers={"Retry-After": "2"}), Reply(200)])
    endpoint.behave = lambda headers, body: next(replies)
    start_worker(env={"EMAILQ_RETRY_MAX_SECONDS": "5"})
    producer.send(SIGN_IN)

    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery after Retry-After")
    first, second = endpoint.received
    assert second.at - first.at >= 1.9


def test_4xx_goes_to_dlq_without_retry(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(422, body=b'{"error":"template not found"}')
    start_worker(env={"EMAILQ_ENDPOINT_AUTHORIZATION": SECRET})
    message_id = producer.send(SIGN_IN)

    store = dead_letters(redis_client)
    wait_for(lambda: store.count(), 20, "a dead letter")
    entry = store.get(message_id)
    assert len(endpoint.received) == 1
    assert (entry.reason, entry.status, entry.attempts) == ("rejected", 422, 1)
    assert "template not found" in entry.response_excerpt
    assert entry.envelope["message"] == SIGN_IN
    assert SECRET not in json.dumps(entry.public(reveal=True))


def test_retries_exhausted_go_to_dlq_with_last_status(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(503, body=b"maintenance")
    start_worker(env={"EMAILQ_MAX_ATTEMPTS": "3"})
    message_id = producer.send(SIGN_IN)

    store = dead_letters(redis_client)
    wait_for(lambda: store.count(), 20, "a dead letter")
    entry = store.get(message_id)
    assert len(endpoint.received) == 3
    assert (entry.reason, entry.status, entry.attempts) == ("exhausted", 503, 3)
    assert entry.response_excerpt == "maintenance"
    assert entry.first_attempt_at < entry.last_attempt_at


def test_endpoint_down_is_retried_then_dead_lettered(producer, endpoint, start_worker, redis_client):
    endpoint.close()  # nothing listens on its port any more
    start_worker(env={"EMAILQ_MAX_ATTEMPTS": "2"})
    message_id = producer.send(SIGN_IN)

    store = dead_letters(redis_client)
    wait_for(lambda: store.count(), 20, "a dead letter")
    entry = store.get(message_id)
    assert (entry.reason, entry.status, entry.attempts) == ("exhausted", None, 2)
    assert "ConnectError" in entry.detail


def test_read_timeout_is_retried(producer, endpoint, start_worker):
    replies = iter([Reply(200, delay=2.0), Reply(200)])
    endpoint.behave = lambda headers, body: next(replies)
    start_worker(env={"EMAILQ_REQUEST_TIMEOUT": "0.5"})
    message_id = producer.send(SIGN_IN)

    wait_for(lambda: len(endpoint.received) == 2, 20, "a retry after a read timeout")
    assert [r.key for r in endpoint.received] == [message_id, message_id]


def test_expired_message_is_not_sent(settings_env, endpoint, start_worker, redis_client):
    from conftest import settings_from
    from emailq import Producer

    short = Producer(settings_from({**settings_env, "EMAILQ_MESSAGE_TTL_SECONDS": "0.2"}))
    message_id = short.send(SIGN_IN)
    time.sleep(0.5)
    start_worker()

    store = dead_letters(redis_client)
    wait_for(lambda: store.count(), 20, "a dead letter")
    assert store.get(message_id).reason == "expired"
    assert endpoint.received == []


def test_malformed_messages_are_dead_lettered_and_the_worker_carries_on(producer, endpoint, start_worker, redis_client):
    redis_client.lpush("emailq", b"\xff not even json")
    bad_envelope = producer.settings.model_copy()  # any object; we only need the queue name
    from emailq.message import Email, Envelope
    from emailq.task_message import task_message

    message = json.loads(task_message(Envelope.wrap(Email(**SIGN_IN), 60), bad_envelope.queue))
    import base64

    body = json.loads(base64.b64decode(message["body"]))
    body[0][0] = {"id": "broken-1", "message": {"to": "nobody"}}
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    redis_client.lpush("emailq", json.dumps(message))
    start_worker()
    good = producer.send(SIGN_IN)

    wait_for(lambda: good in endpoint.delivered_keys(), 20, "the good email after the bad ones")
    store = dead_letters(redis_client)
    wait_for(lambda: store.count() == 2, 10, "two malformed dead letters")
    assert {e.reason for e in store.list()} == {"malformed"}
    assert store.get("broken-1").raw


def _queue_raw_envelope(redis_client, queue: str, envelope: dict) -> None:
    from emailq.message import Email, Envelope
    from emailq.task_message import task_message

    message = json.loads(task_message(Envelope.wrap(Email(**SIGN_IN), 60), queue))
    body = json.loads(base64.b64decode(message["body"]))
    body[0][0] = envelope
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    redis_client.lpush(queue, json.dumps(message))


@pytest.mark.parametrize(
    "change",
    [
        {"message": {**SIGN_IN, "to": "two@example.com, three@example.com"}},
        {"id": "x\r\nX-Injected: 1"},
    ],
    ids=["not-one-address", "id-with-line-break"],
)
def test_a_queued_email_the_worker_would_not_send_is_dead_lettered_unsent(producer, endpoint, start_worker, redis_client, change):
    # Written straight to Redis, past the producer's checks.
    valid = {"id": "raw-1", "created_at": time.time(), "expires_at": time.time() + 60, "message": SIGN_IN}
    _queue_raw_envelope(redis_client, producer.settings.queue, {**valid, **change})
    start_worker()

    store = dead_letters(redis_client)
    wait_for(lambda: store.count() == 1, 20, "a malformed dead letter")
    assert store.list()[0].reason == "malformed"
    assert endpoint.received == []
