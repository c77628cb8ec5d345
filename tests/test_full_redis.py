"""A full Redis (`maxmemory` with `noeviction`, as deploy/redis.conf sets it) is an
outage, not a crash: workers stay up, say so once, and carry on when there is room."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import redis
from conftest import RedisServer, Reply, settings_from, wait_for
from helpers import SIGN_IN, assert_one_home

from emailq import Producer


@pytest.fixture
def small_redis(tmp_path):
    server = RedisServer(tmp_path, "--maxmemory-policy", "noeviction")
    server.start()
    yield server
    server.stop()


def fill(client: redis.Redis) -> None:
    """Make Redis full for sure: some data, then a memory limit well under what it holds."""
    client.set("filler", b"x" * (4 << 20))
    client.config_set("maxmemory", "1mb")


def make_room(client: redis.Redis) -> None:
    client.config_set("maxmemory", "0")
    client.delete("filler")


def test_workers_ride_out_a_full_redis(small_redis, endpoint, start_worker, settings_env, tmp_path):
    env = {**settings_env, "EMAILQ_REDIS_URL": small_redis.url}
    client = small_redis.client()
    producer = Producer(settings_from(env))
    endpoint.behave = lambda headers, body: Reply(200, delay=0.5)
    worker = start_worker(env={"EMAILQ_REDIS_URL": small_redis.url})
    before = producer.send_many([SIGN_IN] * 40)
    wait_for(lambda: len(endpoint.received) >= 5, 20, "deliveries under way")

    fill(client)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.lpush("emailq", b"{}")
    time.sleep(5)
    assert worker.process.poll() is None, worker.output()[-3000:]
    log = worker.output()
    assert 1 <= log.count("Redis is full") <= 3, log[-3000:]
    stuck = producer.redis.llen("emailq")
    print(f"{stuck} emails queued while full; {len(endpoint.delivered_keys())} delivered")

    make_room(client)
    after = producer.send_many([SIGN_IN] * 20)
    wait_for(lambda: set(before + after) <= set(endpoint.delivered_keys()), 60, "every email delivered once Redis has room")
    assert worker.process.poll() is None
    wait_for(lambda: assert_one_home(client).census.in_flight == 0, 10, "nothing left in flight")


def test_a_worker_starts_while_redis_is_full_and_retries_wait_for_room(small_redis, endpoint, start_worker, settings_env):
    env = {**settings_env, "EMAILQ_REDIS_URL": small_redis.url}
    client = small_redis.client()
    producer = Producer(settings_from(env))
    ids = producer.send_many([SIGN_IN] * 10)
    first_tries: set[str] = set()

    def fail_first(headers: dict[str, str], body: bytes) -> Reply:
        key = headers["idempotency-key"]
        if key not in first_tries:
            first_tries.add(key)
            return Reply(503)
        return Reply(200)

    endpoint.behave = fail_first
    fill(client)
    worker = start_worker(env={"EMAILQ_REDIS_URL": small_redis.url})  # ready, not dead
    time.sleep(3)
    assert worker.process.poll() is None
    assert endpoint.delivered_keys() == []

    make_room(client)
    wait_for(lambda: set(ids) <= set(endpoint.delivered_keys()), 30, "every email delivered, each after one retry")
    assert first_tries == set(ids)
    wait_for(lambda: assert_one_home(client).census.in_flight == 0, 10, "nothing left in flight")


def test_the_ingest_says_full_and_not_ready_and_recovers(small_redis, settings_env, tmp_path):
    from test_ingest import Ingest

    env = {**settings_env, "EMAILQ_REDIS_URL": small_redis.url}
    ingest = Ingest(env, tmp_path)
    client = small_redis.client()
    try:
        assert httpx.get(ingest.url + "/readyz").status_code == 200
        fill(client)
        answer = ingest.post(json.dumps(SIGN_IN).encode(), {"Content-Type": "application/json"})
        assert answer.status_code == 503 and "nothing was enqueued" in answer.json()["error"]
        ready = httpx.get(ingest.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "redis is full"
        make_room(client)
        assert httpx.get(ingest.url + "/readyz").status_code == 200
        assert ingest.post(json.dumps(SIGN_IN).encode(), {"Content-Type": "application/json"}).status_code == 202
        assert "Traceback" not in ingest.log.read_text()
    finally:
        ingest.stop()
