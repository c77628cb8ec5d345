"""`EMAILQ_REDIS_KEY_PREFIX`: every key of a deployment starts with it (emailq's and
kombu's), and two deployments on one Redis database with the same queue name but
different prefixes each deliver, count and answer for only their own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import redis

from conftest import Endpoint, Reply, run_emailq, settings_from, wait_for
from helpers import FLOWER_AUTH, INVITATION, SIGN_IN, Ingest, assert_one_home, free_port, running_flower

from emailq.enqueue import Producer
from emailq.store.keys import Keys

TOKEN = "Bearer ingest-token-123"


def keys_outside(client: redis.Redis, prefix: str) -> list[str]:
    """Every key of the database that does not start with `prefix`."""
    return sorted(k.decode() for k in client.scan_iter(count=1000) if not k.decode().startswith(prefix))


def emailq(args: list[str], env: dict[str, str], cwd: Path) -> str:
    result = run_emailq(args, env, cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status(env: dict[str, str], cwd: Path) -> dict:
    return json.loads(emailq(["status", "--json"], env, cwd))


def test_every_key_of_a_prefixed_deployment_starts_with_its_prefix(settings_env, endpoint, start_worker, redis_client, tmp_path):
    prefix = "tenant-a:"
    # A rate limit and a 429 write the rate keys; a 503 the retry schedule; a 400 the DLQ.
    env = {**settings_env, "EMAILQ_REDIS_KEY_PREFIX": prefix, "EMAILQ_RATE_LIMIT": "500", "EMAILQ_INGEST_AUTHORIZATION": TOKEN}
    answered: Counter[str] = Counter()
    rejecting = {"rejected@example.com", "kept@example.com"}

    def behave(headers: dict[str, str], body: bytes) -> Reply:
        to = json.loads(body)["to"]
        answered[to] += 1
        if to in rejecting:
            return Reply(400, body=b"no such template")
        if to == "later@example.com" and answered[to] == 1:
            return Reply(503)
        if to == "slower@example.com" and answered[to] == 1:
            return Reply(429, headers={"Retry-After": "1"})
        return Reply()

    endpoint.behave = behave
    ingest = Ingest(env, tmp_path)
    try:
        with running_flower(env, tmp_path) as flower:
            metrics_port = free_port()
            start_worker("-n", "tenant-a@%h", env={**env, "EMAILQ_METRICS_PORT": str(metrics_port)})
            sent = [emailq(["send", "--to", to, "--type", "SignIn", "--payload", '{"code": "123456"}'], env, tmp_path).strip() for to in rejecting]
            sent += [emailq(["send", "--to", to, "--type", "SignIn"], env, tmp_path).strip() for to in ("later@example.com", "slower@example.com")]
            sent.append(emailq(["send", "--bulk", "--to", "bulk@example.com", "--type", "Generic"], env, tmp_path).strip())
            posted = ingest.post(json.dumps(SIGN_IN).encode(), {"Authorization": TOKEN, "Idempotency-Key": "logto-1"})
            assert posted.status_code == 202, posted.text
            sent.append(posted.json()["id"])
            wait_for(lambda: len(set(sent) & {r.key for r in endpoint.received}) == len(sent), 30, "every email answered")
            wait_for(lambda: len(endpoint.delivered_keys()) == len(sent) - 2, 30, "all but the rejected delivered")

            listed = json.loads(emailq(["dlq", "list", "--json"], env, tmp_path))
            assert sorted(e["to"] for e in listed) == sorted(rejecting) and {e["status"] for e in listed} == {400}, listed
            rejecting.discard("rejected@example.com")
            [replayed] = [e["id"] for e in listed if e["to"] == "rejected@example.com"]
            [kept] = [e["id"] for e in listed if e["to"] == "kept@example.com"]
            emailq(["dlq", "replay", replayed], env, tmp_path)
            wait_for(lambda: replayed in endpoint.delivered_keys(), 30, "the replayed email delivered")

            # The replayed email's ack reaches Redis in a batch, a moment after its delivery.
            now = wait_for(lambda: (s := status(env, tmp_path))["in_flight"] == 0 and s, 10, "nothing left in flight", interval=0.2)
            assert len(now["workers"]) == 1 and now["workers"][0].startswith("tenant-a@"), now
            assert (now["queued"], now["in_flight"], now["scheduled"], now["dead_lettered"]) == (0, 0, 0, 1), now
            for metrics in (ingest.url, f"http://127.0.0.1:{metrics_port}"):
                assert "emailq_dlq_depth 1.0" in httpx.get(metrics + "/metrics").text, metrics

            # Flower: the dead letter still there came as a failed task over the events'
            # channels (the replayed one is a success by now), the worker answers its
            # remote control, and the queue rows count the prefixed keys.
            def failed() -> bool:
                tasks = httpx.get(flower + "/api/tasks", params={"state": "FAILURE"}, auth=FLOWER_AUTH).json()
                return kept in tasks

            wait_for(failed, 30, "Flower to list the dead letter as a failed task", interval=0.5)
            workers = httpx.get(flower + "/api/workers", params={"refresh": "true"}, auth=FLOWER_AUTH).json()
            assert [name for name in workers if name.startswith("tenant-a@")], workers
            queues = httpx.get(flower + "/api/queues/length", auth=FLOWER_AUTH).json()["active_queues"]
            assert {q["name"]: q["messages"] for q in queues}.get("emailq:dlq") == 1, queues
    finally:
        ingest.stop()

    assert answered["later@example.com"] == 2 and answered["slower@example.com"] == 2
    assert_one_home(redis_client, Keys("emailq", prefix=prefix))
    outside = keys_outside(redis_client, prefix)
    assert not outside, f"keys without the prefix {prefix!r}: {outside}"
    # Written by the worker's 429 handling, kombu's bindings, Celery's remote control.
    assert redis_client.exists(f"{prefix}emailq:rate:slowdown", f"{prefix}_kombu.binding.emailq", f"{prefix}_kombu.binding.emailq.pidbox") == 3


def test_queued_depths_under_a_prefix(settings_env, redis_client, tmp_path):
    """With no worker running: `emailq status` counts the prefixed lanes."""
    env = {**settings_env, "EMAILQ_REDIS_KEY_PREFIX": "tenant-a:"}
    emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    emailq(["send", "--bulk", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    now = status(env, tmp_path)
    assert (now["queued"], now["queued_bulk"], now["workers"]) == (2, 1, []), now
    assert keys_outside(redis_client, "tenant-a:") == []
    assert status(settings_env, tmp_path)["queued"] == 0  # the unprefixed deployment: none of them


def test_two_deployments_on_one_database_each_deliver_only_their_own(settings_env, endpoint, start_worker, redis_client, tmp_path):
    other = Endpoint()
    envs = {
        "a:": {**settings_env, "EMAILQ_REDIS_KEY_PREFIX": "a:"},
        "b:": {**settings_env, "EMAILQ_REDIS_KEY_PREFIX": "b:", "EMAILQ_ENDPOINT_URL": other.url},
    }
    endpoints = {"a:": endpoint, "b:": other}
    producers = {prefix: Producer(settings_from(env)) for prefix, env in envs.items()}
    try:
        start_worker("-n", "a@%h", env=envs["a:"])
        start_worker("-n", "b@%h", env=envs["b:"])
        sent: dict[str, list[str]] = {"a:": [], "b:": []}
        for _ in range(15):
            for prefix, producer in producers.items():
                sent[prefix] += producer.send_many([SIGN_IN, INVITATION])
        total = sum(len(ids) for ids in sent.values())
        wait_for(lambda: sum(len(e.received) for e in endpoints.values()) >= total, 30, "every email delivered")
        for prefix, ids in sent.items():
            received = endpoints[prefix].delivered_keys()
            assert sorted(received) == sorted(ids), f"{prefix}: {len(received)} received for {len(ids)} sent"
            assert len(set(received)) == len(received)  # each once
            assert_one_home(redis_client, Keys("emailq", prefix=prefix))

        for prefix, env in envs.items():
            now = status(env, tmp_path)
            assert [w.split("@")[0] for w in now["workers"]] == [prefix.rstrip(":")], now
            assert now["queued"] == now["in_flight"] == 0, now
        neither = [k for k in keys_outside(redis_client, "a:") if not k.startswith("b:")]
        assert not neither, f"keys of neither deployment: {neither}"
    finally:
        for producer in producers.values():
            producer.close()
        other.close()
