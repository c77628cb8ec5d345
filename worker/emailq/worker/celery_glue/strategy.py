"""How a worker runs `emailq.deliver`: a lean path through Celery's threads pool.

Per message, Celery's default strategy builds a `Request` (revocation, ETA and rate-limit
checks, time limits, a result-backend context) and runs the task through its tracer
(signals, result storing, state bookkeeping). On a 0 ms endpoint that machinery costs
more CPU than the POST, and a worker is one process whose threads share one interpreter
lock. emailq's task needs none of it: no ETA (retries wait in the Redis schedule), no
revocation, no result, no per-task events by default, and the threads pool has no time
limits. So the message goes to the pool with a request that Celery's remote control and
shutdown still see (`inspect active`, `stats`' counts, a cold shutdown's cancel, which
for threads is a no-op: unsettled emails go back to the queue through `in_flight.py`),
and it is acked as the default path would; after a bug (an exception the task did not
expect) it is rejected instead, which gives an unsettled email back to its lane.

Anything else takes Celery's default path: per-task events (`EMAILQ_TASK_EVENTS=all`),
another pool, or a message this path does not expect (an ETA, an expiry, protocol 1).
Both paths show the masked arguments to remote control, never a one-time code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.concurrency.thread import TaskPool
from celery.worker import state
from celery.worker.request import Request
from celery.worker.strategy import default

from emailq.worker import runtime
from emailq.worker.places.in_flight import Taken

log = logging.getLogger("emailq.worker")

# The task request's field that holds the in-flight record of the message (`Taken`):
# the consumer finds it by the message's delivery tag when it hands the message over, so
# the task settles exactly that email, whatever the message's headers say.
TAKEN = "emailq_taken"


class MaskedRequest(Request):
    """Celery's request (the default path), whose `info` (what `inspect active` and
    Flower's worker pages show) gives the masked arguments: never a one-time code. It
    hands the task the in-flight record of its message (`TAKEN`), as the lean path does."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self._request_dict[TAKEN] = runtime.get().in_flight.get(message.delivery_tag)

    def info(self, safe: bool = False) -> dict[str, Any]:
        return super().info(safe=True)

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        # Celery's cold shutdown asks the pool to kill the job, and the threads pool raises
        # NotImplementedError from the signal handler into whatever the worker was doing.
        pass  # as LeanRequest.cancel


class LeanRequest:
    """What Celery's worker state, remote control and shutdown read of a request."""

    __slots__ = (
        *("id", "name", "hostname", "argsrepr", "root_id", "args", "delivery_info"),
        *("task", "acknowledged", "time_start", "eventer", "taken", "__weakref__"),
    )

    def __init__(
        self,
        task: Any,
        hostname: str,
        headers: dict[str, Any],
        args: list[Any],
        delivery_info: dict[str, Any],
        taken: Taken | None,
    ):
        self.task, self.name, self.hostname = task, task.name, hostname
        self.taken = taken
        self.id: str = headers["id"]
        self.argsrepr = headers.get("argsrepr")
        self.root_id = headers.get("root_id")
        self.args, self.delivery_info = args, delivery_info
        self.acknowledged = False
        self.time_start: float | None = None
        self.eventer: Any = None  # set by Celery's consumer on a reconnect; unused here

    def info(self, safe: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "args": self.argsrepr,
            "kwargs": "{}",
            "type": self.name,
            "hostname": self.hostname,
            "time_start": self.time_start,
            "acknowledged": self.acknowledged,
            "delivery_info": self.delivery_info,
            "worker_pid": None,
        }

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        pass  # a thread cannot be stopped; its email is settled or given back either way

    def terminate(self, pool: Any, signal: Any = None) -> None:
        pass


def lean(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """A Celery task strategy (`Task.Strategy`): the message handler for `task`."""
    celery_default = default(task, app, consumer, **options)
    if app.conf.worker_send_task_events or not isinstance(consumer.pool, TaskPool):
        return celery_default
    pool, hostname, connection_errors = consumer.pool, consumer.hostname, consumer.connection_errors

    def run(request: LeanRequest, ack: Any, reject: Any) -> None:
        request.time_start = time.monotonic()
        state.task_accepted(request)
        task.push_request(
            id=request.id,
            hostname=hostname,
            argsrepr=request.argsrepr,
            root_id=request.root_id,
            delivery_info=request.delivery_info,
            **{TAKEN: request.taken},
        )
        broke = False
        try:
            task.run(*request.args)
        except task.throws:
            pass  # dead-lettered and announced by the task itself
        except Exception:
            # A bug, not an outcome. Celery's own path would ack the message, and an ack
            # removes an unsettled email from Redis; a reject gives it back to its lane
            # (`QoS.reject`), and nothing if the task had already moved it.
            broke = True
            log.exception("%s[%s] raised unexpectedly; its email goes back on the queue unless already settled", task.name, request.id)
        finally:
            try:
                task.pop_request()
                request.acknowledged = True
                (reject if broke else ack)(log, connection_errors)
            except Exception:
                # Nobody reads the pool's future: said here, or never. The email stays
                # unsettled in this worker's records, for the visibility backstop.
                log.exception("%s[%s]: handing its outcome back to Celery failed", task.name, request.id)
            finally:
                state.task_ready(request)

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> Any:
        headers = message.headers
        decoded = message.decode()  # kombu keeps it: the default path would not decode again
        usual = isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list) and not decoded[1]
        if callbacks or not usual or headers.get("eta") or headers.get("expires") or "id" not in headers:
            return celery_default(message, body, ack, reject, callbacks)
        taken = runtime.get().in_flight.get(message.delivery_tag)
        request = LeanRequest(task, hostname, headers, decoded[0], message.delivery_info, taken)
        state.task_reserved(request)
        # Celery's pool calls `callback` with the result; without one it raised TypeError
        # into a future nobody reads, once per email.
        pool.apply_async(run, args=(request, ack, reject), callback=_ignore)
        return None

    return handler


def _ignore(result: Any) -> None:
    """The pool's callback: `run` has already handed the outcome back."""
