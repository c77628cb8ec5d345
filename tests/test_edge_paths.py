"""Edge paths nobody drove (issue 17): each test drives one end to end, with real Redis,
real `emailq worker` processes and a real endpoint, at default settings."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from conftest import Reply
from helpers import EMAILQ, KEYS, SIGN_IN, wait_for

from emailq.message import Email, Envelope
from emailq.task_message import task_message


def _queue_by_hand(redis_client, message: dict) -> None:
    """LPUSH a kombu message onto the interactive lane, with a wake-up token, as the
    producer writes one."""
    redis_client.lpush(KEYS.interactive, json.dumps(message))
    redis_client.lpush(KEYS.wake, 1)


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
