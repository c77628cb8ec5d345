"""The lean path (`strategy.lean`) hands each email to Celery's threads pool and its
outcome back to Celery; nothing it does ends up in a future nobody reads."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from celery import Celery
from kombu import Message

from emailq.worker import runtime
from emailq.worker.celery_glue import strategy
from emailq.worker.celery_glue.pool import ThreadPool


class RecordingPool(ThreadPool):
    """emailq's pool, keeping what each apply_async returned."""

    def __init__(self) -> None:
        super().__init__(limit=2)
        self.results: list[Any] = []

    def on_apply(self, *args: Any, **kwargs: Any) -> Any:
        result = super().on_apply(*args, **kwargs)
        self.results.append(result)
        return result


@pytest.fixture
def handler(monkeypatch):
    pool = RecordingPool()
    # The record the consumer hands over; no Redis is needed for it.
    monkeypatch.setattr(runtime, "_runtime", SimpleNamespace(in_flight=SimpleNamespace(get=lambda tag: None)))
    app = Celery("lean", set_as_current=False)
    app.conf.worker_send_task_events = False
    ran: list[Any] = []

    @app.task(name="emailq.deliver", shared=False)
    def task(envelope: Any) -> None:
        ran.append(envelope)

    consumer = mock.MagicMock(pool=pool, hostname="host", connection_errors=())
    yield strategy.lean(task, app, consumer), consumer.pool, ran
    consumer.pool.executor.shutdown(wait=True)


def _message() -> Message:
    headers = {"id": "m1", "task": "emailq.deliver", "argsrepr": "[]"}
    body = json.dumps([[{"id": "m1"}], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return Message(body=body.encode(), headers=headers, content_type="application/json", content_encoding="utf-8", delivery_tag="t1")


def test_each_email_runs_and_is_acked_with_nothing_left_in_the_pools_future(handler):
    handle, pool, ran = handler
    acks: list[Any] = []
    handle(_message(), None, lambda *args: acks.append(args), lambda *args: None, None)
    [result] = pool.results
    assert result.f.exception(timeout=5) is None  # no TypeError from a missing callback
    assert ran == [{"id": "m1"}] and len(acks) == 1


def test_a_failure_handing_the_outcome_back_is_logged_not_swallowed(handler, caplog):
    handle, pool, _ = handler

    def ack(*args: Any) -> None:
        raise RuntimeError("the ack broke")

    with caplog.at_level(logging.ERROR, logger="emailq.worker"):
        handle(_message(), None, ack, lambda *args: None, None)
        [result] = pool.results
        result.f.exception(timeout=5)
    assert any("handing its outcome back to Celery failed" in r.getMessage() and "the ack broke" in r.exc_text for r in caplog.records if r.exc_text)
