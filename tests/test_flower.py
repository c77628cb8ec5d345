"""Flower shows every dead-lettered email as a failed task, with codes masked, behind auth."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import Reply, wait_for
from helpers import running_flower

AUTH = ("ops", "flower-pass-1")
SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "987654", "link": "https://x.io/magic?t=abc"}}


@pytest.fixture
def flower(settings_env, redis_client, tmp_path):
    with running_flower(settings_env, tmp_path, AUTH) as url:
        yield url
    assert ":".join(AUTH) not in (tmp_path / "flower.log").read_text()


def test_flower_requires_basic_auth(flower):
    assert httpx.get(flower + "/api/workers").status_code == 401
    assert httpx.get(flower + "/api/workers", auth=("ops", "wrong")).status_code == 401
    assert httpx.get(flower + "/api/workers", auth=AUTH).status_code == 200


@pytest.mark.parametrize("task_events", ["failures", "all"])
def test_dead_lettered_email_is_a_failed_task_with_its_reason(flower, producer, endpoint, start_worker, task_events):
    endpoint.behave = lambda headers, body: Reply(404, body=b"no such template")
    start_worker(env={"EMAILQ_TASK_EVENTS": task_events})
    message_id = producer.send(SIGN_IN)

    def failed_task():
        tasks = httpx.get(flower + "/api/tasks", params={"state": "FAILURE"}, auth=AUTH).json()
        return tasks.get(message_id)

    task = wait_for(failed_task, 30, "Flower to list the failed task", interval=0.5)
    assert task["name"] == "emailq.deliver"
    assert "rejected" in task["exception"] and "HTTP 404" in task["exception"]
    assert "no such template" in task["exception"]
    shown = json.dumps(task)
    assert "987654" not in shown and "magic?t=abc" not in shown
    assert "foo@logto.io" in shown


def test_queue_schedule_and_dlq_depths_are_visible_in_flower(flower, producer, start_worker, endpoint):
    later = Reply(503, headers={"Retry-After": "60"})
    endpoint.behave = lambda headers, body: later if b"later@" in body else Reply(422)
    worker = start_worker(env={"EMAILQ_RETRY_MAX_SECONDS": "60"})
    producer.send_many([SIGN_IN] * 2 + [{**SIGN_IN, "to": "later@logto.io"}])
    wait_for(lambda: len(endpoint.received) == 3, 20, "two rejected emails, one to retry in 60 s")
    worker.stop()  # it has announced the queue; none consumes it now
    producer.send_many([SIGN_IN] * 3)

    def depths():
        queues = httpx.get(flower + "/api/queues/length", auth=AUTH).json()["active_queues"]
        shown = {q["name"]: q["messages"] for q in queues}
        wanted = {"emailq": 3, "emailq:schedule": 1, "emailq:dlq": 2}
        return shown if all(shown.get(name) == n for name, n in wanted.items()) else None

    wait_for(depths, 20, "Flower to show 3 queued, 1 scheduled and 2 dead-lettered", interval=0.5)
    broker_page = httpx.get(flower + "/broker", auth=AUTH).text
    assert "emailq:dlq" in broker_page and "emailq:schedule" in broker_page
