"""Every email in exactly one place, through faults that used to duplicate or loop it:
a dropped Redis connection, junk on the queue."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

from conftest import Reply, wait_for
from helpers import KEYS, SIGN_IN, assert_one_home

from emailq.store import census
from emailq.message import Email, Envelope
from emailq.task_message import task_message
from emailq.worker.places.dead_letters import DeadLetters


def test_a_dropped_connection_duplicates_nothing(producer, endpoint, start_worker, redis_client, defaults_env):
    endpoint.behave = lambda headers, body: Reply(200, delay=1.0)
    worker = start_worker(env=defaults_env)
    ids = producer.send_many([SIGN_IN] * 150)
    wait_for(lambda: census.count(redis_client, KEYS).in_flight >= 32, 20, "deliveries in flight")

    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1

    endpoint_received = lambda: Counter(r.key for r in endpoint.received)  # noqa: E731
    wait_for(lambda: set(endpoint_received()) >= set(ids), 60, "every email delivered", interval=0.2)
    twice = [key for key, n in endpoint_received().items() if n > 1]
    assert twice == [], f"{len(twice)} emails posted twice after a dropped connection"
    assert worker.process.poll() is None
    # The endpoint counts a request before it answers, the worker settles it after.
    wait_for(lambda: census.count(redis_client, KEYS).in_flight == 0, 5, "nothing left in flight")
    now = census.count(redis_client, KEYS)
    assert (now.queued, now.scheduled, now.dead_lettered) == (0, 0, 0)
    assert_one_home(redis_client)


def _kombu_message(**change) -> dict:
    message = json.loads(task_message(Envelope.wrap(Email(**SIGN_IN), 900), "emailq"))
    for path, value in change.items():
        section, _, name = path.partition("__")
        if value is None:
            message[section].pop(name)
        else:
            message[section][name] = value
    return message


def test_junk_on_the_queue_is_dead_lettered_once_without_a_reconnect(producer, endpoint, start_worker, redis_client):
    junk = [
        b"\xff not even json",
        b"[1, 2, 3]",
        json.dumps(_kombu_message(properties__delivery_tag=None)).encode(),
        json.dumps(_kombu_message(properties__body_encoding="rot13")).encode(),
        json.dumps(_kombu_message(headers__task="someone.elses_task")).encode(),
        json.dumps({**_kombu_message(), "body": base64.b64encode(b"not json").decode()}).encode(),
    ]
    worker = start_worker()
    for item in junk:
        redis_client.lpush("emailq", item)
    good = producer.send_many([SIGN_IN] * 5)

    wait_for(lambda: set(endpoint.delivered_keys()) >= set(good), 20, "the good emails, behind the junk")
    store = DeadLetters(redis_client, KEYS)
    wait_for(lambda: store.count() == len(junk), 10, "every junk item dead-lettered")
    assert {entry.reason for entry in store.list()} == {"malformed"}
    log = worker.output()
    assert "Connection to broker lost" not in log and "Traceback" not in log
    # The endpoint counts a request before it answers, the worker settles it after.
    wait_for(lambda: census.count(redis_client, KEYS).in_flight == 0, 5, "nothing left in flight")
    assert census.count(redis_client, KEYS).queued == 0
    assert_one_home(redis_client)


def test_a_dead_letter_redis_refuses_stays_with_the_worker_until_it_can_land(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(400, b"bad recipient")
    redis_client.set("emailq:dlq:index", "not a sorted set")  # every DLQ write now fails
    start_worker()
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: len(endpoint.received) == 1, 20, "the rejected attempt")
    time.sleep(2)
    held = sum(redis_client.llen(k) for k in redis_client.keys("emailq:inflight:*"))
    assert held == 1, "not acked: still held by its worker"
    assert not redis_client.hexists("emailq:dlq", message_id), "no half-written dead letter"

    redis_client.delete("emailq:dlq:index")
    wait_for(lambda: redis_client.hexists("emailq:dlq", message_id), 10, "the dead letter once Redis takes it")
    wait_for(lambda: census.count(redis_client, KEYS).in_flight == 0, 5, "nothing left in flight")
    assert DeadLetters(redis_client, KEYS).get(message_id).reason == "rejected"
    assert_one_home(redis_client)
