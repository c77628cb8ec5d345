"""What enqueueing costs a web app: `Producer.send` one at a time, `await
AsyncProducer.send` one at a time (10,000 sequential awaits), `Producer.send_many` in
bulk, and, for reference, the naive pattern's `task.delay()`. The queues here have no
consumer; they are deleted afterwards."""

from __future__ import annotations

import asyncio
import time

from benchmarks.harness import RedisServer, median, percentile
from benchmarks.messages import email_body
from emailq.enqueue import Producer
from emailq.enqueue_async import AsyncProducer
from emailq.settings import Settings

QUEUE = "bench-enqueue"


def _stats(took: list[float]) -> dict[str, float]:
    return {
        "n": len(took),
        "p50_us": percentile(took, 50) * 1e6,
        "p99_us": percentile(took, 99) * 1e6,
        "mean_us": sum(took) / len(took) * 1e6,
    }


def _one_at_a_time(call, items: list, warmup: int = 100) -> dict[str, float]:
    for item in items[:warmup]:
        call(item)
    took = []
    for item in items[warmup:]:
        start = time.perf_counter()
        call(item)
        took.append(time.perf_counter() - start)
    return _stats(took)


async def _async_one_at_a_time(url: str, items: list, warmup: int = 100) -> dict[str, float]:
    """`await AsyncProducer.send` one at a time (sequential awaits), as `_one_at_a_time`."""
    async with AsyncProducer(Settings(_env_file=None, redis_url=url, queue=QUEUE)) as producer:
        for item in items[:warmup]:
            await producer.send(item)
        took = []
        for item in items[warmup:]:
            start = time.perf_counter()
            await producer.send(item)
            took.append(time.perf_counter() - start)
    return _stats(took)


def measure(redis_server: RedisServer, db: int, sends: int = 2000, bulk: int = 10000, reps: int = 3, sends_async: int = 10000) -> dict:
    client = redis_server.client(db)
    producer = Producer(Settings(_env_file=None, redis_url=redis_server.url(db), queue=QUEUE))
    emails = [email_body(f"enq-{i}", i) for i in range(max(sends, bulk, sends_async) + 100)]
    result: dict = {}

    result["send"] = _one_at_a_time(producer.send, emails[: sends + 100])
    client.delete(QUEUE)

    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        producer.send_many(emails[:bulk])
        rates.append(bulk / (time.perf_counter() - start))
        client.delete(QUEUE)
    result["send_many"] = {"batch": bulk, "emails_per_s": median(rates), "runs": rates}

    result["send_async"] = asyncio.run(_async_one_at_a_time(redis_server.url(db), emails[: sends_async + 100]))
    client.delete(QUEUE)

    from benchmarks import naive

    naive.app.conf.broker_url = redis_server.url(db)
    naive.app.conf.task_default_queue = QUEUE
    result["celery_delay"] = _one_at_a_time(naive.send_email.delay, emails[: min(sends, 1000) + 100])
    client.delete(QUEUE)
    producer.close()
    return result
