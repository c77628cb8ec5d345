"""The ingest's coalesced writes: requests that arrive together reach Redis in one round
trip, each answers only once its own email is there, and a write Redis refuses, or
whose answer never comes, gets every request of it its own honest refusal."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
import redis

from busy_redis import busy
from conftest import settings_from
from emailq.enqueue_async import AsyncProducer
from emailq.errors import QueueUnavailable
from emailq.ingest.coalesce import CoalescedPush
from emailq.store.moves import NewEmail
from helpers import Ingest
from slow_link import slow_link

TOKEN = "Bearer ingest-token-123"


def email(n: int, type: str = "SignIn") -> dict[str, Any]:
    return {"to": f"user{n}@example.com", "type": type, "payload": {"code": f"{n:06d}"}}


def queued_ids(client: redis.Redis, lane: str = "emailq") -> list[str]:
    ids = []
    for raw in client.lrange(lane, 0, -1):
        [envelope], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(envelope["id"])
    return ids


@pytest.fixture
def ingest(settings_env, redis_client, tmp_path):
    server = Ingest({**settings_env, "EMAILQ_INGEST_AUTHORIZATION": TOKEN}, tmp_path)
    yield server
    server.stop()


def post_together(url: str, bodies: list[bytes], on_answer: Any = None, timeout: float = 10) -> list[httpx.Response]:
    """POST every body at once, each on its own connection; `on_answer(response)` runs as
    each answer arrives, before the next is read."""

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

            async def one(body: bytes) -> httpx.Response:
                response = await client.post(url + "/", content=body, headers={"Authorization": TOKEN})
                if on_answer is not None:
                    on_answer(response)
                return response

            return list(await asyncio.gather(*(one(body) for body in bodies)))

    return asyncio.run(main())


def test_each_of_many_concurrent_requests_answers_only_once_its_email_is_in_redis(settings_env, redis_server, redis_client, tmp_path):
    found_at_answer: list[bool] = []

    def check(response: httpx.Response) -> None:
        found_at_answer.append(response.json()["id"] in queued_ids(redis_client))

    # The ingest's Redis 50 ms away each way: an answer sent before its write landed is
    # read here well before the email is in Redis.
    with slow_link(redis_server.port, 0.05) as link:
        env = {**settings_env, "EMAILQ_REDIS_URL": f"redis://127.0.0.1:{link.port}/0", "EMAILQ_REDIS_TIMEOUT": "5"}
        server = Ingest({**env, "EMAILQ_INGEST_AUTHORIZATION": TOKEN}, tmp_path)
        try:
            answers = post_together(server.url, [json.dumps(email(n)).encode() for n in range(64)], check)
        finally:
            server.stop()

    assert [a.status_code for a in answers] == [202] * 64
    assert all(found_at_answer)
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 64
    assert sorted(queued_ids(redis_client)) == sorted(ids)


def new(message_id: str, lane: str, message: str) -> NewEmail:
    return NewEmail(lane, message, message_id, "0" * 32)


def _round_trips(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("exec", "eval", "evalsha"))


def test_pushes_that_arrive_together_go_in_one_round_trip_onto_their_lanes(settings_env, redis_client):
    async def main() -> list[str]:
        async with AsyncProducer(settings_from(settings_env)) as producer:
            writes = CoalescedPush(producer)
            before = _round_trips(redis_client)
            pushes = [new(f"i{n}", "emailq", f"interactive {n}") for n in range(40)]
            pushes += [new(f"b{n}", "emailq:bulk", f"bulk {n}") for n in range(10)]
            await asyncio.gather(*(writes.push(push) for push in pushes))
            assert _round_trips(redis_client) - before == 1
            await writes.wait_closed()
            return [push.message for push in pushes]

    messages = asyncio.run(main())
    assert sorted(m.decode() for m in redis_client.lrange("emailq", 0, -1)) == sorted(messages[:40])
    assert sorted(m.decode() for m in redis_client.lrange("emailq:bulk", 0, -1)) == sorted(messages[40:])
    assert redis_client.llen("emailq:wake") > 0


def test_a_batch_redis_refuses_fails_each_of_its_requests_and_enqueues_nothing(settings_env, redis_client):
    redis_client.set("emailq", "not a list")  # every enqueue is refused (WRONGTYPE)

    async def main() -> list[BaseException | None]:
        async with AsyncProducer(settings_from(settings_env)) as producer:
            writes = CoalescedPush(producer)
            pushes = [writes.push(new(f"i{n}", "emailq", f"interactive {n}")) for n in range(5)]
            pushes += [writes.push(new(f"b{n}", "emailq:bulk", f"bulk {n}")) for n in range(5)]
            return list(await asyncio.gather(*pushes, return_exceptions=True))

    outcomes = asyncio.run(main())
    ids = [f"i{n}" for n in range(5)] + [f"b{n}" for n in range(5)]
    for message_id, error in zip(ids, outcomes):
        assert isinstance(error, QueueUnavailable)
        assert not error.maybe_enqueued and "nothing was enqueued" in str(error)
        assert error.ids == [message_id]
    assert redis_client.get("emailq") == b"not a list"
    assert redis_client.llen("emailq:bulk") == 0


def test_concurrent_requests_redis_refuses_each_get_503_and_nothing_is_enqueued(ingest, redis_client):
    redis_client.set("emailq", "not a list")

    answers = post_together(ingest.url, [json.dumps(email(n)).encode() for n in range(20)])

    assert [a.status_code for a in answers] == [503] * 20
    assert all("nothing was enqueued" in a.json()["error"] for a in answers)
    assert redis_client.get("emailq") == b"not a list"

    redis_client.delete("emailq")
    assert ingest.post(json.dumps(email(0)).encode(), {"Authorization": TOKEN}).status_code == 202


def test_concurrent_requests_whose_answer_never_came_each_say_it_may_have_been_enqueued(settings_env, redis_server, redis_client, tmp_path):
    env = {**settings_env, "EMAILQ_INGEST_AUTHORIZATION": TOKEN, "EMAILQ_REDIS_TIMEOUT": "0.3"}
    server = Ingest(env, tmp_path)
    try:
        assert httpx.get(server.url + "/readyz").status_code == 200  # connected
        with busy(redis_server.url, 2):
            answers = post_together(server.url, [json.dumps(email(n)).encode() for n in range(10)])
        assert [a.status_code for a in answers] == [503] * 10
        # A batch sent on the connection that was open says "may"; one that had to open a
        # connection while Redis was busy sent nothing, and says so.
        maybe = [a for a in answers if "may have been enqueued" in a.json()["error"]]
        assert maybe and all("nothing was enqueued" in a.json()["error"] for a in answers if a not in maybe)
        assert redis_client.llen("emailq") == len(maybe)  # they had: "may" was the truth
        assert server.post(json.dumps(email(0)).encode(), {"Authorization": TOKEN}).status_code == 202
    finally:
        server.stop()


def test_keyed_and_unkeyed_requests_together_each_enqueue_once(ingest, redis_client):
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            posts = []
            for n in range(30):
                headers = {"Authorization": TOKEN} | ({"Idempotency-Key": f"key-{n % 5}"} if n % 2 else {})
                posts.append(client.post(ingest.url + "/", content=json.dumps(email(n % 5 if n % 2 else n)).encode(), headers=headers))
            return list(await asyncio.gather(*posts))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [202] * 30
    keyed = {a.json()["id"] for n, a in enumerate(answers) if n % 2}
    unkeyed = [a.json()["id"] for n, a in enumerate(answers) if not n % 2]
    assert len(keyed) == 5 and len(set(unkeyed)) == 15
    assert sorted(queued_ids(redis_client)) == sorted([*keyed, *unkeyed])
