"""Workers scale horizontally: several `emailq worker` processes on one queue."""

from __future__ import annotations

from collections import Counter

from conftest import Reply, wait_for
from helpers import SIGN_IN


def test_three_workers_deliver_each_email_exactly_once(producer, endpoint, start_worker, redis_client):
    endpoint.behave = lambda headers, body: Reply(200, delay=0.01)
    workers = [start_worker("-n", f"w{i}@%h") for i in range(3)]
    ids = producer.send_many([SIGN_IN] * 600)

    wait_for(lambda: len(endpoint.received) >= len(ids), 60, "600 deliveries", interval=0.2)
    counts = Counter(endpoint.delivered_keys())
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    # Each worker took a share: the load was really spread.
    for worker in workers:
        assert "delivered" in worker.output()
    assert redis_client.llen("emailq") == 0
