"""The worker's metrics endpoint and log format, wired in through Celery's signals."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import signals
from prometheus_client import start_http_server

from emailq.store.depth_metrics import watch_depths
from emailq.store.keys import Keys
from emailq.settings import get_settings
from emailq.worker import metrics, runtime
from emailq.worker.log_queue import route_through_queue

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the task (message) id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and k != "message"})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Each logs a line per email at INFO (request, received, succeeded); the worker logs its
# own one line per outcome instead, with the message id.
_PER_EMAIL_LOGGERS = ("httpx", "celery.app.trace", "celery.worker.strategy")


def configure_logging(logger: logging.Logger) -> None:
    for name in _PER_EMAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if get_settings().log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


@signals.after_setup_logger.connect
def _root_logger(logger: logging.Logger, **_: Any) -> None:
    configure_logging(logger)
    route_through_queue(logger)


@signals.after_setup_task_logger.connect
def _task_logger(logger: logging.Logger, **_: Any) -> None:
    configure_logging(logger)


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if not settings.metrics_port:
        return
    watch_depths(runtime.get().redis, Keys.of(settings), registry=metrics.REGISTRY)
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.REGISTRY)
    logging.getLogger("emailq.worker").info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
