"""Celery's threads pool, safe to stop from a signal handler, and the only pool emailq runs.

Celery's cold shutdown (SIGQUIT, or Ctrl-C twice) stops the pool from inside its signal
handler, which Python runs in the main thread between two bytecodes — possibly while that
thread is handing an email to the pool (`ThreadPoolExecutor.submit`), which holds the
executor's shutdown lock, and for a new thread waits for it to start. The stop takes the
same lock: with the standard library's plain `Lock` the worker waited for itself forever
(seen in tests/test_crash_safety.py::test_a_cold_shutdown_loses_nothing). A re-entrant
lock lets the stop go through; emails it cancels before they start stay unsettled, and
the worker's exit gives them back to the queue (`in_flight.py`).

Only this pool: a task settles its email through the in-flight record the consumer keeps
in the worker process (`in_flight.py`), which a prefork child cannot reach, and no other
pool was ever tested. Celery itself quietly swaps an explicit `-P prefork` for the
configured pool (its default value is "prefork", so it cannot tell them apart), and the
banner then says only "(pool)": the worker says so in one line at start instead, and
refuses any pool that Celery would really run (`-P processes`, `threads`, `solo` …) with
one line, before it takes anything.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import click
from celery import signals
from celery.concurrency.thread import TaskPool
from click.core import ParameterSource

from emailq.worker import runtime


class Stopped(Exception):
    """The worker stopped taking work (its pool, or its consumer) before this email could
    start: the email goes back to its lane."""


class ThreadPool(TaskPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor._shutdown_lock = threading.RLock()  # private, the same since Python 3.8
        self.stopped = False
        runtime.reserve_threads(self.limit)  # a Redis connection for each thread at once

    def on_stop(self) -> None:
        self.stopped = True  # before the executor refuses work, so a refusal always finds it
        super().on_stop()

    def on_apply(self, *args: Any, **kwargs: Any) -> Any:
        # A cold shutdown stops the pool from its signal handler, between two emails of
        # one take: the executor then refuses the next with a RuntimeError, which Celery
        # would report as an unrecoverable error, traceback and all.
        try:
            return super().on_apply(*args, **kwargs)
        except RuntimeError:
            if self.stopped:
                raise Stopped() from None
            raise


@signals.celeryd_init.connect
def _only_this_pool(instance: Any, options: dict[str, Any], **_: Any) -> None:
    from emailq.worker.celery_glue.app import app

    if instance.app is not app:
        return
    pool = options.get("pool")
    if pool is None or (isinstance(pool, type) and issubclass(pool, ThreadPool)):
        context = click.get_current_context(silent=True)
        if pool is not None and context is not None and context.get_parameter_source("pool") not in (None, ParameterSource.DEFAULT):
            # Only an explicit "prefork" becomes the configured pool (Celery's WorkersPool).
            print(
                "emailq worker: -P prefork asked for; emailq runs its own threads pool instead "
                "(emailq.worker.celery_glue.pool:ThreadPool): leave -P out",
                file=sys.stderr,
                flush=True,
            )
        return
    name = f"{pool.__module__}:{pool.__qualname__}" if isinstance(pool, type) else str(pool)
    # SystemExit, not an exception: Celery's signal dispatch logs and swallows those.
    sys.exit(
        f"emailq worker: the pool {name} is not supported: emailq runs its own threads pool, whose "
        "threads settle each email through records kept in the worker process; leave -P out"
    )
