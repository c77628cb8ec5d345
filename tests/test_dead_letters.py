"""The dead-letter queue as an operator meets it: `emailq dlq ...` and `emailq status`,
with a real worker dead-lettering what a real endpoint refuses."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import EMAILQ, Reply, run_emailq, wait_for
from helpers import KEYS

from emailq.message import Email, Envelope
from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

CODE = "918273"
LINK = "https://example.com/magic?token=abcdef"
SECRET = "Bearer dlq-s3cr3t-authorization"
SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": CODE, "link": LINK, "locale": "en"}}
LIST_FIELDS = {"id", "to", "type", "reason", "status", "attempts", "failed_at"}


def store_of(redis_client) -> DeadLetters:
    return DeadLetters(redis_client, KEYS)


def queued_ids(redis_client, queue: str = "emailq") -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(queue, 0, -1)]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def env(settings_env) -> dict[str, str]:
    """What the operator's shell has: the same settings as the worker, secret included."""
    return {**settings_env, "EMAILQ_ENDPOINT_AUTHORIZATION": SECRET}


@pytest.fixture
def dead_lettered(producer, endpoint, start_worker, redis_client, env):
    """`dead_lettered(n)`: n emails refused with 422 by the endpoint, now in the DLQ; the
    worker that put them there keeps running."""
    endpoint.behave = lambda headers, body: Reply(422, body=b'{"error":"template not found"}')
    worker = start_worker("-n", "dlqtest@%h", "-c", "1", env=env)
    store = store_of(redis_client)

    def make(n: int) -> list[str]:
        ids = producer.send_many([{**SIGN_IN, "to": f"user{i}@example.com"} for i in range(n)])
        wait_for(lambda: store.count() == n, 20, f"{n} dead letters")
        return ids

    make.worker = worker  # type: ignore[attr-defined]
    return make


def emailq(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = run_emailq(args, env, cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# --- looking ------------------------------------------------------------------------


def test_dlq_list_shows_each_entry_with_the_fields_operators_need(dead_lettered, env, tmp_path):
    ids = dead_lettered(2)

    result = emailq(["dlq", "list", "--json"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and len(rows) == 2
    assert {row["id"] for row in rows} == set(ids)
    for row in rows:
        assert LIST_FIELDS <= set(row), row
        assert row["reason"] == "rejected"
        assert row["status"] == 422
        assert row["attempts"] == 1
        assert row["type"] == "SignIn"
        assert row["to"].endswith("@example.com")
        assert abs(row["failed_at"] - time.time()) < 60

    table = emailq(["dlq", "list"], env, tmp_path)
    assert table.returncode == 0, table.stderr
    for message_id in ids:
        assert message_id in table.stdout
    assert "422" in table.stdout and "rejected" in table.stdout


def test_dlq_list_of_an_empty_dlq(settings_env, redis_client, tmp_path):
    result = emailq(["dlq", "list", "--json"], settings_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_codes_are_masked_unless_revealed_and_the_authorization_never_shows(dead_lettered, endpoint, env, tmp_path):
    [message_id] = dead_lettered(1)
    assert endpoint.received[0].headers["authorization"] == SECRET  # it was sent...

    listed = emailq(["dlq", "list", "--json"], env, tmp_path)
    listed_text = emailq(["dlq", "list"], env, tmp_path)
    shown = emailq(["dlq", "show", message_id], env, tmp_path)
    revealed = emailq(["dlq", "show", message_id, "--reveal"], env, tmp_path)
    status = emailq(["status", "--json"], env, tmp_path)

    for result in (listed, listed_text, shown, revealed, status):
        assert result.returncode == 0, result.stderr
        # ...and is never shown, not even with --reveal.
        assert SECRET not in result.stdout + result.stderr
        assert "dlq-s3cr3t" not in result.stdout + result.stderr
    for result in (listed, listed_text, shown):
        assert CODE not in result.stdout
        assert LINK not in result.stdout
    [row] = json.loads(listed.stdout)
    if "envelope" in row:
        assert row["envelope"]["message"]["payload"]["code"] == "***"
    entry = json.loads(shown.stdout)
    assert entry["id"] == message_id
    assert entry["envelope"]["message"]["payload"] == {"code": "***", "link": "***", "locale": "en"}
    assert json.loads(revealed.stdout)["envelope"]["message"]["payload"] == SIGN_IN["payload"]
    assert entry["response_excerpt"] == '{"error":"template not found"}'


# --- replay -------------------------------------------------------------------------


def test_replay_delivers_with_the_same_idempotency_key_and_leaves_the_dlq(dead_lettered, endpoint, env, tmp_path, redis_client):
    first, second = dead_lettered(2)
    endpoint.behave = lambda headers, body: Reply(200)

    result = emailq(["dlq", "replay", first], env, tmp_path)

    assert result.returncode == 0, result.stderr
    wait_for(lambda: first in endpoint.delivered_keys(), 20, "the replayed email")
    attempts = endpoint.requests_for(first)
    assert [r.status for r in attempts] == [422, 200]
    assert attempts[1].json == {**SIGN_IN, "to": attempts[0].json["to"]}
    assert attempts[1].headers["authorization"] == SECRET
    store = store_of(redis_client)
    assert store.ids() == [second]
    assert second not in endpoint.delivered_keys()


def test_replay_all_delivers_every_entry(dead_lettered, endpoint, env, tmp_path, redis_client):
    ids = dead_lettered(3)
    endpoint.behave = lambda headers, body: Reply(200)

    result = emailq(["dlq", "replay", "--all"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "3" in result.stdout
    wait_for(lambda: set(endpoint.delivered_keys()) == set(ids), 20, "every replayed email")
    assert store_of(redis_client).count() == 0


def test_replay_gives_a_fresh_attempt_budget(dead_lettered, endpoint, env, tmp_path, redis_client):
    [message_id] = dead_lettered(1)
    replies = iter([Reply(503), Reply(503), Reply(200)])  # EMAILQ_MAX_ATTEMPTS is 3
    endpoint.behave = lambda headers, body: next(replies)

    assert emailq(["dlq", "replay", message_id], env, tmp_path).returncode == 0

    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "delivery on the third attempt")
    assert [r.status for r in endpoint.requests_for(message_id)] == [422, 503, 503, 200]
    assert store_of(redis_client).count() == 0


# --- purge --------------------------------------------------------------------------


def test_purge_one_deletes_only_that_entry(dead_lettered, endpoint, env, tmp_path, redis_client):
    first, second = dead_lettered(2)

    result = emailq(["dlq", "purge", first], env, tmp_path)

    assert result.returncode == 0, result.stderr
    store = store_of(redis_client)
    assert store.ids() == [second]
    assert redis_client.llen("emailq") == 0
    assert redis_client.hlen("emailq:dlq") == 1


def test_purge_all_empties_the_dlq(dead_lettered, env, tmp_path, redis_client):
    dead_lettered(3)

    result = emailq(["dlq", "purge", "--all"], env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "3" in result.stdout
    assert store_of(redis_client).count() == 0
    assert redis_client.hlen("emailq:dlq") == 0
    assert redis_client.llen("emailq") == 0


# --- unknown ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "show", "{unknown}"],
        ["dlq", "replay", "{unknown}"],
        ["dlq", "replay", "{known}", "{unknown}"],
        ["dlq", "purge", "{unknown}"],
        ["dlq", "purge", "{known}", "{unknown}"],
    ],
    ids=["show", "replay", "replay-known-and-unknown", "purge", "purge-known-and-unknown"],
)
def test_unknown_id_is_one_line_and_changes_nothing(env, tmp_path, redis_client, command):
    store = store_of(redis_client)
    [entry] = _entries(1)
    store.add(entry)
    known, unknown = entry.id, "00000000-0000-0000-0000-000000000000"
    before = store.get(known)

    result = emailq([a.format(known=known, unknown=unknown) for a in command], env, tmp_path)

    assert result.returncode != 0
    assert len(lines(result.stderr)) == 1, result.stderr
    assert unknown in result.stderr
    assert store.ids() == [known]
    assert store.get(known) == before
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    "command",
    [["dlq", "replay"], ["dlq", "purge"], ["dlq", "replay", "--all", "some-id"], ["dlq", "purge", "--all", "some-id"]],
    ids=["replay-nothing", "purge-nothing", "replay-both", "purge-both"],
)
def test_replay_and_purge_need_ids_or_all_but_not_both(settings_env, redis_client, tmp_path, command):
    result = emailq(command, settings_env, tmp_path)
    assert result.returncode != 0
    assert len(lines(result.stderr)) == 1, result.stderr


# --- status -------------------------------------------------------------------------


def test_status_shows_queued_dead_lettered_and_workers_online(dead_lettered, producer, endpoint, env, tmp_path):
    dead_lettered(2)
    # The worker (one delivery at a time, prefetch 1) is held on the next email, so the
    # ones after it stay queued while we look.
    started, release = threading.Event(), threading.Event()

    def hold(headers: dict[str, str], body: bytes) -> Reply:
        started.set()
        release.wait(20)
        return Reply(200)

    endpoint.behave = hold
    try:
        more = producer.send_many([SIGN_IN] * 3)
        assert started.wait(10), "no delivery started"
        result = emailq(["status", "--json"], env, tmp_path)
    finally:
        release.set()

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dead_lettered"] == 2
    assert report["queued"] >= 1
    assert report["queued"] + report["in_flight"] == 3
    assert [name for name in report["workers"] if name.startswith("dlqtest@")], report
    wait_for(lambda: set(more) <= set(endpoint.delivered_keys()), 20, "the held emails")

    text = emailq(["status"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    assert "dlqtest@" in text.stdout


def test_status_with_no_worker_running(settings_env, redis_client, producer, tmp_path):
    producer.send(SIGN_IN)
    store_of(redis_client).add(DeadLetter(id="x-1", reason="expired"))

    result = emailq(["status", "--json"], settings_env, tmp_path)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["queued"], report["dead_lettered"], report["workers"]) == (1, 1, [])


# --- atomicity ----------------------------------------------------------------------


def _entries(n: int) -> list[DeadLetter]:
    """n dead letters built as the worker builds them (worker/emailq/worker/celery_glue/tasks.py `_entry`)."""
    email = Email(**SIGN_IN)
    now = time.time()
    out = []
    for i in range(n):
        envelope = Envelope.wrap(email, 900, id=f"atomic-{i:05d}")
        out.append(
            DeadLetter(
                id=envelope.id,
                reason="rejected",
                detail="HTTP 422",
                status=422,
                response_excerpt='{"error":"template not found"}',
                attempts=1,
                first_attempt_at=now,
                last_attempt_at=now,
                failed_at=now + i * 1e-6,
                envelope=envelope.dump(),
            )
        )
    return out


def test_replay_all_killed_midway_loses_and_duplicates_nothing(settings_env, redis_client, tmp_path):
    total = 20000
    entries = _entries(total)
    store = store_of(redis_client)
    store.add(entries[0])
    # The rest in two commands, written exactly as `DeadLetters.add` writes them (the
    # layout documented in worker/emailq/worker/places/dead_letters.py), so that setup takes no time.
    redis_client.hset("emailq:dlq", mapping={e.id: json.dumps(asdict(e)) for e in entries[1:]})
    redis_client.zadd("emailq:dlq:index", {e.id: e.failed_at for e in entries[1:]})
    assert store.get(entries[-1].id) == entries[-1]
    assert store.count() == total == redis_client.hlen("emailq:dlq")

    replay = subprocess.Popen(
        [EMAILQ, "dlq", "replay", "--all"],
        env={**os.environ, **settings_env},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it once it has started moving entries, well before it is done.
        wait_for(
            lambda: redis_client.llen("emailq") > 200 or replay.poll() is not None,
            30,
            "the replay to start",
            interval=0.01,
        )
        time.sleep(0.2)
        replay.send_signal(signal.SIGKILL)
    finally:
        replay.wait(10)
    assert replay.returncode == -signal.SIGKILL, "the replay finished before it could be killed"

    on_queue = queued_ids(redis_client)
    in_dlq = store.ids()
    assert 0 < len(on_queue) < total, "killed before or after the replay, not mid-way"
    assert len(on_queue) + store.count() == total
    assert redis_client.hlen("emailq:dlq") == store.count()
    assert len(set(on_queue)) == len(on_queue)
    assert not set(on_queue) & set(in_dlq)
    assert set(on_queue) | set(in_dlq) == {e.id for e in entries}
    # What was replayed is the whole original message, under the same id.
    message = json.loads(redis_client.lindex("emailq", 0))
    [envelope], _, _ = json.loads(base64.b64decode(message["body"]))
    assert envelope["message"] == SIGN_IN
    assert envelope["id"] == message["headers"]["id"]
