"""Log records leave the pool's threads through a queue; one thread writes them.

The worker logs a line per email from whichever of its hundreds of threads delivered it.
Each write takes the handler's lock and formats and writes in that thread, so at a few
hundred emails a second the threads queue up on that lock. With the standard library's
`QueueHandler`, a thread only puts the record on a queue; a `QueueListener` thread formats
and writes, in order. The listener is stopped (and the queue drained) at exit, and a
forked child (Celery's prefork pool) gets the original handlers back.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
from logging.handlers import QueueHandler, QueueListener

_listener: QueueListener | None = None
_handlers: list[logging.Handler] = []


def route_through_queue(logger: logging.Logger) -> None:
    """Swap `logger`'s handlers for a queue in front of them (once per process)."""
    global _listener, _handlers
    if _listener is not None or not logger.handlers:
        return
    _handlers = list(logger.handlers)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = QueueListener(records, *_handlers, respect_handler_level=True)
    logger.handlers = [QueueHandler(records)]
    _listener.start()
    atexit.register(_stop)

    def _in_child() -> None:
        global _listener
        logger.handlers = list(_handlers)
        _listener = None

    os.register_at_fork(after_in_child=_in_child)


def _stop() -> None:
    if _listener is not None:
        _listener.stop()
