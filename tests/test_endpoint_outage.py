"""A 20-second endpoint outage, at default settings: emails wait in Redis (the schedule,
and the queue while the breaker is open) and are all delivered once it is back."""

from __future__ import annotations

import time

import pytest
from conftest import Reply, wait_for
from helpers import KEYS, SIGN_IN, assert_one_home

pytestmark = pytest.mark.slow


OUTAGE_SECONDS = 20


@pytest.mark.parametrize("outage", ["refused", "503"])
def test_1000_emails_survive_a_20s_outage(producer, endpoint, start_worker, redis_client, defaults_env, outage):
    if outage == "refused":
        endpoint.go_down()
    else:
        endpoint.behave = lambda headers, body: Reply(503)
    worker = start_worker(env=defaults_env)
    ids = producer.send_many([SIGN_IN] * 1000)
    time.sleep(OUTAGE_SECONDS)
    now = assert_one_home(redis_client).census
    assert now.dead_lettered <= 5
    assert now.in_flight <= 1, "emails wait in Redis, not in the worker's threads"
    assert "endpoint looks down" in worker.output()

    if outage == "refused":
        endpoint.come_back()
    endpoint.behave = lambda headers, body: Reply(200)
    # The longest default wait after ~5 failed attempts is about 17 s.
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(ids), 60, "all 1000 delivered", interval=0.5)
    assert redis_client.zcard("emailq:dlq:index") <= 5
    assert "resuming deliveries" in worker.output()
    assert_one_home(redis_client)


def test_emails_expire_at_their_ttl_while_the_endpoint_is_down(settings_env, endpoint, start_worker, redis_client):
    from conftest import settings_from

    from emailq import Producer
    from emailq.worker.places.dead_letters import DeadLetters

    endpoint.go_down()
    start_worker(env={"EMAILQ_MAX_ATTEMPTS": "100"})  # so that only the TTL can stop them
    short = Producer(settings_from({**settings_env, "EMAILQ_MESSAGE_TTL_SECONDS": "3"}))
    ids = short.send_many([SIGN_IN] * 5)

    wait_for(lambda: redis_client.zcard("emailq:dlq:index") == 5, 20, "the emails to expire")
    reasons = {DeadLetters(redis_client, KEYS).get(i).reason for i in ids}
    assert reasons == {"expired"}
