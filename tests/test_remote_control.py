"""Celery's remote control sees emailq's deliveries as it sees any task's.

The worker runs `emailq.deliver` on a lean path (`emailq.worker.celery_glue.strategy`), not through
Celery's Request and tracer; what operators read through Celery (`celery inspect`,
Flower's worker pages) must not notice.
"""

from __future__ import annotations

import pytest
from celery import Celery

from conftest import Reply, settings_from, wait_for
from emailq.task_message import TASK_NAME
from emailq.worker.celery_glue.app import celery_config

SLOW_SECONDS = 3.0
CODE = "739104"


def _control_app(env: dict[str, str]) -> Celery:
    app = Celery("emailq-test-control")
    # kombu's own transport: emailq's reads the settings of a worker process.
    app.conf.update(celery_config(settings_from(env)), broker_transport="redis")
    return app


# `failures` (the default) runs the lean path; `all` Celery's own, with every task event.
@pytest.mark.parametrize("task_events", ["failures", "all"])
def test_inspect_lists_emails_being_posted_and_counts_delivered_ones(producer, endpoint, start_worker, settings_env, task_events):
    start_worker(env={"EMAILQ_TASK_EVENTS": task_events})
    inspect = _control_app(settings_env).control.inspect(timeout=2.0)
    producer.send_many([{"to": "a@b.io", "type": "SignIn", "payload": {"code": "1"}}] * 5)
    wait_for(lambda: len(endpoint.delivered_keys()) == 5, 20, "5 deliveries")

    endpoint.behave = lambda headers, body: Reply(200, delay=SLOW_SECONDS)
    slow = producer.send_many([{"to": "a@b.io", "type": "SignIn", "payload": {"code": CODE}}] * 3)

    def active() -> list[dict] | None:
        replies = inspect.active() or {}
        tasks = [task for tasks in replies.values() for task in tasks]
        return tasks if len(tasks) == 3 else None

    tasks = wait_for(active, SLOW_SECONDS, "inspect active to list the 3 emails being POSTed", interval=0.2)
    assert sorted(task["id"] for task in tasks) == sorted(slow)
    assert {task["name"] for task in tasks} == {TASK_NAME}
    assert CODE not in str(tasks), "a one-time code in inspect's output"

    wait_for(lambda: len(endpoint.delivered_keys()) == 8, 20, "the slow deliveries")
    (stats,) = (inspect.stats() or {}).values()
    assert stats["total"] == {TASK_NAME: 8}
