"""Edge paths nobody drove (issue 17): each test drives one end to end, with real Redis,
real `emailq worker` processes and a real endpoint, at default settings."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import redis
from conftest import RedisServer, Reply, run_emailq, settings_from
from cut_link import CutLink
from helpers import EMAILQ, KEYS, SIGN_IN, assert_one_home, wait_for

from emailq.enqueue import Producer
from emailq.message import ENVELOPE_FORMAT, Email, Envelope
from emailq.task_message import task_message
from emailq.worker.places.taking import TAKE


def _queue_by_hand(redis_client, message: dict | str) -> bytes:
    """LPUSH a kombu message (or any text) onto the interactive lane, with a wake-up token,
    as the producer writes one; the item as queued."""
    item = (message if isinstance(message, str) else json.dumps(message)).encode()
    redis_client.lpush(KEYS.interactive, item)
    redis_client.lpush(KEYS.wake, 1)
    return item


def _with_envelope(envelope: dict) -> dict:
    """A task message as the producer writes it, carrying `envelope` as it is."""
    message = json.loads(task_message(Envelope.wrap(Email(**SIGN_IN), 3600), KEYS.interactive))
    body = json.loads(base64.b64decode(message["body"]))
    body[0][0] = envelope
    message["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    message["headers"]["id"] = envelope["id"]
    return message


# Celery's own path runs the task when per-task events are on (`strategy.py`).
@pytest.mark.parametrize("task_events", ["failures", "all"], ids=["lean-path", "celery-path"])
def test_an_email_without_a_task_id_header_is_retried_not_lost(endpoint, start_worker, redis_client, defaults_env, task_events):
    # The first attempt fails (a retry), the next succeeds.
    answers = iter([503])
    endpoint.behave = lambda headers, body: Reply(next(answers, 200))
    envelope = Envelope.wrap(Email(**SIGN_IN), 3600)
    message = json.loads(task_message(envelope, KEYS.interactive))
    del message["headers"]["id"]  # as kombu writes it, minus the task id
    worker = start_worker(env={**defaults_env, "EMAILQ_TASK_EVENTS": task_events})
    _queue_by_hand(redis_client, message)

    wait_for(lambda: envelope.id in endpoint.delivered_keys(), 20, "the email to be delivered after its retry")
    assert [r.status for r in endpoint.requests_for(envelope.id)] == [503, 200]
    assert worker.process.poll() is None


def test_an_explicit_prefork_pool_is_named_at_start_and_emailqs_pool_runs(producer, endpoint, start_worker, defaults_env):
    worker = start_worker("-P", "prefork", env=defaults_env)
    said = [line for line in worker.output().splitlines() if "-P prefork" in line]
    assert len(said) == 1 and "emailq runs its own threads pool instead" in said[0]
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: message_id in endpoint.delivered_keys(), 10, "the email, delivered by emailq's pool")


@pytest.mark.parametrize("pool", ["processes", "threads", "solo"])
@pytest.mark.parametrize("command", ["emailq", "celery"])
def test_a_pool_emailq_cannot_run_is_refused_in_one_line(settings_env, redis_client, tmp_path, pool, command):
    # `-P processes` is Celery's alias of the real prefork pool, whose children cannot
    # settle what the worker process holds.
    argv = [EMAILQ, "worker"] if command == "emailq" else [sys.executable, "-m", "celery", "-A", "emailq.worker", "worker"]
    done = subprocess.run([*argv, "-P", pool], env={**os.environ, **settings_env}, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("emailq worker: the pool celery.concurrency.") and "is not supported" in last, done.stderr
    assert "Traceback" not in done.stderr
    assert "ready." not in done.stdout + done.stderr


def _junk(kind: str) -> dict:
    """A kombu message on emailq's lane that is no email: the consumer dead-letters it."""
    message = json.loads(task_message(Envelope.wrap(Email(**SIGN_IN), 3600), KEYS.interactive))
    if kind == "another-apps-task":
        message["headers"]["task"] = "billing.charge"
    else:
        message["body"] = base64.b64encode(b"\xff not json").decode()
    return message


@pytest.mark.parametrize("kind", ["another-apps-task", "undecodable-body"])
def test_a_probe_that_is_no_email_does_not_stop_the_worker_for_good(producer, endpoint, start_worker, redis_client, defaults_env, kind):
    endpoint.behave = lambda headers, body: Reply(503)
    worker = start_worker(env=defaults_env)
    producer.send_many([SIGN_IN] * 20)
    wait_for(lambda: "endpoint looks down" in worker.output(), 30, "the breaker to open")
    # At the head of the lane (takes pop from the right): the next probe.
    redis_client.rpush(KEYS.interactive, json.dumps(_junk(kind)))
    redis_client.lpush(KEYS.wake, 1)
    wait_for(lambda: redis_client.zcard(KEYS.dlq_index) == 1, 20, "the junk probe to be dead-lettered")

    endpoint.behave = lambda headers, body: Reply(200)
    later = producer.send(SIGN_IN)
    wait_for(lambda: later in endpoint.delivered_keys(), 10, "an email sent after the endpoint recovered")
    assert "resuming deliveries" in worker.output()


def test_an_envelope_in_a_newer_format_goes_back_to_its_lane_for_an_upgraded_worker(endpoint, start_worker, redis_client, defaults_env):
    worker = start_worker(env=defaults_env)
    # Readers ignore fields they do not know: the same format with one more is delivered.
    known = {**Envelope.wrap(Email(**SIGN_IN), 3600).dump(), "added_later": True}
    _queue_by_hand(redis_client, _with_envelope(known))
    newer = {**Envelope.wrap(Email(**SIGN_IN), 3600).dump(), "v": ENVELOPE_FORMAT + 1}
    item = _queue_by_hand(redis_client, _with_envelope(newer))

    wait_for(lambda: known["id"] in endpoint.delivered_keys(), 10, "the email with an unknown field")
    said = lambda: [line for line in worker.output().splitlines() if newer["id"] in line]  # noqa: E731
    wait_for(said, 10, "the worker to say it gave the newer email back")
    assert f"envelope format {ENVELOPE_FORMAT + 1}, newer than this worker's {ENVELOPE_FORMAT}" in said()[0]
    # Waiting in the schedule, as it was (the routing key names its lane), no attempt spent.
    [(scheduled, due_ms)] = redis_client.zrange(KEYS.schedule, 0, -1, withscores=True)
    assert scheduled == item
    seconds, micros = redis_client.time()
    assert 5 < (due_ms - (seconds * 1000 + micros / 1000)) / 1000 <= 10

    # A cluster of only older workers takes it again each time it is due, no more often.
    wait_for(lambda: len(said()) == 2, 15, "the second give-back, once it was due")
    assert redis_client.zrange(KEYS.schedule, 0, -1) == [item]
    assert endpoint.requests_for(newer["id"]) == []
    assert redis_client.zcard(KEYS.dlq_index) == 0


CODE = "987654"


def _malformed(kind: str) -> str:
    """A queue item carrying a one-time code that the worker dead-letters as malformed:
    at the task (an envelope it cannot read), at the consumer (another app's task), at
    the transport (no kombu message at all)."""
    email = {**SIGN_IN, "payload": {"code": CODE, "link": "https://x/magic?t=abc"}}
    envelope = Envelope.wrap(Email(**email), 3600).dump()
    if kind == "unreadable-envelope":
        return json.dumps(_with_envelope({**envelope, "message": {**email, "to": "nobody"}}))
    if kind == "another-apps-task":
        message = _with_envelope(envelope)
        message["headers"]["task"] = "billing.charge"
        return json.dumps(message)
    return json.dumps({"note": "no kombu message", "payload": email["payload"]})


@pytest.mark.parametrize("kind", ["unreadable-envelope", "another-apps-task", "no-kombu-message"])
def test_a_malformed_entry_is_masked_unless_revealed_and_replayed_as_it_was(settings_env, start_worker, redis_client, tmp_path, kind):
    worker = start_worker()
    item = _queue_by_hand(redis_client, _malformed(kind))
    wait_for(lambda: redis_client.zcard(KEYS.dlq_index) == 1, 10, "the malformed dead letter")
    worker.stop()  # so that what replay puts back stays on the queue to be looked at
    [message_id] = [i.decode() for i in redis_client.zrange(KEYS.dlq_index, 0, -1)]

    shown = run_emailq(["dlq", "show", message_id], settings_env, tmp_path)
    listed = run_emailq(["dlq", "list", "--json"], settings_env, tmp_path)
    revealed = run_emailq(["dlq", "show", message_id, "--reveal"], settings_env, tmp_path)
    for masked in (shown, listed):
        assert masked.returncode == 0, masked.stderr
        assert CODE not in masked.stdout and "magic" not in masked.stdout
        # Nor base64 that anyone could decode: the kombu body is shown decoded and masked.
        assert json.loads(item).get("body", "<none>") not in masked.stdout
    assert json.loads(revealed.stdout)["raw"] == item.decode()

    replayed = run_emailq(["dlq", "replay", message_id], settings_env, tmp_path)
    if kind == "no-kombu-message":  # nothing any worker could read: kept for a purge
        assert replayed.returncode == 1 and "not replayable" in replayed.stderr
        assert redis_client.zcard(KEYS.dlq_index) == 1
        return
    assert replayed.returncode == 0, replayed.stderr
    assert redis_client.lrange(KEYS.interactive, 0, -1) == [item]
    assert redis_client.zcard(KEYS.dlq_index) == 0


def test_a_lane_of_the_wrong_type_stops_takes_not_the_worker(producer, endpoint, start_worker, redis_client, defaults_env):
    worker = start_worker(env=defaults_env)
    redis_client.set(KEYS.interactive, "not a list")  # WRONGTYPE to the take script
    redis_client.lpush(KEYS.wake, 1)  # an idle worker takes at once
    wait_for(lambda: "Redis answered with an error" in worker.output(), 10, "the worker to say so")
    time.sleep(2)  # a few more refused takes
    assert worker.process.poll() is None, worker.output()
    said = [line for line in worker.output().splitlines() if "Redis answered with an error" in line]
    assert len(said) == 1, said  # one line per episode, not one per take

    redis_client.delete(KEYS.interactive)
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: message_id in endpoint.delivered_keys(), 10, "delivery once the lane is a list again")
    assert "Unrecoverable error" not in worker.output()


def test_a_redis_busy_with_a_script_stops_takes_not_the_worker(settings_env, endpoint, start_worker, tmp_path, defaults_env):
    # A Redis of its own, which answers BUSY after 100 ms of a running script (default 5 s:
    # shortened to save time).
    busy_redis = RedisServer(tmp_path / "busy", "--lua-time-limit", "100")
    (tmp_path / "busy").mkdir()
    busy_redis.start()
    try:
        env = {**defaults_env, "EMAILQ_REDIS_URL": busy_redis.url}
        worker = start_worker(env=env)
        spinner = busy_redis.client()
        spinning = threading.Thread(target=lambda: _spin_until_killed(spinner), daemon=True)
        spinning.start()
        # The worker's blocking wait ends within a second; its takes meet BUSY from then on.
        wait_for(lambda: "Redis answered with an error" in worker.output(), 10, "the worker to say so")
        time.sleep(2)
        busy_redis.client().script_kill()
        spinning.join(5)
        assert worker.process.poll() is None, worker.output()
        said = [line for line in worker.output().splitlines() if "Redis answered with an error" in line]
        assert len(said) == 1, said

        producer = Producer(settings_from({**settings_env, **env}))
        message_id = producer.send(SIGN_IN)
        wait_for(lambda: message_id in endpoint.delivered_keys(), 10, "delivery once Redis is free")
        assert "Unrecoverable error" not in worker.output()
        producer.close()
    finally:
        busy_redis.kill()


def _spin_until_killed(client) -> None:
    try:
        client.eval("while true do end", 0)
    except redis.ResponseError:
        pass  # killed: SCRIPT KILL


def test_every_thread_moving_a_failed_email_at_once_gets_a_redis_connection(producer, endpoint, start_worker, redis_client, defaults_env):
    # Every thread of the default pool waits on the endpoint, which then answers all of
    # them 503 at once; Retry-After keeps each email in the schedule for the test.
    endpoint.behave = lambda headers, body: Reply(503, headers={"Retry-After": "30"}, delay=0.5)
    worker = start_worker(env=defaults_env)
    ids = producer.send_many([SIGN_IN] * (int(defaults_env["EMAILQ_CONCURRENCY"]) + 44))

    wait_for(lambda: redis_client.zcard(KEYS.schedule) == len(ids), 15, "every email in the retry schedule")
    assert "Too many connections" not in worker.output()
    assert "did not take" not in worker.output()


DAY = 24 * 3600


def test_dlq_retention_and_failure_times_follow_redis_clock_not_the_workers(redis_client, monkeypatch):
    from emailq.worker.places import dead_letters as dl

    redis_now = float(redis_client.time()[0])
    store = dl.DeadLetters(redis_client, KEYS)  # the defaults: entries kept 7 days
    store.add(dl.DeadLetter(id="six-days-old", reason="expired"))
    redis_client.zadd(KEYS.dlq_index, {"six-days-old": redis_now - 6 * DAY})
    # A worker whose clock runs two days ahead dead-letters an email.
    monkeypatch.setattr(dl, "time", SimpleNamespace(time=lambda: time.time() + 2 * DAY))

    store.add(dl.DeadLetter(id="now", reason="expired", failed_at=time.time() + 2 * DAY))

    assert store.ids() == ["now", "six-days-old"]  # not taken for eight days old
    assert abs(store.get("now").failed_at - redis_now) < 60
    assert store.trim().total == 0


def test_a_dead_workers_newsletters_go_back_behind_codes_and_wake_workers(producer, endpoint, start_worker, redis_client, defaults_env):
    # Worker A dies holding a newsletter batch; B reclaims it once A's heartbeat lapses
    # (default 15 s), while sign-in codes wait on the interactive lane.
    seen: set[str] = set()
    lock = threading.Lock()

    def behave(headers, body):
        key = headers["idempotency-key"]
        with lock:
            first = key not in seen
            seen.add(key)
        if json.loads(body)["type"] == "Generic" and first:
            time.sleep(60)  # A's POSTs never end: A is killed holding them
        return Reply(200)

    endpoint.behave = behave
    a = start_worker(env=defaults_env)
    newsletters = producer.send_many([{"to": f"n{i}@example.com", "type": "Generic", "payload": {}} for i in range(4)], bulk=True)
    wait_for(lambda: len(seen) == 4, 20, "worker A to be posting the newsletters")
    a.kill()
    # A rate limit of one email per 20 s keeps the codes waiting on their lane across the
    # reclaim (set only for that; the reclaim and the lanes are as by default).
    b = start_worker(env={**defaults_env, "EMAILQ_RATE_LIMIT": "0.05"})
    codes = [producer.send({**SIGN_IN, "payload": {"code": f"{i:06d}"}}) for i in range(3)]
    wait_for(lambda: codes[0] in endpoint.delivered_keys(), 20, "worker B to deliver the first code")
    tokens_before = redis_client.llen(KEYS.wake)
    wait_for(lambda: redis_client.llen(KEYS.interactive) + redis_client.llen(KEYS.bulk) == 6, 60, "A's list to be reclaimed")

    assert redis_client.llen(KEYS.bulk) == 4, "the newsletters went back to their own lane"
    assert redis_client.llen(KEYS.wake) - tokens_before == 4, "one wake-up token per reclaimed email"
    # Takes prefer the interactive lane (tests/test_flow_control.py): the codes go first.
    assert redis_client.llen(KEYS.interactive) == 2
    assert not set(newsletters) & set(endpoint.delivered_keys())
    assert b.process.poll() is None
    assert_one_home(redis_client)


def test_a_take_whose_reply_is_lost_is_delivered_within_seconds(producer, endpoint, start_worker, redis_client, redis_server, defaults_env):
    # A proxy resets the worker's connection after Redis ran a take and before its reply
    # arrived: the email is in the worker's list, and no record of it is anywhere.
    link = CutLink(redis_server.port, TAKE.sha.encode())
    try:
        worker = start_worker(env={**defaults_env, "EMAILQ_REDIS_URL": f"redis://127.0.0.1:{link.port}/0"})
        time.sleep(1)  # idle: blocked on its wake-up list
        link.armed.set()
        sent_at = time.monotonic()
        message_id = producer.send(SIGN_IN)
        wait_for(link.cut.is_set, 10, "the take's reply to be cut")
        wait_for(lambda: message_id in endpoint.delivered_keys(), 30, "the email to be delivered")
        took = time.monotonic() - sent_at
        print(f"delivered {took:.1f}s after its take's reply was lost")
        # Before: only the periodic scans (30 s apart, two in a row) gave it back.
        assert took < 10, f"delivered {took:.1f}s after the lost reply"
        assert [r.status for r in endpoint.requests_for(message_id)] == [200]
        assert "an email in" in worker.output()  # the worker said what it gave back
        assert_one_home(redis_client)
    finally:
        link.close()
