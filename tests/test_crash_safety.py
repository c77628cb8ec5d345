"""At-least-once under crashes: `kill -9` a worker mid-delivery and lose nothing."""

from __future__ import annotations

import json

from conftest import Reply, wait_for

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
VISIBILITY = 5
CRASH_ENV = {
    "EMAILQ_VISIBILITY_TIMEOUT": str(VISIBILITY),
    "EMAILQ_REQUEST_TIMEOUT": "1",
    "EMAILQ_CONNECT_TIMEOUT": "0.5",
    "EMAILQ_MAX_ATTEMPTS": "2",
    "EMAILQ_MESSAGE_TTL_SECONDS": "60",
    "EMAILQ_CONCURRENCY": "4",
    # Holding deliveries through an outage would let one outlast this short timeout.
    "EMAILQ_BREAKER_THRESHOLD": "0",
}


def test_worker_killed_mid_delivery_loses_nothing(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(200, delay=0.5)
    first = start_worker(env=CRASH_ENV)
    ids = producer.send_many([SIGN_IN] * 20)

    # Kill it while deliveries are in flight: some requests received, not all.
    wait_for(lambda: len(endpoint.received) >= 3, 20, "the first deliveries")
    first.kill()
    in_flight = redis_client.hlen("unacked")
    assert in_flight > 0, "the killed worker held no unacked message: the test proved nothing"
    assert len(set(endpoint.delivered_keys())) < len(ids)

    start_worker(env=CRASH_ENV)
    wait_for(
        lambda: set(endpoint.delivered_keys()) >= set(ids),
        VISIBILITY * 2 + 30,
        "every email delivered after the crash",
        interval=0.2,
    )
    assert redis_client.llen("emailq") == 0
    assert redis_client.zcard("emailq:dlq:index") == 0


def test_message_popped_by_a_worker_that_died_before_recording_it_comes_back(
    producer, endpoint, start_worker, redis_client
):
    # The narrowest crash window: the pop has moved the message onto the dead consumer's
    # inbox, the unacked record was never written. Set that state up exactly.
    message_id = producer.send(SIGN_IN)
    inbox = "emailq:inbox:dead-consumer"
    assert redis_client.lmove("emailq", inbox, "RIGHT", "LEFT") is not None
    redis_client.sadd("_emailq.inboxes", json.dumps(["emailq", inbox, "_emailq.alive:dead-consumer"]))

    start_worker(env=CRASH_ENV)
    wait_for(lambda: message_id in endpoint.delivered_keys(), 30, "the stranded email delivered")
    assert redis_client.llen(inbox) == 0
    assert not any(b"dead-consumer" in m for m in redis_client.smembers("_emailq.inboxes"))
