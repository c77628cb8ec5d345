"""What each email costs Redis: commands (`INFO commandstats`, calls inside scripts
included) and the Redis process's CPU (`used_cpu_user + used_cpu_sys` of `INFO cpu`, I/O
included), enqueue and delivery measured apart, on a Redis of its own so that nothing else
is counted.

Enqueue: `EMAILS` emails by `Producer.send`, one at a time, as web apps send (a round trip,
so a read and a write system call in Redis, per email), and by `send_many` in batches of
`BATCH`, as bulk sends and `emailq send --file` do. Delivery: one
`emailq worker` with every setting at its default, against a 0 ms endpoint, delivers them
all; then the same with the trace off (`EMAILQ_TRACE_SECONDS=0`: what it costs), and with
`EMAILQ_RATE_LIMIT` set (high enough not to slow the worker, so
that only the limiter's own cost is added). One Redis core's ceiling follows from the CPU:
1 s / (enqueue + delivery µs per email).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import cells as c
from benchmarks.harness import Endpoint, RedisServer
from benchmarks.messages import email_body
from emailq.enqueue import Producer
from emailq.settings import Settings
from emailq.store.keys import Keys

EMAILS = 20000
RATE_LIMIT = 100000  # per second: the limiter runs on every take, and never waits
BATCH = 1000
STALL_SECONDS = 30.0
QUEUE = "bench-cost"
CONFIGS = (("defaults", {}), ("trace off", {"EMAILQ_TRACE_SECONDS": "0"}), ("rate limit", {"EMAILQ_RATE_LIMIT": str(RATE_LIMIT)}))


def snapshot(redis_server: RedisServer) -> tuple[int, float]:
    """(commands run so far, Redis CPU seconds so far)."""
    client = redis_server.client()
    stats = client.info("commandstats")
    calls = sum(int(entry["calls"]) for entry in stats.values())
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def per_email(before: tuple[int, float], after: tuple[int, float], emails: int) -> dict[str, float]:
    # The two INFO calls of a snapshot are counted too: 2 commands, a few µs, per phase.
    return {"commands": (after[0] - before[0] - 2) / emails, "cpu_us": (after[1] - before[1]) * 1e6 / emails}


def measure(workdir: Path, emails: int = EMAILS, log: Callable[[str], None] = print) -> dict:
    (workdir / "cost").mkdir(exist_ok=True)
    redis_server = RedisServer(workdir / "cost")
    endpoint = Endpoint(0, workdir)
    result: dict = {"emails": emails}
    try:
        ref = result["reference"] = reference(redis_server, emails // 2)
        log(f"  Redis per command for scale: PING one at a time {ref['ping_us']:.1f} µs, LPUSH pipelined {ref['lpush_us']:.1f} µs")
        for label, extra_env in CONFIGS:
            redis_server.client().flushdb()
            same = {name.removeprefix("EMAILQ_").lower(): value for name, value in extra_env.items()}
            producer = Producer(Settings(_env_file=None, **{**same, "redis_url": redis_server.url(), "queue": QUEUE}))
            bodies = [email_body(f"cost-{label}", i) for i in range(emails)]
            before = snapshot(redis_server)
            for body in bodies[: emails // 2]:
                producer.send(body)
            one_by_one = snapshot(redis_server)
            for i in range(emails // 2, emails, BATCH):
                producer.send_many(bodies[i : min(i + BATCH, emails)])
            enqueued = snapshot(redis_server)
            queue_keys = Keys.of(producer.settings)
            producer.close()
            delivered_before = endpoint.count()
            # Before the worker starts: its start-up (a few hundred commands) is counted
            # too, a hundredth of a command per email.
            start = snapshot(redis_server)
            worker = c.Emailq(0, endpoint, redis_server, 0, workdir, extra_env=extra_env, name=f"emailq-cost-{label.replace(' ', '-')}", queue=QUEUE)
            try:
                assert worker.proc is not None
                worker.proc.wait_ready()
                _wait(lambda target=delivered_before + emails: endpoint.count() >= target, "the deliveries")
                # The worker acks in batches, after the posts: its last acks are its cost too.
                _wait(lambda keys=queue_keys: in_flight(redis_server, keys) == 0, "the last acks")
                done = snapshot(redis_server)
            finally:
                worker.stop()
            half = emails // 2
            enqueue, batched = per_email(before, one_by_one, half), per_email(one_by_one, enqueued, emails - half)
            delivery = per_email(start, done, emails)
            result[label] = {
                "enqueue": enqueue,
                "enqueue_batched": batched,
                "delivery": delivery,
                "ceiling_per_s": 1e6 / (enqueue["cpu_us"] + delivery["cpu_us"]),
                "ceiling_batched_per_s": 1e6 / (batched["cpu_us"] + delivery["cpu_us"]),
            }
            log(
                f"  Redis per email, {label}: enqueue {enqueue['commands']:.1f} commands {enqueue['cpu_us']:.1f} µs "
                f"(batched {batched['commands']:.2f}, {batched['cpu_us']:.1f} µs), "
                f"delivery {delivery['commands']:.1f} commands {delivery['cpu_us']:.1f} µs"
            )
    finally:
        endpoint.stop()
        redis_server.stop()
    return result


def reference(redis_server: RedisServer, n: int) -> dict[str, float]:
    """What this Redis, on this machine, spends on the least a round trip can do (a
    `PING`, one at a time as `send` goes) and on the least an enqueue can do (an `LPUSH`
    of a message as large, pipelined by `BATCH`): the scale to read the figures by, as
    the machine's speed varies from run to run."""
    client = redis_server.client()
    client.ping()
    before = snapshot(redis_server)
    for _ in range(n):
        client.ping()
    pinged = snapshot(redis_server)
    producer = Producer(Settings(_env_file=None, redis_url=redis_server.url(), queue=QUEUE))
    _, [email] = producer._batch([email_body("reference", 0)], False)  # a task message, as `send` writes it
    producer.close()
    item = email.message
    with client.pipeline(transaction=False) as pipe:
        for start in range(0, n, BATCH):
            for _ in range(start, min(start + BATCH, n)):
                pipe.lpush("reference", item)
            pipe.execute()
    pushed = snapshot(redis_server)
    client.delete("reference")
    return {"ping_us": per_email(before, pinged, n)["cpu_us"], "lpush_us": per_email(pinged, pushed, n)["cpu_us"]}


def in_flight(redis_server: RedisServer, keys: Keys) -> int:
    """Emails in the queue's in-flight lists (two commands per worker, a few per poll)."""
    client = redis_server.client()
    return sum(client.llen(keys.inflight(owner.decode())) for owner in client.smembers(keys.owners))


def _wait(done: Callable[[], bool], what: str) -> None:
    since = time.monotonic()
    while not done():
        if time.monotonic() - since > STALL_SECONDS * 10:
            raise RuntimeError(f"{what}: too slow")
        time.sleep(0.05)
