"""Redis crashes (`kill -9`) and comes back with its AOF: nothing queued is lost, the
worker reconnects by itself, and producers fail fast meanwhile."""

from __future__ import annotations

import time

import pytest

from conftest import RedisServer, Reply, settings_from, wait_for
from helpers import SIGN_IN
from emailq import Producer, QueueUnavailable


def test_redis_killed_and_restarted_loses_nothing(settings_env, endpoint, start_worker, tmp_path):
    # What a Redis crash keeps is its fsync policy's business: `everysec` (what users run)
    # may lose the last second when the disk is slow. This test is about emailq's side,
    # so it takes the disk's window out.
    own = RedisServer(tmp_path / "own-redis", "--appendfsync", "always")
    own.directory.mkdir()
    own.start()
    env = {**settings_env, "EMAILQ_REDIS_URL": own.url, "EMAILQ_REDIS_TIMEOUT": "0.3"}
    producer = Producer(settings_from(env))
    try:
        endpoint.behave = lambda headers, body: Reply(200, delay=0.02)
        start_worker(env=env)
        before = producer.send_many([SIGN_IN] * 200)
        wait_for(lambda: len(endpoint.received) >= 20, 20, "deliveries to begin")

        own.kill()
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            producer.send(SIGN_IN)
        assert time.monotonic() - started < 2

        time.sleep(2)
        own.start()
        after = producer.send_many([SIGN_IN] * 50)

        wait_for(
            lambda: set(endpoint.delivered_keys()) >= set(before) | set(after),
            60,
            "every email queued before and after the crash to be delivered",
            interval=0.2,
        )
    finally:
        producer.close()
        own.stop()
