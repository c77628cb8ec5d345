"""What emailq.worker.celery_glue.strategy relies on inside Celery's worker. A Celery release that
changes any of it fails here, naming the piece, before a worker misbehaves."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery
from celery.concurrency import base, thread
from celery.app import trace
from celery.app.task import Context
from celery.worker import state, strategy
from celery.worker.consumer import consumer
from celery.worker.consumer import events as consumer_events
from celery.worker.request import Request
from kombu import Message

from emailq.worker.celery_glue.pool import ThreadPool
from emailq.worker.celery_glue.strategy import TAKEN, LeanRequest

FUNCTIONS = [
    (state, "task_reserved", ["request"]),
    (state, "task_accepted", ["request"]),
    (state, "task_ready", ["request", "successful"]),
    (strategy, "default", ["task", "app", "consumer"]),
    (base.BasePool, "apply_async", ["self", "target", "args", "kwargs"]),
    (Request, "info", ["self", "safe"]),
]


@pytest.mark.parametrize("owner, name, parameters", FUNCTIONS, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n, _ in FUNCTIONS])
def test_celery_still_has_what_the_strategy_calls(owner, name, parameters):
    function = getattr(owner, name, None)
    assert function is not None, f"celery {owner.__name__}.{name} is gone: emailq.worker.celery_glue.strategy must follow"
    names = list(inspect.signature(function).parameters)
    assert names[: len(parameters)] == parameters, (
        f"celery {owner.__name__}.{name} changed its signature: emailq.worker.celery_glue.strategy must follow"
    )


def test_celery_still_calls_a_strategy_with_message_body_ack_reject_callbacks():
    source = inspect.getsource(consumer.Consumer.create_task_handler)
    assert "strategy(\n" in source and "message, payload," in source and "reject_log_error_promise," in source and "callbacks," in source
    assert "(message.ack_log_error,)" in source  # the ack promise: ack(logger, errors)


def test_the_threads_pool_is_the_one_the_strategy_expects():
    assert issubclass(thread.TaskPool, base.BasePool)
    assert "executor.submit(" in inspect.getsource(thread.TaskPool.on_apply)


def test_a_lean_request_answers_what_celery_reads_of_requests():
    # Remote control (inspect active/reserved/query_task), the connection-loss handler and
    # a cold shutdown read these of every request in the worker's state.
    app = Celery("contract", set_as_current=False)

    @app.task(name="emailq.deliver", shared=False)
    def task() -> None:
        pass

    headers = {"id": "x", "task": "emailq.deliver", "argsrepr": "[]", "kwargsrepr": "{}"}
    message = Message(body=b"[[], {}, {}]", headers=headers, content_type="application/json", content_encoding="utf-8")
    fields = set(Request(message, app=app, task=task).info())
    lean = LeanRequest(task, "host", headers, [], {}, None)
    assert fields <= set(lean.info())
    for attribute in ("id", "name", "task", "acknowledged", "time_start", "eventer"):
        assert hasattr(lean, attribute), attribute
    # What Celery's consumer writes on the requests it holds when it reconnects.
    assert "request.eventer = dis" in inspect.getsource(consumer_events.Events.start)
    assert callable(lean.cancel) and callable(lean.terminate)


def test_celerys_path_hands_the_task_every_field_of_the_request_dict():
    # MaskedRequest adds the in-flight record to its request dict; Celery's tracer builds
    # the task's `request` from that dict, so the task finds the record there.
    assert "Context(request or {}" in inspect.getsource(trace.build_tracer)
    record = object()
    assert getattr(Context({"id": "x", TAKEN: record}), TAKEN) is record
    assert "self._request_dict = (message.headers.copy()" in inspect.getsource(Request.__init__)


def test_the_pool_can_be_stopped_from_inside_its_own_submit():
    # Celery's cold shutdown calls the pool's stop from a signal handler (`pool.py`).
    assert "self.executor.shutdown(" in inspect.getsource(thread.TaskPool.on_stop)
    for method in (ThreadPoolExecutor.submit, ThreadPoolExecutor.shutdown):
        assert "with self._shutdown_lock" in inspect.getsource(method), f"{method.__qualname__} no longer takes _shutdown_lock"
    pool = ThreadPool(limit=2)
    try:
        with pool.executor._shutdown_lock:  # as submit holds it
            pool.stop()  # a plain Lock would wait here forever
    finally:
        pool.executor.shutdown(wait=False)
