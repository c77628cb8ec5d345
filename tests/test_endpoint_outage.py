"""An endpoint outage holds deliveries instead of emptying the queue into the DLQ."""

from __future__ import annotations

import time

from conftest import wait_for

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
OUTAGE_SECONDS = 20


def test_1000_emails_survive_a_20s_outage(producer, endpoint, start_worker, redis_client):
    endpoint.go_down()
    worker = start_worker(
        env={
            "EMAILQ_MAX_ATTEMPTS": "3",
            "EMAILQ_RETRY_BASE_SECONDS": "0.2",
            "EMAILQ_RETRY_MAX_SECONDS": "1",
            "EMAILQ_BREAKER_PROBE_SECONDS": "1",
            "EMAILQ_MESSAGE_TTL_SECONDS": "300",
            "EMAILQ_CONCURRENCY": "16",
        }
    )
    ids = producer.send_many([SIGN_IN] * 1000)
    time.sleep(OUTAGE_SECONDS)
    # Without holding, 3 attempts with backoff under 1 s would have dead-lettered everything.
    assert redis_client.zcard("emailq:dlq:index") <= 5
    assert "endpoint looks down" in worker.output()

    endpoint.come_back()
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(ids), 60, "all 1000 delivered", interval=0.5)
    assert redis_client.zcard("emailq:dlq:index") <= 5
    assert "resuming deliveries" in worker.output()


def test_held_emails_still_expire(settings_env, endpoint, start_worker, redis_client):
    from conftest import settings_from
    from emailq import Producer

    endpoint.go_down()
    start_worker(env={"EMAILQ_BREAKER_THRESHOLD": "1", "EMAILQ_BREAKER_PROBE_SECONDS": "60"})
    short = Producer(settings_from({**settings_env, "EMAILQ_MESSAGE_TTL_SECONDS": "3"}))
    ids = short.send_many([SIGN_IN] * 5)

    wait_for(lambda: redis_client.zcard("emailq:dlq:index") == 5, 20, "held emails to expire")
    from emailq.worker.dead_letters import DeadLetters

    reasons = {DeadLetters(redis_client, "emailq").get(i).reason for i in ids}
    assert reasons == {"expired"}
