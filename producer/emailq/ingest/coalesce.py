"""Coalesced writes: the emails of requests that arrive together reach Redis in one round
trip.

Under load, the requests that one turn of the event loop reads all get to their enqueue
before the next turn; each adds its task message to the pending batch and waits,
and the next turn sends the batch with one `AsyncProducer.push` (one script,
`enqueue_many`: all or none, on both lanes).
A round trip costs the ingest and Redis far more CPU than an LPUSH of one more message
(on the benchmark's two cores, Redis, the ingest and the clients share the CPU), so the
ingest spends its CPU on requests, not on round trips. A lone request waits one turn of
the loop more than before, and goes as a batch of one (one EVAL, as `send`).

Each request answers only once its own batch is in Redis; when the write fails, every
request of that batch gets the QueueUnavailable that says whether it may have landed (a
batch lands whole or not at all, so each email's fate is its batch's).
"""

from __future__ import annotations

import asyncio

from emailq.enqueue_async import AsyncProducer
from emailq.errors import QueueUnavailable
from emailq.store.moves import NewEmail

# A batch no larger than this; more pending requests wait for the next one.
MAX_BATCH = 256

_Pending = list[tuple[NewEmail, asyncio.Future[None]]]


class CoalescedPush:
    """`await push(email)` returns once that email is on its lane; raises QueueUnavailable
    (as `AsyncProducer.push`) when its batch failed."""

    def __init__(self, producer: AsyncProducer, max_batch: int = MAX_BATCH):
        self._producer = producer
        self._max_batch = max_batch
        self._pending: _Pending = []
        self._writes: set[asyncio.Future[None]] = set()

    async def push(self, email: NewEmail) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((email, waiter))
        # A request cancelled here (a server shutting down) leaves its email in the batch:
        # as a cancelled `AsyncProducer.send`, it may have been enqueued.
        await waiter

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        size = self._max_batch
        for start in range(0, len(pending), size):
            write = asyncio.ensure_future(self._write(pending[start : start + size]))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _write(self, batch: _Pending) -> None:
        try:
            await self._producer.push([email for email, _ in batch], ids=[email.id for email, _ in batch])
        except QueueUnavailable as error:
            for email, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(QueueUnavailable(str(error), maybe_enqueued=error.maybe_enqueued, ids=[email.id]))
        except BaseException as error:  # cancelled (shutdown) or a bug: no request may hang on it
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error if isinstance(error, Exception) else QueueUnavailable(_CANCELLED, maybe_enqueued=True))
            raise
        else:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_closed(self) -> None:
        """Wait for the batches being written (at shutdown, before the producer closes)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


_CANCELLED = "the ingest stopped while writing to Redis: the email may have been enqueued"
