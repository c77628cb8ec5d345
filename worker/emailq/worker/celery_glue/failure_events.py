"""Dead-lettered emails announced to Flower as failed tasks, without Celery's full events.

Celery's task events cost about three Redis PUBLISHes and most of a millisecond of CPU
per email, every email. With `EMAILQ_TASK_EVENTS=failures` (the default) the worker sends
none for deliveries that succeed and, for each dead letter, the two that Flower needs to
list it as a failed task: `task-received` (name, masked arguments) then `task-failed`
(the reason). `EMAILQ_TASK_EVENTS=all` turns Celery's own events back on instead.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from emailq.task_message import TASK_NAME

log = logging.getLogger("emailq.worker")


class FailureEvents:
    def __init__(self, app: Celery):
        self._app = app
        self._lock = threading.Lock()  # a dispatcher's producer is not thread-safe
        self._dispatcher: Any = None

    def announce(self, request: Any, exception: str) -> None:
        try:
            with self._lock:
                if self._dispatcher is None:
                    self._dispatcher = self._app.events.Dispatcher(self._app.connection_for_write(), hostname=request.hostname, enabled=True)
                self._dispatcher.send(
                    "task-received",
                    uuid=request.id,
                    name=TASK_NAME,
                    args=getattr(request, "argsrepr", None) or "(masked)",
                    kwargs="{}",
                    root_id=request.root_id or request.id,
                    parent_id=None,
                    retries=0,
                    eta=None,
                    expires=None,
                )
                self._dispatcher.send("task-failed", uuid=request.id, exception=exception, traceback=None)
        except Exception:
            # The DLQ already holds the email; a lost dashboard event must not fail the task.
            log.warning("could not announce dead letter %s to Flower", request.id, exc_info=True)
