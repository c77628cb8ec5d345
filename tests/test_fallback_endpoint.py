"""A fallback endpoint (`EMAILQ_FALLBACK_ENDPOINT_URL`), end to end: two real HTTP
endpoints on loopback, real workers, a real Redis, default settings unless a test says
otherwise. The primary goes down (refusing, never answering, failing a third of
requests), comes back, or both go down; the fallback takes the traffic meanwhile."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import socket
from collections.abc import Iterator
from typing import Any
from http.server import ThreadingHTTPServer

import httpx
import pytest
from conftest import Endpoint, Reply, run_emailq, wait_for
from helpers import FLOWER_AUTH, KEYS, SIGN_IN, assert_one_home, free_port, running_flower, sign_in_waits

from emailq.worker.places.dead_letters import DeadLetters

pytestmark = pytest.mark.slow

BULK = 2000
OUTAGE_SECONDS = 60
FALLBACK_AUTH = "Key fallback-secret-4be1"


class Provider(Endpoint):
    """The test endpoint as a real provider behaves:

    - its listen backlog is a real API's (nginx: 511), where Python's default of 5 makes a
      burst of new connections (every email in flight failing over at once) look like an
      outage: connections the server has not accepted yet time out;
    - `go_down` is a crash: the keep-alive connections already open die with it (the
      plain test endpoint only stops listening, and goes on answering on them)."""

    def _listen(self, port: int) -> None:
        previous = ThreadingHTTPServer.request_queue_size
        ThreadingHTTPServer.request_queue_size = 1024
        try:
            super()._listen(port)
        finally:
            ThreadingHTTPServer.request_queue_size = previous
        self.connections: list[socket.socket] = []
        accept = self.server.get_request

        def get_request() -> tuple[socket.socket, Any]:
            connection, address = accept()
            self.connections.append(connection)
            return connection, address

        self.server.get_request = get_request  # type: ignore[method-assign]

    def go_down(self) -> None:
        super().go_down()
        for connection in self.connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client


@pytest.fixture
def primary() -> Iterator[Endpoint]:
    server = Provider()
    yield server
    server.close()


@pytest.fixture
def fallback() -> Iterator[Endpoint]:
    server = Provider()
    yield server
    server.close()


def with_fallback(env: dict[str, str], primary: Endpoint, fallback: Endpoint, **more: str) -> dict[str, str]:
    return {
        **env,
        "EMAILQ_ENDPOINT_URL": primary.url,
        "EMAILQ_FALLBACK_ENDPOINT_URL": fallback.url,
        "EMAILQ_FALLBACK_ENDPOINT_AUTHORIZATION": FALLBACK_AUTH,
        **more,
    }


def invitations(start: int, count: int = BULK) -> list[dict]:
    """Bulk-lane emails (OrganizationInvitation), the kind queued by the thousand."""
    return [
        {"to": f"user{i}@example.com", "type": "OrganizationInvitation", "payload": {"link": f"https://x/i/{i}"}} for i in range(start, start + count)
    ]


def code(i: int) -> dict:
    return {"to": f"signer{i}@example.com", "type": "SignIn", "payload": {"code": "123456"}}


def delivered(*endpoints: Endpoint) -> set[str]:
    return {key for e in endpoints for key in e.delivered_keys()}


def delivered_at(endpoint: Endpoint, ids: set[str]) -> list[float]:
    with endpoint._lock:
        return [r.at for r in endpoint.received if r.key in ids and 200 <= r.status < 300]


def time_to_deliver(producer, endpoints: tuple[Endpoint, ...], emails: list[dict], share: float = 1.0, timeout: float = 120) -> float:
    started = time.monotonic()
    ids = set(producer.send_many(emails))
    need = int(len(ids) * share)
    wait_for(lambda: len(delivered(*endpoints) & ids) >= need, timeout, f"{need} of {len(ids)} delivered", interval=0.05)
    return time.monotonic() - started


def bound(healthy: float) -> float:
    return max(3 * healthy, healthy + 10)


def test_a_primary_refusing_for_60s_costs_nothing_but_the_fallbacks_time(producer, primary, fallback, start_worker, redis_client, defaults_env):
    worker = start_worker(env=with_fallback(defaults_env, primary, fallback))
    healthy = time_to_deliver(producer, (primary,), invitations(0))

    primary.go_down()
    down = time.monotonic()
    sent = time.time()
    ids = set(producer.send_many(invitations(BULK)))
    # Sign-in codes one at a time, for the whole outage, while the bulk send drains.
    waits: list[float] = []
    n = 0

    def send_code() -> str:
        nonlocal n
        n += 1
        return producer.send(code(n))

    def on_fallback(message_id: str) -> float | None:
        times = delivered_at(fallback, {message_id})
        return times[0] if times else None

    while time.monotonic() - down < OUTAGE_SECONDS:
        waits += sign_in_waits(send_code, on_fallback, count=10, gap=0.2, timeout=10)
    took = max(delivered_at(fallback, ids)) - sent if len(delivered(fallback) & ids) == BULK else float("inf")
    print(
        f"healthy: {BULK} in {healthy:.1f}s; primary refusing: {BULK} through the fallback in {took:.1f}s "
        f"(bound {bound(healthy):.1f}s); {len(waits)} codes, slowest {max(waits):.2f}s, median {sorted(waits)[len(waits) // 2]:.3f}s"
    )
    assert took <= bound(healthy)
    assert max(waits) < 2
    assert redis_client.zcard(KEYS.dlq_index) == 0, "none dead-lettered"
    assert "sending every email to the fallback" in worker.output()

    primary.come_back()
    back = time.monotonic()
    again: list[str] = []
    while not (set(again) & delivered(primary)):
        assert time.monotonic() - back < 10, "new emails reach the primary again within 10 s"
        again.append(producer.send(SIGN_IN))
        time.sleep(0.2)
    print(f"primary back: new emails reach it again after {time.monotonic() - back:.1f}s")
    assert "primary endpoint answered again" in worker.output()
    wait_for(lambda: set(again) <= delivered(primary, fallback), 20, "every email sent meanwhile delivered")
    assert_one_home(redis_client)


def test_a_primary_that_never_answers_is_left_once_its_breaker_opens(producer, primary, fallback, start_worker, redis_client, defaults_env):
    worker = start_worker(env=with_fallback(defaults_env, primary, fallback))
    healthy = time_to_deliver(producer, (primary,), invitations(0))

    primary.behave = lambda headers, body: Reply(503, delay=60)  # accepts, reads, never answers in time
    started = time.monotonic()
    sent = time.time()
    ids = set(producer.send_many(invitations(BULK)))
    wait_for(lambda: "primary endpoint looks down" in worker.output(), 30, "the primary's breaker to open", interval=0.05)
    opened = time.monotonic() - started
    opened_at = time.time()
    wait_for(lambda: delivered(fallback) >= ids, 60, "every email delivered through the fallback", interval=0.1)
    after_open = max(delivered_at(fallback, ids)) - opened_at
    print(
        f"healthy: {BULK} in {healthy:.1f}s; primary never answering: breaker open after {opened:.1f}s "
        f"(EMAILQ_REQUEST_TIMEOUT 10 s), then all {BULK} through the fallback in {after_open:.1f}s "
        f"(bound {bound(healthy):.1f}s; {max(delivered_at(fallback, ids)) - sent:.1f}s from the send)"
    )
    assert opened < 10 + 5, "the first POSTs time out after EMAILQ_REQUEST_TIMEOUT, and the breaker opens then"
    assert after_open <= bound(healthy)
    assert redis_client.zcard(KEYS.dlq_index) == 0


def test_a_primary_failing_a_third_of_requests(producer, primary, fallback, start_worker, redis_client, defaults_env):
    start_worker(env=with_fallback(defaults_env, primary, fallback))
    healthy = time_to_deliver(producer, (primary,), [code(i) for i in range(BULK)])
    rng, lock = random.Random(7), threading.Lock()

    def flaky(headers: dict[str, str], body: bytes) -> Reply:
        with lock:
            return Reply(503) if rng.random() < 1 / 3 else Reply(200)

    primary.behave = flaky
    most = time_to_deliver(producer, (primary, fallback), [code(BULK + i) for i in range(BULK)], share=0.95)
    failed_over = len(fallback.delivered_keys())
    print(f"healthy: {healthy:.2f}s; 95% with a third failing on the primary: {most:.2f}s; {failed_over} delivered by the fallback")
    assert most <= 1.5 * healthy
    assert failed_over > BULK / 5, "the 503s went to the fallback at once"
    assert redis_client.zcard(KEYS.dlq_index) == 0
    # No outage: the primary keeps two thirds of the emails. (Its breaker may open for a
    # probe interval: answers come back in another order than the endpoint drew them,
    # and ten 503s in a row among 2,000 answers at one in three come now and then.)
    assert failed_over < BULK / 2, "the primary was given up for the fallback"


def test_both_down_then_both_back_loses_nothing(producer, primary, fallback, start_worker, redis_client, defaults_env):
    primary.go_down()
    fallback.go_down()
    worker = start_worker(env=with_fallback(defaults_env, primary, fallback))
    ids = set(producer.send_many([SIGN_IN] * 1000))
    time.sleep(20)
    now = assert_one_home(redis_client).census
    assert now.dead_lettered <= 5
    assert now.in_flight <= 1, "emails wait in Redis, not in the worker's threads"
    assert "no endpoint answers, taking no more emails" in worker.output()

    primary.come_back()
    fallback.come_back()
    wait_for(lambda: delivered(primary, fallback) >= ids, 60, "all 1000 delivered", interval=0.5)
    assert redis_client.zcard(KEYS.dlq_index) <= 5
    assert "resuming deliveries" in worker.output()
    assert_one_home(redis_client)


def test_an_email_goes_to_the_fallback_whole_and_each_attempt_names_its_endpoint(
    settings_env, producer, primary, fallback, start_worker, redis_client, tmp_path
):
    # settings_env's quick retries (3 attempts, 0.05 s backoff), only to save time.
    def primary_says(headers: dict[str, str], body: bytes) -> Reply:
        return Reply(422, b"unknown template") if json.loads(body)["type"] == "Register" else Reply(503)

    primary.behave = primary_says
    fallback.behave = lambda headers, body: Reply(503) if b"always@" in body else Reply(202)
    port = free_port()
    env = with_fallback(settings_env, primary, fallback, EMAILQ_METRICS_PORT=str(port), EMAILQ_ENDPOINT_AUTHORIZATION="Bearer primary-token")
    start_worker(env=env)
    good = producer.send(SIGN_IN)
    rejected = producer.send({"to": "a@example.com", "type": "Register", "payload": {"code": "1"}})
    failing = producer.send({"to": "always@example.com", "type": "SignIn", "payload": {"code": "2"}})
    wait_for(lambda: redis_client.zcard(KEYS.dlq_index) == 2 and good in fallback.delivered_keys(), 30, "one delivered, two dead-lettered")

    (on_primary,), (on_fallback,) = primary.requests_for(good), fallback.requests_for(good)
    assert on_fallback.body == on_primary.body and on_fallback.key == on_primary.key == good
    assert on_primary.headers["authorization"] == "Bearer primary-token" and on_fallback.headers["authorization"] == FALLBACK_AUTH

    dead = DeadLetters(redis_client, KEYS)
    assert dead.get(rejected).reason == "rejected" and fallback.requests_for(rejected) == [], "a 4xx is not failed over"
    entry = dead.get(failing)
    assert entry.reason == "exhausted"
    assert [a["endpoint"] for a in entry.history] == ["primary", "fallback", "primary", "fallback"]
    shown = json.loads(run_emailq(["dlq", "show", failing], env, tmp_path).stdout)
    assert [a["endpoint"] for a in shown["history"]] == ["primary", "fallback", "primary", "fallback"]
    traced = run_emailq(["trace", failing], env, tmp_path).stdout
    assert "attempt 1: HTTP 503 from the primary; attempt 2: HTTP 503 from the fallback" in traced, traced
    with running_flower(env, tmp_path) as flower:
        page = httpx.get(f"{flower}/dead-letters/entry/{failing}", auth=FLOWER_AUTH).text
    assert page.count("503 (primary)") == 2 and page.count("503 (fallback)") == 2, "the dead letter page names each attempt's endpoint"

    status = run_emailq(["status"], env, tmp_path)
    assert "primary closed, fallback closed: sending to primary" in status.stdout, status.stdout
    assert json.loads(run_emailq(["status", "--json"], env, tmp_path).stdout)["endpoints"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'emailq_delivered_total{endpoint="fallback"} 1.0' in metrics
    assert 'emailq_breaker_open{endpoint="primary"} 0.0' in metrics and 'emailq_breaker_open{endpoint="fallback"} 0.0' in metrics
    assert "emailq_failed_over_total 3.0" in metrics
    assert FALLBACK_AUTH not in status.stdout + metrics


def test_fallback_only_sends_nothing_to_the_primary(producer, primary, fallback, start_worker, defaults_env):
    start_worker(env=with_fallback(defaults_env, primary, fallback, EMAILQ_FALLBACK_ONLY="true"))
    ids = set(producer.send_many([code(i) for i in range(50)]))
    wait_for(lambda: delivered(fallback) >= ids, 20, "all delivered through the fallback")
    assert primary.received == []


def test_sigterm_still_exits_within_15s_when_neither_endpoint_answers(producer, primary, fallback, start_worker, redis_client, defaults_env):
    # A POST in flight at SIGTERM may run its whole request timeout (10 s); no failover
    # POST begins after it, or the stop would take twice that.
    primary.behave = lambda headers, body: Reply(503, delay=60)
    fallback.behave = lambda headers, body: Reply(503, delay=60)
    env = with_fallback(defaults_env, primary, fallback)
    worker = start_worker(env=env)
    ids = set(producer.send_many([code(i) for i in range(300)]))
    time.sleep(3)
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(30)
    took = time.monotonic() - started
    print(f"SIGTERM with neither endpoint answering: exited in {took:.1f}s")
    assert took < 15
    assert fallback.received == [], "no failover POST began after the stop"

    primary.behave = lambda headers, body: Reply(200)
    start_worker(env=env)

    def accounted() -> bool:
        return delivered(primary, fallback) | {e.id for e in DeadLetters(redis_client, KEYS).list()} >= ids

    wait_for(accounted, 60, "every email delivered or dead-lettered", interval=0.2)
    assert_one_home(redis_client)


def test_a_429_from_the_primary_goes_to_the_fallback_instead_of_slowing_the_cluster(
    producer, primary, fallback, start_worker, redis_client, defaults_env
):
    primary.behave = lambda headers, body: Reply(429, headers={"Retry-After": "30"})
    start_worker(env=with_fallback(defaults_env, primary, fallback, EMAILQ_RATE_LIMIT="100"))
    ids = set(producer.send_many([code(i) for i in range(100)]))
    wait_for(lambda: delivered(fallback) >= ids, 20, "all delivered through the fallback")
    assert not redis_client.exists(KEYS.rate_slowdown), "the rate limit's pace is not halved"
    # Only the endpoint whose answer decides slows the cluster: both answering 429 does.
    fallback.behave = primary.behave
    producer.send(SIGN_IN)
    wait_for(lambda: redis_client.exists(KEYS.rate_slowdown), 20, "the slowdown after the fallback's 429")
