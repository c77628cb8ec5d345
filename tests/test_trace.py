"""`emailq trace ID|ADDRESS`: where an email is and every attempt it had, written by the
moves themselves, with a real Redis, real workers and a real endpoint."""

from __future__ import annotations

import json

from conftest import Reply, run_emailq, settings_from
from helpers import KEYS, SIGN_IN, wait_for

from emailq.enqueue import Producer
from emailq.store.moves import Moves
from emailq.store.trace import Trace, TraceLimits, address_hash
from emailq.worker.places.taking import TAKE, Taker

# What docs/operations.md says a traced, delivered email costs Redis at most (bytes).
TRACE_BYTES_PER_EMAIL = 600


def _trace(env, tmp_path, what: str) -> list[dict]:
    result = run_emailq(["trace", what, "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_delivered_email_shows_each_move_and_attempt(producer, endpoint, start_worker, settings_env, tmp_path, redis_client):
    answers = iter([503])
    endpoint.behave = lambda headers, body: Reply(next(answers, 200))
    start_worker()
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the email to be delivered")
    wait_for(lambda: getattr(Trace(redis_client, KEYS).of(message_id), "now", "") == "delivered", 5, "the ack")

    [found] = _trace(settings_env, tmp_path, message_id)
    assert found["now"] == "delivered"
    assert [e["event"] for e in found["events"]] == ["queued", "taken", "retry", "due", "taken", "delivered"]
    assert found["events"][2]["detail"].endswith("attempt 1: HTTP 503")
    times = [e["at"] for e in found["events"]]
    assert times == sorted(times)

    shown = run_emailq(["trace", message_id], settings_env, tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{message_id}: delivered\n")
    assert "attempt 1: HTTP 503" in shown.stdout

    # Found by address (any case), newest first; never stored as an address or a code.
    later = producer.send(SIGN_IN)
    by_address = _trace(settings_env, tmp_path, SIGN_IN["to"].upper())
    assert [w["id"] for w in by_address] == [later, message_id]
    keys = list(redis_client.scan_iter(match=f"{KEYS.trace}:*"))
    stored = b"".join([*keys, *(redis_client.get(k) or b"" for k in keys if k != KEYS.trace_index.encode())])
    stored += b"".join(redis_client.lrange(KEYS.trace_index, 0, -1))
    assert b"foo@logto.io" not in stored and b"123456" not in stored
    assert redis_client.lindex(KEYS.trace_index, 0).endswith(address_hash("foo@logto.io").encode())


def test_a_dead_letter_and_its_replay(producer, endpoint, start_worker, settings_env, tmp_path):
    status = {"now": 422}
    endpoint.behave = lambda headers, body: Reply(status["now"])
    start_worker()
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: _trace(settings_env, tmp_path, message_id)[0]["now"] == "in the dead-letter queue", 20, "the dead letter")
    [found] = _trace(settings_env, tmp_path, message_id)
    assert found["events"][-1]["detail"] == "rejected HTTP 422"

    status["now"] = 200
    assert run_emailq(["dlq", "replay", message_id], settings_env, tmp_path).returncode == 0
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the replayed email to be delivered")
    wait_for(lambda: _trace(settings_env, tmp_path, message_id)[0]["now"] == "delivered", 5, "the ack")
    events = [e["event"] for e in _trace(settings_env, tmp_path, message_id)[0]["events"]]
    assert events == ["queued", "taken", "dead", "replayed", "taken", "delivered"]


def test_the_trace_is_capped_by_count_and_age(settings_env, redis_client, tmp_path):
    # Five emails at most, for an hour (tuned down from 100,000 and a day to count them).
    env = {**settings_env, "EMAILQ_TRACE_MAX_EMAILS": "5", "EMAILQ_TRACE_SECONDS": "3600"}
    producer = Producer(settings_from(env))
    ids = [producer.send(SIGN_IN) for _ in range(8)] + producer.send_many([SIGN_IN] * 4)
    producer.close()
    traced = [i for i in ids if redis_client.exists(KEYS.trace_of(i))]
    assert traced == ids[-5:]
    assert redis_client.llen(KEYS.trace_index) == 5
    assert 3_500_000 < redis_client.pttl(KEYS.trace_of(ids[-1])) <= 3_600_000


def test_a_lowered_count_cap_is_reached_within_a_few_enqueues(settings_env, redis_client, tmp_path):
    # From 20 traced emails to a cap of 5: each enqueue drops the oldest traces, up to
    # twice as many as it adds (so that no enqueue does a long cleanup).
    first = Producer(settings_from({**settings_env, "EMAILQ_TRACE_MAX_EMAILS": "20"}))
    old = first.send_many([SIGN_IN] * 20)
    first.close()
    lowered = Producer(settings_from({**settings_env, "EMAILQ_TRACE_MAX_EMAILS": "5"}))
    sizes = []
    for _ in range(3):
        lowered.send(SIGN_IN)
        sizes.append(redis_client.llen(KEYS.trace_index))
    assert sizes == [19, 18, 17]
    assert [i for i in old if redis_client.exists(KEYS.trace_of(i))] == old[6:]
    last = lowered.send_many([SIGN_IN] * 12)
    lowered.close()
    assert redis_client.llen(KEYS.trace_index) == 5
    assert [i for i in last if redis_client.exists(KEYS.trace_of(i))] == last[-5:]
    assert not any(redis_client.exists(KEYS.trace_of(i)) for i in old)


def test_with_the_trace_off_nothing_is_written(settings_env, redis_client, tmp_path):
    env = {**settings_env, "EMAILQ_TRACE_SECONDS": "0"}
    producer = Producer(settings_from(env))
    message_id = producer.send(SIGN_IN)
    producer.close()
    assert list(redis_client.scan_iter(match=f"{KEYS.trace}*")) == []
    result = run_emailq(["trace", message_id], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"emailq: no trace of {message_id} (traces are kept nothing: EMAILQ_TRACE_SECONDS is 0, for the newest 100000 emails)"
    ]


def test_an_unknown_id_is_one_line(settings_env, redis_client, tmp_path):
    result = run_emailq(["trace", "no-such-id"], settings_env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "emailq: no trace of no-such-id (traces are kept 86400s, for the newest 100000 emails)"


def _deliver_all(client, env: dict[str, str], n: int) -> None:
    """`n` emails queued, taken and acked through the moves, as a worker does (no POST)."""
    settings = settings_from(env)
    producer = Producer(settings)
    for start in range(0, n, 500):
        producer.send_many([SIGN_IN] * min(500, n - start))
    producer.close()
    moves = Moves(client, KEYS, TraceLimits.of(settings))
    taker = Taker(KEYS, "w1", None, 10, TraceLimits.of(settings).ms)
    take = client.register_script(TAKE.source)
    moves.register("w1", 60_000)
    while True:
        keys, args = taker.args(16)
        reply = take(keys=keys, args=args)
        if reply[0] != 1:
            return
        moves.ack(KEYS.inflight("w1"), reply[2::2])


def test_a_day_of_traces_fits_the_memory_the_docs_state(settings_env, redis_client):
    # docs/operations.md states the memory a traced email needs; this is where it comes from.
    n = 5000
    used = {}
    for seconds in ("0", "86400"):
        redis_client.flushall()
        before = redis_client.info("memory")["used_memory"]
        _deliver_all(redis_client, {**settings_env, "EMAILQ_TRACE_SECONDS": seconds}, n)
        used[seconds] = redis_client.info("memory")["used_memory"] - before
    per_email = (used["86400"] - used["0"]) / n
    print(f"trace memory per delivered email: {per_email:.0f} bytes")
    assert 100 < per_email < TRACE_BYTES_PER_EMAIL
