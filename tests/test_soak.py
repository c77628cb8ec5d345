"""A bounded soak: a steady stream against a flaky endpoint (5% 503s) for a few minutes.
Zero lost, zero delivered twice, the worker alive, its memory flat."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
from conftest import Reply, wait_for
from helpers import SIGN_IN

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "90"))
RATE = 100  # emails per second


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_soak_with_a_flaky_endpoint(producer, endpoint, start_worker, redis_client, record_property):
    flaky = random.Random(7)
    lock = threading.Lock()

    def behave(headers, body):
        with lock:
            fail = flaky.random() < 0.05
        return Reply(503) if fail else Reply(200)

    endpoint.behave = behave
    worker = start_worker(env={"EMAILQ_MAX_ATTEMPTS": "8", "EMAILQ_RETRY_BASE_SECONDS": "0.05"})
    ids: list[str] = []
    memory: list[float] = []
    started = time.monotonic()
    tick = 0
    while time.monotonic() - started < SOAK_SECONDS:
        ids += producer.send_many([SIGN_IN] * (RATE // 10))
        tick += 1
        if tick % 50 == 0:
            memory.append(rss_mb(worker.process.pid))
        time.sleep(max(0.0, started + tick / 10 - time.monotonic()))

    wait_for(lambda: len(set(endpoint.delivered_keys())) >= len(ids), 60, "the backlog to drain", interval=0.5)
    delivered = Counter(endpoint.delivered_keys())
    failures = sum(1 for r in endpoint.received if r.status == 503)
    record_property("soak", {"sent": len(ids), "503s": failures, "rss_mb": memory})
    print(f"\nsoak: {len(ids)} emails in {SOAK_SECONDS:.0f}s, {failures} 503s retried, worker RSS MB {memory}")

    assert set(delivered) == set(ids), "lost emails"
    assert max(delivered.values()) == 1, "an email was delivered twice"
    assert redis_client.zcard("emailq:dlq:index") == 0
    assert failures > 0.02 * len(ids)  # the endpoint really was flaky
    assert worker.process.poll() is None
    settled = memory[1:] or memory
    assert max(settled) - min(settled) < 20, f"worker memory grew: {memory}"
