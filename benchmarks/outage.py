"""The primary endpoint down, with a fallback: `emailq worker` (defaults, plus
`EMAILQ_FALLBACK_ENDPOINT_URL`) delivering a burst and sign-in codes, first with both
endpoints up, then with the primary's process killed (connections refused, keep-alive
connections dropped, as a crashed provider). Each figure with the primary down is
reported as a share of the same figure with both up.

What tests/test_fallback_endpoint.py asserts, measured on the suite's own endpoints (each
in its own process, recording when it answered each email) instead of the tests' threaded
ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import cells as c
from benchmarks.flow import wait_count
from benchmarks.harness import Endpoint, RedisServer, median
from tests.helpers import INVITATION, SIGN_IN, sign_in_waits

KEY = "outage@50ms"
LATENCY_MS = 50
BURST = 5000
CODES = 20
CODE_GAP_SECONDS = 0.05
STALL_SECONDS = 30.0

Log = Callable[[str], None]


def _burst(worker: c.Emailq, endpoint: Endpoint, emails: int) -> float:
    """`emails` bulk emails enqueued at once: deliveries per second from the enqueue to
    the last one's 2xx on `endpoint`."""
    endpoint.collect()  # the endpoint counts from here
    started = time.time()
    ids = set(worker.producer.send_many([INVITATION] * emails))
    wait_count(endpoint, emails, KEY)
    keys, times = endpoint.collect()
    return emails / (max(t for k, t in zip(keys, times) if k in ids) - started)


def _codes(worker: c.Emailq, endpoint: Endpoint, emails: int) -> list[float]:
    """Sign-in codes one at a time while `emails` bulk emails drain: each one's
    enqueue-to-delivery time on `endpoint`. Returns once the bulk has drained too."""
    endpoint.collect()
    worker.producer.send_many([INVITATION] * emails)
    waits = sign_in_waits(lambda: worker.producer.send(SIGN_IN), endpoint.delivered_at, count=CODES, gap=CODE_GAP_SECONDS, timeout=STALL_SECONDS)
    wait_count(endpoint, emails + CODES, KEY)
    endpoint.collect()
    return waits


def measure(redis_server: RedisServer, workdir: Path, db: int, emails: int, log: Log) -> dict:
    redis_server.client(db).flushdb()
    primary, fallback = Endpoint(LATENCY_MS, workdir), Endpoint(LATENCY_MS, workdir)
    env = {"EMAILQ_FALLBACK_ENDPOINT_URL": fallback.url}
    worker = c.Emailq(LATENCY_MS, primary, redis_server, db, workdir, extra_env=env, name="emailq-outage")
    try:
        assert worker.proc is not None
        worker.proc.wait_ready()
        _burst(worker, primary, 500)  # warm up: threads, connections
        healthy_rate = _burst(worker, primary, emails)
        healthy_codes = _codes(worker, primary, emails)
        log(f"{KEY:28} both up: {healthy_rate:6.0f}/s, codes p50 {median(healthy_codes) * 1000:.0f} ms, max {max(healthy_codes) * 1000:.0f} ms")

        primary.stop()  # killed: refuses connections, drops the open ones
        down_rate = _burst(worker, fallback, emails)
        down_codes = _codes(worker, fallback, emails)
        log(f"{KEY:28} primary down: {down_rate:6.0f}/s, codes p50 {median(down_codes) * 1000:.0f} ms, max {max(down_codes) * 1000:.0f} ms")
    finally:
        worker.stop()
        primary.stop()
        fallback.stop()
        redis_server.client(db).flushdb()
    # Read once the worker stopped: its log is written in blocks.
    opened = worker.proc is not None and "sending every email to the fallback" in worker.proc.tail(100000)
    return {
        "latency_ms": LATENCY_MS,
        "emails": emails,
        "codes": CODES,
        "healthy_rate": healthy_rate,
        "down_rate": down_rate,
        "rate_share": down_rate / healthy_rate,
        "healthy_codes_p50_s": median(healthy_codes),
        "healthy_codes_max_s": max(healthy_codes),
        "down_codes_p50_s": median(down_codes),
        "down_codes_max_s": max(down_codes),
        "codes_p50_share": median(down_codes) / median(healthy_codes),
        "primary_breaker_opened": opened,
    }


def table(row: dict) -> list[str]:
    return [
        f"| the primary endpoint down ({row['latency_ms']:g} ms endpoints), `emailq worker` with its defaults and a fallback "
        "| both up | primary down | share of both up |",
        "|---|---:|---:|---:|",
        f"| {row['emails']:,} bulk emails at once: deliveries/s | {row['healthy_rate']:.0f} | {row['down_rate']:.0f} "
        f"| {100 * row['rate_share']:.0f}% |",
        f"| {row['codes']} sign-in codes one at a time behind {row['emails']:,} bulk: enqueue to delivery p50 "
        f"| {row['healthy_codes_p50_s'] * 1000:.0f} ms | {row['down_codes_p50_s'] * 1000:.0f} ms | {100 * row['codes_p50_share']:.0f}% |",
        f"| the same codes: max | {row['healthy_codes_max_s'] * 1000:.0f} ms | {row['down_codes_max_s'] * 1000:.0f} ms | |",
    ]
