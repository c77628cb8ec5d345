"""Waiting never holds a worker (default settings): emails that fail, forever or at
random, wait in the Redis schedule while every other email goes through; a worker stops
within seconds whatever the endpoint does."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest
from conftest import Reply, wait_for
from helpers import KEYS, assert_one_home

from emailq.store import census
from emailq.worker.places.dead_letters import DeadLetters

pytestmark = pytest.mark.slow

HEALTHY = 2000
FAILING = 128


def healthy(i: int) -> dict:
    return {"to": f"user{i}@example.com", "type": "SignIn", "payload": {"code": "123456"}}


def broken(i: int) -> dict:
    return {"to": f"user{i}@broken.example", "type": "SignIn", "payload": {"code": "123456"}}


def time_to_deliver(producer, endpoint, emails: list[dict], share: float = 1.0, timeout: float = 120) -> float:
    started = time.monotonic()
    ids = producer.send_many(emails)
    need = int(len(ids) * share)
    wait_for(lambda: len(set(endpoint.delivered_keys()) & set(ids)) >= need, timeout, f"{need} of {len(ids)} delivered", interval=0.05)
    return time.monotonic() - started


def _fails_for_broken(reply: Reply):
    def behave(headers: dict[str, str], body: bytes) -> Reply:
        return reply if b"broken.example" in body else Reply(200)

    return behave


@pytest.mark.parametrize(
    "failure",
    [Reply(500, b"template error"), Reply(429, b"slow down", headers={"Retry-After": "30"})],
    ids=["500-forever", "429-retry-after-30"],
)
def test_healthy_emails_pass_emails_that_always_fail(producer, endpoint, start_worker, redis_client, defaults_env, failure):
    endpoint.behave = _fails_for_broken(failure)
    start_worker(env=defaults_env)
    alone = time_to_deliver(producer, endpoint, [healthy(i) for i in range(HEALTHY)])

    failing = producer.send_many([broken(i) for i in range(FAILING)])
    behind = time_to_deliver(producer, endpoint, [healthy(HEALTHY + i) for i in range(HEALTHY)])
    print(f"{HEALTHY} healthy alone: {alone:.1f}s; behind {FAILING} failing: {behind:.1f}s")
    assert behind <= max(3 * alone, alone + 10)

    # Progress, not the whole schedule (about two minutes at the defaults): every failing
    # email was tried and waits in the schedule, none in a thread.
    wait_for(lambda: census.count(redis_client, KEYS).scheduled == FAILING, 10, "all failing emails scheduled")
    # The endpoint counts a request before it answers, the worker settles it after.
    wait_for(lambda: census.count(redis_client, KEYS).in_flight == 0, 5, "nothing left in flight")
    now = assert_one_home(redis_client).census
    assert now.dead_lettered == 0
    for message_id in failing[:5]:
        assert len(endpoint.requests_for(message_id)) >= 1


def test_always_failing_emails_end_exhausted_with_their_history(producer, endpoint, start_worker, redis_client):
    # The schedule itself shortened (settings_env: 3 attempts, backoff up to 1 s) to keep
    # the test short; what it shows — the DLQ entry and its history — does not depend on it.
    endpoint.behave = _fails_for_broken(Reply(500, b"template error"))
    start_worker()
    failing = producer.send_many([broken(i) for i in range(FAILING)])
    wait_for(lambda: redis_client.zcard("emailq:dlq:index") == FAILING, 30, "all failing emails dead-lettered")
    entry = DeadLetters(redis_client, KEYS).get(failing[0])
    assert entry.reason == "exhausted" and entry.status == 500 and entry.attempts == 3
    assert [attempt["status"] for attempt in entry.history] == [500, 500, 500]
    assert entry.history[0]["at"] < entry.history[1]["at"] < entry.history[2]["at"]


def test_an_endpoint_failing_a_third_of_requests(producer, endpoint, start_worker, redis_client, defaults_env):
    worker = start_worker(env=defaults_env)
    alone = time_to_deliver(producer, endpoint, [healthy(i) for i in range(HEALTHY)])

    rng, lock = random.Random(7), threading.Lock()

    def flaky(headers: dict[str, str], body: bytes) -> Reply:
        with lock:
            return Reply(503) if rng.random() < 1 / 3 else Reply(200)

    endpoint.behave = flaky
    most = time_to_deliver(producer, endpoint, [healthy(HEALTHY + i) for i in range(HEALTHY)], share=0.95)
    print(f"healthy: {alone:.1f}s; 95% with a third failing: {most:.1f}s")
    assert most <= max(3 * alone, alone + 10)
    assert "endpoint looks down" not in worker.output()


def test_every_emails_first_two_attempts_fail(producer, endpoint, start_worker, redis_client, defaults_env):
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def third_time_lucky(headers: dict[str, str], body: bytes) -> Reply:
        with lock:
            seen[headers["idempotency-key"]] = seen.get(headers["idempotency-key"], 0) + 1
            return Reply(200) if seen[headers["idempotency-key"]] >= 3 else Reply(503)

    endpoint.behave = third_time_lucky
    worker = start_worker(env=defaults_env)
    # The default backoff before a 3rd attempt: 1-2 s, then 2-3 s.
    took = time_to_deliver(producer, endpoint, [healthy(i) for i in range(100)], timeout=60)
    print(f"100 emails, each failing twice first: {took:.1f}s")
    assert took <= 5 + 4
    assert "endpoint looks down" not in worker.output()
    assert redis_client.zcard("emailq:dlq:index") == 0


@pytest.mark.parametrize("endpoint_does", ["503", "refuses", "never-answers"])
def test_sigterm_exits_within_15s_and_nothing_is_lost(producer, endpoint, start_worker, redis_client, defaults_env, endpoint_does):
    if endpoint_does == "503":
        endpoint.behave = lambda headers, body: Reply(503)
    elif endpoint_does == "never-answers":
        endpoint.behave = lambda headers, body: Reply(200, delay=60)
    else:
        endpoint.go_down()
    worker = start_worker(env=defaults_env)
    ids = producer.send_many([healthy(i) for i in range(300)])
    time.sleep(3)
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(30)
    took = time.monotonic() - started
    print(f"SIGTERM with the endpoint {endpoint_does}: exited in {took:.1f}s")
    assert took < 15

    if endpoint_does == "refuses":
        endpoint.come_back()
    endpoint.behave = lambda headers, body: Reply(200)
    start_worker(env=defaults_env)

    def accounted() -> bool:
        dead = {e.id for e in DeadLetters(redis_client, KEYS).list()}
        return set(endpoint.delivered_keys()) | dead >= set(ids)

    # Emails that failed wait out their backoff (at most a few seconds after 3 s of 503s).
    wait_for(accounted, 60, "every email delivered or dead-lettered", interval=0.2)
    assert_one_home(redis_client)
