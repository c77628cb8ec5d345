"""The asyncio producer against a real Redis: what `send`, `send_many` and `send_once`
enqueue, and what each failure answers, as the synchronous producer does; plus what only
asyncio has, a call cancelled after its write was sent; and, on Redis servers of their
own, `WAIT` for a replica and TLS with a private CA."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

import emailq
from busy_redis import busy
from conftest import free_port, settings_from, wait_for
from emailq import AsyncProducer
from emailq.errors import IdempotencyConflict
from emailq.store.embedded_redis import redis_server_binary
from emailq.store.scripts import script

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456", "locale": "en"}}


@pytest.fixture
def settings_env(redis_server, tmp_path) -> dict[str, str]:
    """The producer needs only Redis (conftest's version also starts an HTTP endpoint)."""
    return {"EMAILQ_REDIS_URL": redis_server.url, "EMAILQ_DATA_DIR": str(tmp_path / "data")}


def queued(redis_client, queue: str = "emailq") -> list[dict[str, Any]]:
    """The envelopes on the queue, in the order a worker takes them (RPOP)."""
    envelopes = []
    while (raw := redis_client.rpop(queue)) is not None:
        [envelope], _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        envelopes.append(envelope)
    return envelopes


def email(n: int) -> dict[str, Any]:
    return {"to": f"user{n}@example.com", "type": "SignIn", "payload": {"code": f"{n:06d}"}}


def producer_for(settings_env: dict[str, str], **overrides: str) -> AsyncProducer:
    return AsyncProducer(settings_from({**settings_env, **overrides}))


def test_send_and_send_many_enqueue_on_their_lanes_in_order(settings_env, redis_client):
    async def main() -> tuple[str, list[str], list[str]]:
        async with producer_for(settings_env) as producer:
            one = await producer.send(SIGN_IN)
            many = await producer.send_many([email(n) for n in range(5)])
            bulk = await producer.send_many([email(9)], bulk=True)
            return one, many, bulk

    one, many, bulk = asyncio.run(main())
    assert [e["id"] for e in queued(redis_client)] == [one, *many]
    assert [e["id"] for e in queued(redis_client, "emailq:bulk")] == bulk
    assert redis_client.llen("emailq:wake") > 0  # idle workers are woken, as by the sync producer


def test_the_module_functions_use_the_environment(settings_env, redis_client, monkeypatch):
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    emailq.get_settings.cache_clear()

    async def main() -> tuple[str, list[str]]:
        return await emailq.send_email_async(**SIGN_IN), await emailq.send_many_async([email(1), email(2)])

    try:
        one, many = asyncio.run(main())
    finally:
        emailq.get_settings.cache_clear()
    assert [e["id"] for e in queued(redis_client)] == [one, *many]


def test_a_bad_item_is_named_and_nothing_is_enqueued(settings_env, redis_client):
    async def main() -> None:
        async with producer_for(settings_env) as producer:
            await producer.send_many([email(1), {**SIGN_IN, "to": "nobody"}])

    with pytest.raises(emailq.InvalidMessage, match="item 1"):
        asyncio.run(main())
    assert redis_client.llen("emailq") == 0


def test_send_once_enqueues_a_key_once_and_refuses_it_for_another_email(settings_env, redis_client):
    async def main() -> tuple[tuple[str, bool], tuple[str, bool]]:
        async with producer_for(settings_env) as producer:
            first = await producer.send_once(SIGN_IN, "order-42")
            again = await producer.send_once(SIGN_IN, "order-42")
            with pytest.raises(IdempotencyConflict):
                await producer.send_once({**SIGN_IN, "payload": {"code": "654321"}}, "order-42")
            return first, again

    (first_id, enqueued), again = asyncio.run(main())
    assert enqueued is True and again == (first_id, False)
    assert [e["id"] for e in queued(redis_client)] == [first_id]


def test_a_redis_that_lost_its_scripts_gets_each_email_once(settings_env, redis_client):
    """As the sync producer: after a NOSCRIPT (a restarted or failed-over Redis, which ran
    nothing), the script itself is sent, once."""

    redis_client.config_resetstat()

    async def main() -> None:
        async with producer_for(settings_env) as producer:
            redis_client.script_flush()
            await producer.send(email(0))
            redis_client.script_flush()
            await producer.send_many([email(1), email(2)])
            redis_client.script_flush()
            await producer.send_once(email(3), "key-3")

    asyncio.run(main())
    assert redis_client.info("errorstats")["errorstat_NOSCRIPT"]["count"] == 3
    assert [e["message"]["to"] for e in queued(redis_client)] == [f"user{n}@example.com" for n in range(4)]


def test_a_refused_connection_says_nothing_was_enqueued_fast(settings_env):
    async def main() -> emailq.QueueUnavailable:
        async with producer_for(settings_env, EMAILQ_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", EMAILQ_REDIS_TIMEOUT="0.3") as producer:
            assert await producer.ping() is False
            with pytest.raises(emailq.QueueUnavailable) as raised:
                await producer.send(SIGN_IN)
            return raised.value

    started = time.monotonic()
    error = asyncio.run(main())
    assert time.monotonic() - started < 1.0
    assert error.maybe_enqueued is False and "nothing was enqueued" in str(error)


def test_a_timeout_after_sending_says_the_email_may_have_been_enqueued(settings_env, redis_server, redis_client):
    async def main() -> emailq.QueueUnavailable:
        async with producer_for(settings_env, EMAILQ_REDIS_TIMEOUT="0.3") as producer:
            assert await producer.ping()  # connected: the next write is sent, its answer is what is lost
            redis_client.script_load(script("enqueue").source)  # cached, as on a Redis that took emails before
            with busy(redis_server.url, 1.5):
                with pytest.raises(emailq.QueueUnavailable) as raised:
                    await producer.send(SIGN_IN)
            return raised.value

    error = asyncio.run(main())
    assert error.maybe_enqueued is True and error.ids[0] in str(error)
    # It was not a lie to say "may": once Redis is free again, the write it had runs.
    wait_for(lambda: redis_client.llen("emailq") == 1, 5, "the write sent before the timeout to land")


def test_a_large_batch_is_given_time_for_its_size(settings_env, redis_server, redis_client):
    """As the sync producer: 0.5 s and 0.1 ms an email, so 2.5 s for 20,000."""

    async def main() -> tuple[list[str], float]:
        async with producer_for(settings_env) as producer:
            assert await producer.ping()
            with busy(redis_server.url, 1.0):
                started = time.monotonic()
                ids = await producer.send_many([email(n) for n in range(20000)])
                return ids, time.monotonic() - started

    ids, took = asyncio.run(main())
    assert took > 0.5
    assert redis_client.llen("emailq") == len(ids) == 20000


def test_a_full_redis_and_a_wrong_type_are_refused_with_nothing_enqueued(settings_env, redis_client):
    async def attempts(producer: AsyncProducer) -> list[emailq.QueueUnavailable]:
        errors = []
        for attempt in (producer.send(SIGN_IN), producer.send_many([SIGN_IN] * 1500), producer.send_once(SIGN_IN, "key-1")):
            with pytest.raises(emailq.QueueUnavailable) as raised:
                await attempt
            errors.append(raised.value)
        return errors

    async def main() -> tuple[list[emailq.QueueUnavailable], list[emailq.QueueUnavailable], str]:
        async with producer_for(settings_env) as producer:
            redis_client.set("filler", b"x" * (2 << 20))
            redis_client.config_set("maxmemory", "1mb")
            try:
                full = await attempts(producer)
            finally:
                redis_client.config_set("maxmemory", "0")
                redis_client.delete("filler")
            redis_client.set("emailq", "not a list")
            wrong = await attempts(producer)
            redis_client.delete("emailq")
            return full, wrong, await producer.send(SIGN_IN)  # the same producer carries on

    full, wrong, carried_on = asyncio.run(main())
    assert all(not e.maybe_enqueued and "Redis is full" in str(e) for e in full), full
    assert all(not e.maybe_enqueued and "WRONGTYPE" in str(e) for e in wrong), wrong
    assert redis_client.keys("emailq:idem:*") == []
    assert [e["id"] for e in queued(redis_client)] == [carried_on]


def test_a_call_cancelled_after_its_write_was_sent_drops_its_connection(settings_env, redis_server, redis_client):
    """The reply to a cancelled call must never be read as the answer to the next call."""

    async def main() -> tuple[asyncio.CancelledError | TimeoutError, str]:
        async with producer_for(settings_env) as producer:
            assert await producer.ping()
            with busy(redis_server.url, 1.0):
                try:
                    async with asyncio.timeout(0.2):
                        await producer.send_once(SIGN_IN, "cancelled-key")
                except TimeoutError as error:
                    cancelled = error
            # The next call gets its own answer: a conflict-free repeat of the key.
            return cancelled, (await producer.send_once(SIGN_IN, "cancelled-key"))[0]

    cancelled, repeat_id = asyncio.run(main())
    notes = getattr(cancelled.__context__, "__notes__", [])
    assert any("may have been enqueued" in note for note in notes), notes
    # The cancelled write landed once Redis was free; the repeat found its key.
    assert [e["id"] for e in queued(redis_client)] == [repeat_id]


def test_sentinel_and_a_plain_url_make_the_same_calls(settings_env, redis_server, tmp_path, redis_client):
    """On Sentinel the asyncio producer asks the Sentinels for the primary, as the sync one does."""
    import subprocess

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    sentinel = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = {**settings_env, "EMAILQ_REDIS_URL": f"sentinel://127.0.0.1:{port}", "EMAILQ_REDIS_SENTINEL_MASTER": "mymaster"}

        async def main() -> str:
            async with producer_for(env) as producer:
                return await producer.send(SIGN_IN)

        deadline = time.monotonic() + 10
        while True:
            try:
                message_id = asyncio.run(main())
                break
            except emailq.QueueUnavailable:
                assert time.monotonic() < deadline, "the Sentinel never named the primary"
                time.sleep(0.2)
    finally:
        sentinel.kill()
        sentinel.wait()
    assert [e["id"] for e in queued(redis_client)] == [message_id]


def test_with_min_replicas_a_replica_confirms_and_a_lone_primary_says_may_have_been_enqueued(tmp_path):
    """`EMAILQ_REDIS_MIN_REPLICAS`: the asyncio producer WAITs as the sync one does. A
    Redis of the test's own with a replica, then alone (the suite's Redis is shared)."""
    from conftest import RedisServer

    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    for server in (primary, replica):
        server.directory.mkdir()
    primary.start()
    replica.start()
    env = {"EMAILQ_REDIS_URL": primary.url, "EMAILQ_DATA_DIR": str(tmp_path / "data"), "EMAILQ_REDIS_MIN_REPLICAS": "1"}
    try:
        wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", 10, "the replica to sync")

        async def send() -> str:
            async with producer_for(env) as producer:
                return await producer.send(SIGN_IN)

        confirmed = asyncio.run(send())
        wait_for(lambda: replica.client().llen("emailq") == 1, 5, "the email on the replica")
        replica.kill()
        with pytest.raises(emailq.QueueUnavailable) as raised:
            asyncio.run(send())
    finally:
        replica.kill()
        primary.stop()
    error = raised.value
    assert error.maybe_enqueued and "0 of the 1 replica(s)" in str(error) and "may have been enqueued" in str(error)
    assert error.ids[0] != confirmed


def test_a_tls_server_with_a_private_ca_takes_its_emails_and_plain_tcp_gets_a_clear_refusal(tmp_path):
    from sentinel_cluster import Tls, TlsRedisServer

    server = TlsRedisServer(tmp_path / "redis", Tls.issue(tmp_path / "tls"))
    server.directory.mkdir(parents=True)
    server.start()
    files = {k: v for k, v in server.tls.env().items() if k != "EMAILQ_REDIS_TLS"}
    env = {"EMAILQ_REDIS_URL": f"rediss://127.0.0.1:{server.port}/0", "EMAILQ_DATA_DIR": str(tmp_path / "data"), **files}

    async def send(env: dict[str, str]) -> str:
        async with producer_for(env, EMAILQ_REDIS_TIMEOUT="0.5") as producer:
            return await producer.send(SIGN_IN)

    # The same server by plain TCP: what a missing `rediss://` gets.
    plain = {"EMAILQ_REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "EMAILQ_DATA_DIR": env["EMAILQ_DATA_DIR"]}
    try:
        message_id = asyncio.run(send(env))
        on_queue = server.client().lrange("emailq", 0, -1)
        with pytest.raises(emailq.QueueUnavailable) as raised:
            asyncio.run(send(plain))
    finally:
        server.stop()
    assert [json.loads(item)["headers"]["id"] for item in on_queue] == [message_id]
    assert raised.value.maybe_enqueued is False and "\n" not in str(raised.value)
