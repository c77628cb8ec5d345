"""Celery's threads pool, safe to stop from a signal handler.

Celery's cold shutdown (SIGQUIT, or Ctrl-C twice) stops the pool from inside its signal
handler, which Python runs in the main thread between two bytecodes — possibly while that
thread is handing an email to the pool (`ThreadPoolExecutor.submit`), which holds the
executor's shutdown lock, and for a new thread waits for it to start. The stop takes the
same lock: with the standard library's plain `Lock` the worker waited for itself forever
(seen in tests/test_crash_safety.py::test_a_cold_shutdown_loses_nothing). A re-entrant
lock lets the stop go through; emails it cancels before they start stay unsettled, and
the worker's exit gives them back to the queue (`in_flight.py`).
"""

from __future__ import annotations

import threading
from typing import Any

from celery.concurrency.thread import TaskPool


class ThreadPool(TaskPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor._shutdown_lock = threading.RLock()  # private, the same since Python 3.8
