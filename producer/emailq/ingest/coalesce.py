"""Coalesced writes: the emails of requests that arrive together reach Redis in one round
trip.

Under load, the requests that one turn of the event loop reads all get to their enqueue
before the next turn; each adds its task message to its lane's pending batch and waits,
and the next turn sends each lane's batch with one `AsyncProducer.push` (one MULTI).
A round trip costs the ingest and Redis far more CPU than an LPUSH of one more message
(on the benchmark's two cores, Redis, the ingest and the clients share the CPU), so the
ingest spends its CPU on requests, not on round trips. A lone request waits one turn of
the loop more than before, and goes as a batch of one (one EVAL, as `send`).

Each request answers only once its own batch is in Redis; when the write fails, every
request of that batch gets the QueueUnavailable that says whether it may have landed:
a batch's emails are one LPUSH, which lands whole or not at all. One case is reported
wrong, as by `send_many`: a wake-up list (`<q>:wake`) that some other client made
another type fails the MULTI after the emails landed, and the batch is answered as
refused (a lone email's script ignores that failure).
"""

from __future__ import annotations

import asyncio

from emailq.enqueue_async import AsyncProducer
from emailq.errors import QueueUnavailable

# A batch no larger than this; more pending requests wait for the next one.
MAX_BATCH = 256

_Pending = list[tuple[str, str, asyncio.Future[None]]]  # (id, task message, waiter)


class CoalescedPush:
    """`await push(message_id, lane, message)` returns once that task message is on its
    lane; raises QueueUnavailable (as `AsyncProducer.push`) when its batch failed.

    A batch holds one lane's emails: a MULTI is not rolled back when one of its commands
    fails (a lane that holds another type), so a batch across lanes could land in part
    and be reported as refused whole."""

    def __init__(self, producer: AsyncProducer, max_batch: int = MAX_BATCH):
        self._producer = producer
        self._max_batch = max_batch
        self._pending: dict[str, _Pending] = {}
        self._writes: set[asyncio.Future[None]] = set()

    async def push(self, message_id: str, lane: str, message: str) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.setdefault(lane, []).append((message_id, message, waiter))
        # A request cancelled here (a server shutting down) leaves its email in the batch:
        # as a cancelled `AsyncProducer.send`, it may have been enqueued.
        await waiter

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        size = self._max_batch
        for lane, requests in pending.items():
            for start in range(0, len(requests), size):
                write = asyncio.ensure_future(self._write(lane, requests[start : start + size]))
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)

    async def _write(self, lane: str, batch: _Pending) -> None:
        try:
            await self._producer.push([(lane, message) for _, message, _ in batch], ids=[i for i, _, _ in batch])
        except QueueUnavailable as error:
            for message_id, _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(QueueUnavailable(str(error), maybe_enqueued=error.maybe_enqueued, ids=[message_id]))
        except BaseException as error:  # cancelled (shutdown) or a bug: no request may hang on it
            for _, _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error if isinstance(error, Exception) else QueueUnavailable(_CANCELLED, maybe_enqueued=True))
            raise
        else:
            for _, _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_closed(self) -> None:
        """Wait for the batches being written (at shutdown, before the producer closes)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


_CANCELLED = "the ingest stopped while writing to Redis: the email may have been enqueued"
