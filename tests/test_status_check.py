"""`emailq status --check` finds an email in two places and an in-flight list nobody will
give back; and a worker takes over what the previous release's layout left."""

from __future__ import annotations

import json
import time

from conftest import run_emailq, wait_for
from helpers import KEYS, SIGN_IN, assert_one_home

from emailq.worker.places.dead_letters import DeadLetters


def test_check_reports_an_email_in_two_places_and_an_orphan(producer, redis_client, settings_env, tmp_path):
    ids = producer.send_many([SIGN_IN] * 3)
    ok = run_emailq(["status", "--check"], settings_env, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "3 queued" in ok.stdout and "ok: every email is in exactly one place" in ok.stdout

    item = redis_client.lindex("emailq", 0)
    redis_client.zadd(KEYS.schedule, {item: 0})  # the same email queued and scheduled
    redis_client.rpush(KEYS.inflight("ghost"), redis_client.lindex("emailq", 1))  # and held by nobody
    bad = run_emailq(["status", "--check", "--json"], settings_env, tmp_path)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert set(report["in_two_places"]) == {json.loads(item)["headers"]["id"], ids[1]}
    assert report["orphans"] == {KEYS.inflight("ghost"): 1}


def test_a_worker_takes_over_what_the_old_layout_left(producer, endpoint, start_worker, redis_client, defaults_env):
    # The previous release's layout, written by hand: an email in a dead consumer's inbox,
    # one in kombu's unacked hash, a dead letter without attempt history, and another
    # Celery app's unacked task, which must stay untouched.
    in_inbox, in_unacked = producer.send_many([SIGN_IN] * 2)
    redis_client.lmove("emailq", "emailq:inbox:old", "RIGHT", "LEFT")
    redis_client.sadd("_emailq.inboxes", json.dumps(["emailq", "emailq:inbox:old", "_emailq.alive:old"]))
    message = json.loads(redis_client.rpop("emailq"))
    redis_client.hset("unacked", "tag-1", json.dumps([message, "", "emailq"]))
    redis_client.zadd("unacked_index", {"tag-1": 1})
    redis_client.hset("unacked", "other-app", json.dumps([{"body": "x"}, "", "celery"]))
    failed = time.time() - 60  # within the DLQ's retention
    old_entry = {
        "id": "old-dead",
        "reason": "rejected",
        "detail": "HTTP 400",
        "status": 400,
        "response_excerpt": "",
        "attempts": 1,
        "first_attempt_at": failed,
        "last_attempt_at": failed,
        "failed_at": failed,
        "envelope": None,
        "raw": "{}",
    }
    redis_client.hset(KEYS.dlq, "old-dead", json.dumps(old_entry))
    redis_client.zadd(KEYS.dlq_index, {"old-dead": failed})

    start_worker(env=defaults_env)
    wait_for(lambda: {in_inbox, in_unacked} <= set(endpoint.delivered_keys()), 60, "both old in-flight emails delivered")
    assert redis_client.hexists("unacked", "other-app") and not redis_client.hexists("unacked", "tag-1")
    assert not redis_client.exists("emailq:inbox:old") and not redis_client.smembers("_emailq.inboxes")
    assert DeadLetters(redis_client, KEYS).get("old-dead").history == []
    assert_one_home(redis_client)


def test_an_email_whose_take_reply_was_lost_goes_back_from_a_live_worker(producer, endpoint, start_worker, redis_client):
    # The take moved the email onto a live worker's list, and the reply never reached the
    # worker: it holds no record of it. Two scans 30 s apart find it and give it back.
    start_worker()
    wait_for(lambda: redis_client.smembers(KEYS.owners), 10, "the worker registered")
    (owner,) = [o.decode() for o in redis_client.smembers(KEYS.owners)]
    lost = producer.send(SIGN_IN)
    redis_client.lmove("emailq", KEYS.inflight(owner), "RIGHT", "LEFT")
    wait_for(lambda: lost in endpoint.delivered_keys(), 90, "the lost take delivered")
    assert_one_home(redis_client)
