"""At-least-once under crashes: `kill -9` a worker mid-delivery and lose nothing."""

from __future__ import annotations

from conftest import Reply, wait_for

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
VISIBILITY = 5


def test_worker_killed_mid_delivery_loses_nothing(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(200, delay=0.5)
    crash_env = {
        "EMAILQ_VISIBILITY_TIMEOUT": str(VISIBILITY),
        "EMAILQ_REQUEST_TIMEOUT": "1",
        "EMAILQ_CONNECT_TIMEOUT": "0.5",
        "EMAILQ_MAX_ATTEMPTS": "2",
        "EMAILQ_MESSAGE_TTL_SECONDS": "60",
        "EMAILQ_CONCURRENCY": "4",
    }
    first = start_worker(env=crash_env)
    ids = producer.send_many([SIGN_IN] * 20)

    # Kill it while deliveries are in flight: some requests received, not all.
    wait_for(lambda: len(endpoint.received) >= 3, 20, "the first deliveries")
    first.kill()
    in_flight = redis_client.hlen("unacked")
    assert in_flight > 0, "the killed worker held no unacked message: the test proved nothing"
    assert len(set(endpoint.delivered_keys())) < len(ids)

    start_worker(env=crash_env)
    wait_for(
        lambda: set(endpoint.delivered_keys()) >= set(ids),
        VISIBILITY * 2 + 30,
        "every email delivered after the crash",
        interval=0.2,
    )
    assert redis_client.llen("emailq") == 0
    assert redis_client.zcard("emailq:dlq:index") == 0
