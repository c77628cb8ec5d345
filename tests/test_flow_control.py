"""Flow control, at default settings unless a test says otherwise: sign-in codes never
wait behind bulk, bulk still moves, and a rate limit holds across workers."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from conftest import RedisServer, Reply, settings_from, wait_for
from helpers import INVITATION, SIGN_IN, assert_one_home, busiest_window, pace, sign_in_waits

from emailq import Producer

pytestmark = pytest.mark.slow


def delivered_at(endpoint):
    """When the endpoint answered an email 2xx, by its id (None: not yet)."""

    def at(key: str) -> float | None:
        return next((r.at for r in endpoint.requests_for(key) if 200 <= r.status < 300), None)

    return at


def test_sign_in_codes_pass_20000_bulk_emails(producer, endpoint, start_worker, redis_client, defaults_env):
    start_worker(env=defaults_env)
    producer.send_many([INVITATION] * 20000)
    wait_for(lambda: len(endpoint.received) >= 500, 30, "the bulk send under way")

    waits = sign_in_waits(lambda: producer.send(SIGN_IN), delivered_at(endpoint), count=20)
    print(f"sign-in codes behind 20,000 bulk: max {max(waits):.3f}s, median {sorted(waits)[10]:.3f}s")
    assert max(waits) < 2
    assert redis_client.llen("emailq:bulk") > 0, "the bulk send was still queued: the test proved something"


def test_bulk_still_moves_while_both_lanes_are_full(producer, endpoint, start_worker, redis_client, defaults_env):
    interactive = set(producer.send_many([SIGN_IN] * 2000))
    bulk = set(producer.send_many([SIGN_IN] * 1000, bulk=True))  # marked bulk by the caller
    start_worker(env=defaults_env)
    wait_for(lambda: len(endpoint.received) >= 1000, 60, "1,000 deliveries")
    first = [r.key for r in endpoint.received[:1000]]
    share = sum(key in bulk for key in first) / len(first)
    print(f"bulk share of the first 1,000 deliveries with both lanes full: {share:.1%}")
    assert 0.08 <= share <= 0.2
    wait_for(lambda: set(endpoint.delivered_keys()) >= interactive | bulk, 60, "everything delivered")
    assert_one_home(redis_client)


@pytest.fixture
def quiet_redis(tmp_path):
    """A Redis of this test's own, without the session server's append-only file: the
    suite writes tens of MB to that, and a rewrite of it (fsync on every write meanwhile)
    stalled a CI run's takes for seconds (pace 36.7/s), which says nothing of the limiter."""
    server = RedisServer(tmp_path / "quiet-redis", "--appendonly", "no")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def test_a_rate_limit_holds_across_three_workers(quiet_redis, endpoint, start_worker, settings_env, defaults_env):
    limited = {**defaults_env, "EMAILQ_RATE_LIMIT": "50", "EMAILQ_REDIS_URL": quiet_redis.url}
    for _ in range(3):
        start_worker(env=limited)
    producer = Producer(settings_from({**settings_env, **limited}))
    ids = producer.send_many([SIGN_IN] * 500)
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(ids), 60, "every email delivered", interval=0.2)

    times = [r.at for r in endpoint.received]
    busiest, achieved = busiest_window(times), pace(times)
    print(f"rate limit 50/s over 3 workers: busiest 1-s window {busiest}, pace {achieved:.1f}/s")
    assert busiest <= 55
    assert 45 <= achieved <= 55
    assert Counter(r.key for r in endpoint.received).most_common(1)[0][1] == 1, "no attempt spent waiting"
    assert_one_home(quiet_redis.client())
    producer.close()


def test_a_429_slows_the_whole_cluster_when_a_limit_is_set(producer, endpoint, start_worker, redis_client, defaults_env):
    answered = []

    def busy_at_first(headers: dict[str, str], body: bytes) -> Reply:
        answered.append(time.time())
        return Reply(429) if len(answered) == 20 else Reply(200)

    endpoint.behave = busy_at_first
    start_worker(env={**defaults_env, "EMAILQ_RATE_LIMIT": "40"})
    producer.send_many([SIGN_IN] * 200)
    wait_for(lambda: len(answered) >= 150, 60, "deliveries after the 429")
    after = [t for t in answered[20:150]]
    pace = (len(after) - 1) / (after[-1] - after[0])
    print(f"pace after a 429 with a 40/s limit: {pace:.1f}/s")
    assert pace <= 40 / 2 * 1.15
    assert redis_client.exists("emailq:rate:slowdown")
